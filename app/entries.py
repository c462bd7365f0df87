"""Stream entries to frames, defensively: one bad entry is skipped and counted, never fatal.

Samples may carry time-zone-aware timestamps (turned into the naive local times the course uses),
integers beyond what a column can hold, bytes that were not UTF-8 (read as lone surrogates), and
beside the course's `sample` an `extra` object of flat metric names (load, swap, disks, ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from runtime import schema
from runtime.schema import local_naive

EXTRA_FIELD, COUNT_FIELD = schema.EXTRA_FIELD, schema.COUNT_FIELD
ENTRY_MS = "_entry_ms"  # bookkeeping column: the stream entry's server time (ms)
INT64_MAX = 2**63 - 1


class EntryError(ValueError):
    """One entry the page cannot use; the message says why."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _json_object(raw: Any, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_text(raw))
    except (ValueError, RecursionError) as error:  # ValueError covers Python's integer digit limit
        raise EntryError(f"{what} is not JSON ({str(error)[:120]})") from None
    if not isinstance(value, dict):
        raise EntryError(f"{what} is JSON but a {type(value).__name__}, not an object")
    return value


def sample_time(text: Any) -> datetime:
    """A sample's timestamp as naive local time; aware times (`Z`, `+00:00`) are converted."""
    try:
        return local_naive(schema.parse_timestamp(text))
    except schema.SampleError:
        raise EntryError(f"timestamp {str(text)[:60]!r} is not a time like '2026-11-29 01:46:25.123456'") from None
    except OverflowError:  # year 1 at +01:00, year 9999 at -05:00: no local time holds it
        raise EntryError(f"timestamp {str(text)[:60]!r} is out of the range of local times") from None


def _numbers(values: Mapping[str, Any]) -> dict[str, float | int]:
    """The finite numbers of a flat object that fit a 64-bit column; everything else is dropped."""
    kept: dict[str, float | int] = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, int) and abs(value) > INT64_MAX:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        kept[str(name)] = value
    return kept


def sample_row(fields: Mapping[Any, Any]) -> dict[str, Any]:
    """One input-stream (or rollup-tier) entry as a row: the course's fields, extras, bucket count."""
    sample = _json_object(schema.entry_payload(fields, schema.SAMPLE_FIELD), "sample")
    moment = sample_time(sample.get(schema.TIMESTAMP))
    for field, value in sample.items():
        kind = schema.field_kind(field)
        if kind is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EntryError(f"field {field!r} must be a finite number, got {str(value)[:40]!r}")
        if isinstance(value, int) and abs(value) > INT64_MAX:
            raise EntryError(f"field {field!r} holds an integer too large for a 64-bit counter")
    row: dict[str, Any] = {k: v for k, v in sample.items() if schema.field_kind(k) is not None}
    extra = _field(fields, EXTRA_FIELD)
    if extra is not None:
        try:
            row.update({k: v for k, v in _numbers(schema.parse_extra(_text(extra))).items() if k not in row})
        except (schema.SampleError, ValueError):
            pass  # the course's fields still count; only the extras of this entry are lost
    count = _field(fields, COUNT_FIELD)
    if count is not None and _text(count).isdigit():
        row[COUNT_FIELD] = int(_text(count))
    row[schema.TIMESTAMP] = moment
    return row


def _field(fields: Mapping[Any, Any], name: str) -> Any:
    for key in (name, name.encode()):
        if key in fields:
            return fields[key]
    return None


def output_row(fields: Mapping[Any, Any], flatten) -> dict[str, Any]:
    """One output-stream entry: the numeric leaves of the output at its sample's time."""
    output = json.loads(_text(schema.entry_payload(fields, schema.OUTPUT_FIELD)))
    row = dict(flatten(output))
    stamp = _field(fields, schema.TIMESTAMP)
    row[schema.TIMESTAMP] = sample_time(_text(stamp)) if stamp is not None else None
    return row


def to_frame(entries: Iterable[tuple[Any, Mapping[Any, Any]]], parse) -> tuple[pd.DataFrame, int, str | None]:
    """Entries parsed by `parse` into a frame indexed by `time` (with ENTRY_MS); skipped count, last reason."""
    rows, skipped, reason = [], 0, None
    for entry_id, fields in entries:
        millis = schema.stream_id_millis(_text(entry_id))
        try:
            row = parse(fields)
        except (schema.SampleError, EntryError, ValueError, RecursionError, TypeError) as error:
            skipped, reason = skipped + 1, str(error)[:200]
            continue
        if row.get(schema.TIMESTAMP) is None:
            row[schema.TIMESTAMP] = datetime.fromtimestamp(millis / 1000)
        row[ENTRY_MS] = millis
        rows.append(row)
    if not rows:
        return pd.DataFrame(index=pd.DatetimeIndex([], name="time")), skipped, reason
    frame = pd.DataFrame.from_records(rows)
    frame.index = pd.DatetimeIndex(frame.pop(schema.TIMESTAMP), name="time")
    numeric = frame.drop(columns=[ENTRY_MS]).apply(pd.to_numeric, errors="coerce").astype("float64")
    numeric[ENTRY_MS] = frame[ENTRY_MS].astype("int64")
    return numeric, skipped, reason
