"""The metric schema: sample fields, their types and units, the Redis keys, samples <-> DataFrame.

This is the only module that knows field and key names. A sample is one flat JSON object in the
format of the course's collector; the collector builds it here, the runtime decodes it here, and the
dashboard and benchmarks turn many of them into a typed pandas DataFrame indexed by time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported where frames are built: the runtime and collector never need it
    import pandas as pd

TIMESTAMP = "timestamp"
# str(datetime.now()) drops ".000000"; we always write the microseconds so strptime("...%S.%f") works.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

CPU_PERCENT_PREFIX = "cpu_percent-"
CPU_FREQ = "cpu_freq_current"
N_PIDS = "n_pids"
MEMORY_PERCENT = "virtual_memory-percent"

CPU_STATS = ("ctx_switches", "interrupts", "soft_interrupts", "syscalls")
MEMORY_BYTES = (
    "total", "available", "used", "free", "active", "inactive", "buffers", "cached", "shared", "slab",
)
NET_COUNTERS = (
    "bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "errin", "errout", "dropin", "dropout",
)
# The course names the primary interface's counters after eth0 whatever the interface is called.
NET_PREFIX = "net_io_counters_eth0-"
# The assignment's text printed the network fields with a trailing "1"; some functions read those.
NET_ALIAS_SUFFIX = "1"

CPU_STATS_FIELDS = tuple(f"cpu_stats-{name}" for name in CPU_STATS)
MEMORY_FIELDS = tuple(f"virtual_memory-{name}" for name in MEMORY_BYTES)
NET_FIELDS = tuple(NET_PREFIX + name for name in NET_COUNTERS)
# The course's order: psutil's, with percent after available.
MEMORY_ORDER = (*MEMORY_FIELDS[:2], MEMORY_PERCENT, *MEMORY_FIELDS[2:])
INT_FIELDS = frozenset(CPU_STATS_FIELDS + MEMORY_FIELDS + NET_FIELDS + (N_PIDS,))
FLOAT_FIELDS = frozenset((CPU_FREQ, MEMORY_PERCENT))

UNITS = {CPU_FREQ: "MHz", MEMORY_PERCENT: "%", N_PIDS: "processes"}
UNITS.update({name: "bytes" for name in MEMORY_FIELDS})
UNITS.update({name: ("bytes" if "bytes" in name else "count") for name in NET_FIELDS})
UNITS.update({name: "count" for name in CPU_STATS_FIELDS})

# Stream entry field names.
SAMPLE_FIELD = "sample"
OUTPUT_FIELD = "output"
SAMPLE_ID_FIELD = "sample_id"


_json_loads = json.loads  # bound at import, before user code: a handler replacing json.loads cannot blind us


class SampleError(ValueError):
    """A payload that is not a valid sample; the message says what is wrong."""


def cpu_percent_field(index: int) -> str:
    return f"{CPU_PERCENT_PREFIX}{index}"


def cpu_index(field: str) -> int | None:
    """The CPU number of a `cpu_percent-<i>` field, None for any other field."""
    if field.startswith(CPU_PERCENT_PREFIX) and field[len(CPU_PERCENT_PREFIX):].isdigit():
        return int(field[len(CPU_PERCENT_PREFIX):])
    return None


def cpu_fields(sample: Mapping[str, Any]) -> list[str]:
    """The sample's `cpu_percent-<i>` fields in CPU order."""
    return sorted((f for f in sample if cpu_index(f) is not None), key=cpu_index)


def field_kind(field: str) -> type | None:
    """float or int for a known numeric field, None for fields the schema does not know."""
    if field in INT_FIELDS:
        return int
    if field in FLOAT_FIELDS or cpu_index(field) is not None:
        return float
    return None


@dataclass(frozen=True)
class Keys:
    """The Redis keys of one input key and one (optional) output key."""

    input: str = "metrics"
    output: str | None = None

    @property
    def input_stream(self) -> str:
        return f"{self.input}:stream"

    @property
    def hosts(self) -> str:
        """The registry of hosts publishing under this input key: host id -> time last seen."""
        return f"{self.input}:hosts"

    def for_host(self, host: str) -> Keys:
        """The keys of one host's samples and outputs (`metrics:<host>`, `<output>:<host>`)."""
        if not host or any(c in host for c in ": \t\n"):
            raise ValueError(f"host id {host!r} must be non-empty, without ':' or spaces (a node name)")
        return Keys(input=f"{self.input}:{host}", output=f"{self.output}:{host}" if self.output else None)

    def _derived(self, suffix: str) -> str:
        if not self.output:
            raise ValueError("no output key is configured")
        return f"{self.output}:{suffix}"

    @property
    def output_stream(self) -> str:
        return self._derived("stream")

    @property
    def state(self) -> str:
        return self._derived("state")

    @property
    def status(self) -> str:
        return self._derived("status")

    @property
    def errors(self) -> str:
        return self._derived("errors")

    @property
    def lease(self) -> str:
        return self._derived("lease")


# --- timestamps ---------------------------------------------------------------------------------

def format_timestamp(moment: datetime) -> str:
    return moment.strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: Any) -> datetime:
    if not isinstance(text, str):
        raise SampleError(f"'{TIMESTAMP}' must be a string like '2026-11-29 01:46:25.123456', got {text!r}")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise SampleError(
            f"'{TIMESTAMP}' {text!r} is not a time like '2026-11-29 01:46:25.123456'"
        ) from None


# --- one sample ---------------------------------------------------------------------------------

def build_sample(
    moment: datetime,
    cpu_percents: Iterable[float] | None = None,
    cpu_freq_mhz: float | None = None,
    cpu_stats: Mapping[str, int] | None = None,
    memory: Mapping[str, Any] | None = None,
    n_pids: int | None = None,
    net: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A sample in the course's field order from psutil readings (each as a name -> value mapping).

    A reading passed as None (its source failed) leaves out only its own fields.
    """
    sample: dict[str, Any] = {TIMESTAMP: format_timestamp(moment)}
    for index, percent in enumerate(cpu_percents or ()):
        sample[cpu_percent_field(index)] = float(percent)
    if cpu_freq_mhz is not None:
        sample[CPU_FREQ] = float(cpu_freq_mhz)
    for name, field in zip(CPU_STATS, CPU_STATS_FIELDS):
        if cpu_stats is not None and name in cpu_stats:
            sample[field] = int(cpu_stats[name])
    for field in MEMORY_ORDER if memory is not None else ():
        name = field.removeprefix("virtual_memory-")
        if name in memory:
            sample[field] = float(memory[name]) if field == MEMORY_PERCENT else int(memory[name])
    if n_pids is not None:
        sample[N_PIDS] = int(n_pids)
    for name, field in zip(NET_COUNTERS, NET_FIELDS):
        if net is not None and name in net:
            sample[field] = int(net[name])
    return sample


def encode_sample(sample: Mapping[str, Any]) -> str:
    return json.dumps(sample, allow_nan=False)


def decode_object(raw: str | bytes | bytearray) -> dict[str, Any]:
    """A payload decoded to a dict, or SampleError saying why it is not a JSON object."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SampleError(f"payload is not UTF-8 text ({error})") from None
    try:
        value = _json_loads(raw)
    except (json.JSONDecodeError, RecursionError) as error:
        raise SampleError(f"payload is not JSON ({error}); the collector writes one JSON object per sample") from None
    if not isinstance(value, dict):
        raise SampleError(f"payload is JSON but a {type(value).__name__}, not an object of metric fields")
    return value


def validate_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    """The sample if its timestamp parses and its known fields are finite numbers, else SampleError."""
    parse_timestamp(sample.get(TIMESTAMP))
    for field, value in sample.items():
        kind = field_kind(field)
        if kind is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SampleError(f"field {field!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise SampleError(f"field {field!r} must be finite, got {value!r}")
    return dict(sample)


def parse_sample(raw: str | bytes | bytearray) -> dict[str, Any]:
    """Decode and validate one sample (the `metrics` value or a stream entry's payload)."""
    return validate_sample(decode_object(raw))


class SampleInput(dict):
    """The sample exactly as published, for the handler: iteration, len, JSON and pandas see only its fields.

    Lookups (`[]`, `.get`, `in`) also answer under the other spelling of a network counter (the
    assignment text's `...1` names, or the course's names when the sample carries the `...1` ones),
    so handlers written either way get the real counters without those names ever being iterated.
    """

    __slots__ = ()

    def _other(self, key: Any) -> Any:
        """The field that `key` is the other spelling of, or None."""
        if not isinstance(key, str) or not key.startswith(NET_PREFIX):
            return None
        other = key.removesuffix(NET_ALIAS_SUFFIX) if key.endswith(NET_ALIAS_SUFFIX) else key + NET_ALIAS_SUFFIX
        return other if other in _NET_SPELLINGS and dict.__contains__(self, other) else None

    def __missing__(self, key: Any) -> Any:
        other = self._other(key)
        if other is None:
            raise KeyError(key)
        return dict.__getitem__(self, other)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or self._other(key) is not None

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default


_NET_SPELLINGS = frozenset(NET_FIELDS) | {field + NET_ALIAS_SUFFIX for field in NET_FIELDS}


def with_aliases(sample: dict[str, Any]) -> SampleInput:
    """The sample as the handler gets it: its own fields, plus lookups under the counters' other names."""
    return SampleInput(sample)


# --- stream entries -----------------------------------------------------------------------------

def sample_entry(sample_json: str) -> dict[str, str]:
    """The fields of the input-stream entry that carries one sample (the exact `metrics` value)."""
    return {SAMPLE_FIELD: sample_json}


def entry_payload(fields: Mapping[Any, Any], name: str = SAMPLE_FIELD) -> str | bytes:
    """The payload of a stream entry, or SampleError when the entry lacks it."""
    for key in (name, name.encode()):
        if key in fields:
            return fields[key]
    raise SampleError(f"stream entry has no {name!r} field (fields: {sorted(map(str, fields))})")


def stream_id_millis(entry_id: str | bytes) -> int:
    """The server time (ms since the epoch) that a stream entry id starts with."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


# --- many samples <-> DataFrame -----------------------------------------------------------------

def samples_to_frame(samples: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Samples as a DataFrame indexed by their time (`time`), known fields typed, in time order."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(samples))
    if frame.empty:
        return pd.DataFrame(index=pd.DatetimeIndex([], name="time"))
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop(TIMESTAMP), format="ISO8601"), name="time")
    for column in frame.columns:
        kind = field_kind(column)
        if kind is float:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        elif kind is int:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame[_known_order(frame.columns)].sort_index(kind="stable")


def _known_order(columns: Iterable[str]) -> list[str]:
    """Columns in the course's field order; unknown fields last, as they came."""
    columns = list(columns)
    cpus = sorted((c for c in columns if cpu_index(c) is not None), key=cpu_index)
    fixed = [CPU_FREQ, *CPU_STATS_FIELDS, *MEMORY_ORDER, N_PIDS, *NET_FIELDS]
    known = cpus + [c for c in fixed if c in columns]
    return known + [c for c in columns if c not in known]


def frame_to_samples(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The inverse of samples_to_frame: one course-format dict per row, missing values left out."""
    import pandas as pd

    samples = []
    for moment, row in zip(frame.index, frame.to_dict("records")):
        sample: dict[str, Any] = {TIMESTAMP: format_timestamp(pd.Timestamp(moment).to_pydatetime())}
        for field, value in row.items():
            if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
                continue
            kind = field_kind(field)
            sample[field] = kind(value) if kind is not None else value
        samples.append(sample)
    return samples


def entries_to_frame(entries: Iterable[tuple[Any, Mapping[Any, Any]]]) -> tuple[pd.DataFrame, int]:
    """Input-stream entries as a sample DataFrame (with an `entry_id` column), and how many were malformed."""
    samples, malformed = [], 0
    for entry_id, fields in entries:
        try:
            sample = parse_sample(entry_payload(fields))
        except SampleError:
            malformed += 1
            continue
        sample["entry_id"] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        samples.append(sample)
    return samples_to_frame(samples), malformed
