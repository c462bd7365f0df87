"""The metric schema: sample fields, their types and units, the Redis keys, samples <-> DataFrame.

This is the only module that knows field and key names. A sample is one flat JSON object in the
format of the course's collector; the collector builds it here, the runtime decodes it here, and the
dashboard and benchmarks turn many of them into a typed pandas DataFrame indexed by time.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
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
EXTRA_FIELD = "extra"  # metrics beyond the course's sample, beside it in the same input-stream entry
COUNT_FIELD = "count"  # how many samples a rollup entry aggregates
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


# --- host ids -----------------------------------------------------------------------------------

HOST_ID_MAX = 253
HOST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,%d}" % HOST_ID_MAX)
# Suffixes of keys the schema derives: a host with one of these names would land on another key.
RESERVED_HOST_IDS = frozenset(("stream", "hosts", "state", "status", "errors", "lease", "top", "rollup",
                               "alerts", "extra"))


def validate_host_id(host: Any) -> str:
    """The host id if it is node-name style and not a reserved suffix, else ValueError saying why."""
    if isinstance(host, (bytes, bytearray)):
        try:
            host = host.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"host id {bytes(host)[:60]!r} is not UTF-8 text") from None
    if not isinstance(host, str) or not HOST_ID_PATTERN.fullmatch(host):
        shown = host if not isinstance(host, str) or len(host) <= 60 else host[:60] + "…"
        raise ValueError(f"host id {shown!r} must be 1 to {HOST_ID_MAX} letters, digits, '-', '.' or '_' "
                         "(a node name)")
    if host.lower() in RESERVED_HOST_IDS:
        raise ValueError(f"host id {host!r} is reserved: keys derived from it would collide "
                         f"(reserved: {', '.join(sorted(RESERVED_HOST_IDS))})")
    return host


def valid_host_ids(registry: Iterable[Any]) -> tuple[list[str], int]:
    """The registry's valid host ids, sorted, and how many others it holds (skip and count those)."""
    valid, skipped = set(), 0
    for host in registry:
        try:
            valid.add(validate_host_id(host))
        except ValueError:
            skipped += 1
    return sorted(valid), skipped


# --- rollup tiers (`<input>:rollup:<tier>`: means of closed time buckets) ------------------------

ROLLUP_TIERS = {"10s": 10, "1m": 60}  # tier name -> bucket width in seconds


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

    @property
    def top(self) -> str:
        """The latest top processes (string, JSON)."""
        return f"{self.input}:top"

    def rollup(self, tier: str) -> str:
        """The stream of one rollup tier (ROLLUP_TIERS) of this input's samples."""
        if tier not in ROLLUP_TIERS:
            raise ValueError(f"rollup tier {tier!r} is not one of {', '.join(ROLLUP_TIERS)}")
        return f"{self.input}:rollup:{tier}"

    def for_host(self, host: str) -> Keys:
        """The keys of one host's samples and outputs (`metrics:<host>`, `<output>:<host>`).

        ValueError for an id that is not node-name style or is a reserved suffix (validate_host_id).
        """
        host = validate_host_id(host)
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

    @property
    def replicas(self) -> str:
        """The runtime replicas sharing this output key's hosts (sorted set: replica -> lease expiry, ms)."""
        return self._derived("lease") + ":replicas"  # under the reserved `lease`: no host's key can land here

    @property
    def alerts(self) -> AlertKeys:
        """Where the alert evaluator keeps its state, beside the input key (`alerts` is a reserved host id)."""
        base = f"{self.input}:alerts"
        return AlertKeys(states=f"{base}:state", transitions=f"{base}:stream", cursors=f"{base}:cursors",
                         deliveries=f"{base}:deliveries", status=f"{base}:status", lease=f"{base}:lease")


@dataclass(frozen=True)
class AlertKeys:
    """The alert evaluator's keys of one input key."""

    states: str  # hash: `<rule>@<host>` -> the alert's current state (JSON)
    transitions: str  # stream: every transition, once
    cursors: str  # hash: host -> where the evaluator has read its streams to (JSON)
    deliveries: str  # hash: digest of a webhook URL -> id of the last transition delivered to it
    status: str  # hash: the evaluator's health, rules and problems, for the page
    lease: str  # one active evaluator


# --- timestamps ---------------------------------------------------------------------------------

def format_timestamp(moment: datetime) -> str:
    return moment.strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: Any) -> datetime:
    """The time of a sample as written: naive (the collector's local time) or aware (`…Z`, `+00:00`)."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        raise SampleError(f"'{TIMESTAMP}' must be a string like '2026-11-29 01:46:25.123456', got {text!r}")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise SampleError(
            f"'{TIMESTAMP}' {text!r} is not a time like '2026-11-29 01:46:25.123456'"
        ) from None


def timestamp_instant(text: Any) -> datetime:
    """The sample's time as an aware UTC instant (a naive time is the local time), so readers compare instants."""
    moment = parse_timestamp(text)
    return (moment if moment.tzinfo else moment.astimezone()).astimezone(timezone.utc)


def local_naive(moment: datetime) -> datetime:
    """An aware time as naive local time, the frames' time base; a naive one unchanged."""
    return moment.astimezone().replace(tzinfo=None) if moment.tzinfo else moment


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
    except ValueError as error:  # an integer longer than Python's int_max_str_digits
        raise SampleError(f"payload holds a number Python cannot read ({error}); "
                          "the collector writes numbers of a few digits") from None
    if not isinstance(value, dict):
        raise SampleError(f"payload is JSON but a {type(value).__name__}, not an object of metric fields")
    return value


def validate_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    """The sample if its timestamp parses and its known fields are finite numbers, else SampleError."""
    try:
        local_naive(parse_timestamp(sample.get(TIMESTAMP)))
    except OverflowError:  # year 1 at +01:00, year 9999 at -05:00: no local time holds it
        raise SampleError(f"'{TIMESTAMP}' {str(sample.get(TIMESTAMP))[:60]!r} is out of the range of local times") from None
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


# --- extended metrics (the `extra` field of an input-stream entry, never inside the sample) ------
# Flat names, `<source>-<name>` or `<source>-<device>-<name>`; the device (a disk, a mount point, a
# sensor label) may itself contain '-' or '/', so a name is split at its first and last '-'.

LOAD_AVG = tuple(f"load_avg-{minutes}" for minutes in (1, 5, 15))  # runnable processes, float
SWAP_BYTES = ("total", "used", "free")
SWAP_FIELDS = tuple(f"swap_memory-{name}" for name in SWAP_BYTES)
SWAP_PERCENT = "swap_memory-percent"
CPU_TIMES = ("user", "system", "iowait", "steal", "idle")
CPU_TIMES_FIELDS = tuple(f"cpu_times_percent-{name}" for name in CPU_TIMES)
DISK_IO_PREFIX = "disk_io-"
DISK_IO_COUNTERS = ("read_bytes", "write_bytes", "read_count", "write_count")  # cumulative
DISK_USAGE_PREFIX = "disk_usage-"
DISK_USAGE_BYTES = ("total", "used", "free")
TEMPERATURE_PREFIX = "sensors_temperatures-"

# Extras of a fixed name: their type and unit.
EXTRA_FIXED = {
    **{name: (float, "processes") for name in LOAD_AVG},
    **{name: (int, "bytes") for name in SWAP_FIELDS},
    SWAP_PERCENT: (float, "%"),
    **{name: (float, "%") for name in CPU_TIMES_FIELDS},
}
# Extras per device: prefix -> {last part: (type, unit)}.
EXTRA_PER_DEVICE = {
    DISK_IO_PREFIX: {name: (int, "bytes" if name.endswith("bytes") else "operations") for name in DISK_IO_COUNTERS},
    DISK_USAGE_PREFIX: {**{name: (int, "bytes") for name in DISK_USAGE_BYTES}, "percent": (float, "%")},
}


def disk_io_field(disk: str, counter: str) -> str:
    return f"{DISK_IO_PREFIX}{disk}-{counter}"


def disk_usage_field(mount: str, name: str) -> str:
    return f"{DISK_USAGE_PREFIX}{mount}-{name}"


def temperature_field(label: str) -> str:
    return f"{TEMPERATURE_PREFIX}{label}"


def extra_spec(name: str) -> tuple[type, str] | None:
    """(type, unit) of an extended-metric name, None for a name the schema does not know."""
    if name in EXTRA_FIXED:
        return EXTRA_FIXED[name]
    if name.startswith(TEMPERATURE_PREFIX) and len(name) > len(TEMPERATURE_PREFIX):
        return float, "°C"
    for prefix, parts in EXTRA_PER_DEVICE.items():
        device, _, last = name.removeprefix(prefix).rpartition("-")
        if name.startswith(prefix) and device and last in parts:
            return parts[last]
    return None


def unit_of(name: str) -> str | None:
    """The unit of any known field: the course's (UNITS, `%` for CPUs) or an extended metric's."""
    if name in UNITS:
        return UNITS[name]
    if cpu_index(name) is not None:
        return "%"
    spec = extra_spec(name)
    return spec[1] if spec else None


def extra_device(name: str) -> str | None:
    """The disk, mount point or sensor label an extended-metric name is about, None for host-wide ones."""
    if name.startswith(TEMPERATURE_PREFIX):
        return name[len(TEMPERATURE_PREFIX):]
    for prefix in EXTRA_PER_DEVICE:
        if name.startswith(prefix):
            return name[len(prefix):].rpartition("-")[0] or None
    return None


def build_extra(
    load_avg: Iterable[float] | None = None,
    swap: Mapping[str, Any] | None = None,
    cpu_times: Mapping[str, float] | None = None,
    disk_io: Mapping[str, Mapping[str, int]] | None = None,
    disk_usage: Mapping[str, Mapping[str, Any]] | None = None,
    temperatures: Mapping[str, float] | None = None,
) -> dict[str, float | int]:
    """The extended metrics as flat names from psutil readings; a reading passed as None is left out."""
    extra: dict[str, float | int] = dict(zip(LOAD_AVG, map(float, load_avg or ())))
    for name in SWAP_BYTES if swap is not None else ():
        if name in swap:
            extra[f"swap_memory-{name}"] = int(swap[name])
    if swap is not None and "percent" in swap:
        extra[SWAP_PERCENT] = float(swap["percent"])
    for name, field in zip(CPU_TIMES, CPU_TIMES_FIELDS):
        if cpu_times is not None and name in cpu_times:
            extra[field] = float(cpu_times[name])
    for disk, counters in (disk_io or {}).items():
        extra.update({disk_io_field(disk, c): int(counters[c]) for c in DISK_IO_COUNTERS if c in counters})
    for mount, usage in (disk_usage or {}).items():
        extra.update({disk_usage_field(mount, n): int(usage[n]) for n in DISK_USAGE_BYTES if n in usage})
        if "percent" in usage:
            extra[disk_usage_field(mount, "percent")] = float(usage["percent"])
    extra.update({temperature_field(label): float(value) for label, value in (temperatures or {}).items()})
    return {name: value for name, value in extra.items() if math.isfinite(value)}  # a sensor may read NaN


def parse_extra(raw: str | bytes | bytearray) -> dict[str, float | int]:
    """The extras of an entry: known names as finite numbers of their type; SampleError if it is no object.

    An unknown name or a value that is not a finite number drops only that value.
    """
    extra = {}
    for name, value in decode_object(raw).items():
        spec = extra_spec(name)
        if spec is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            extra[name] = spec[0](value)
    return extra


# --- top processes (`<input>:top`, refreshed every TOP_SECONDS) ---------------------------------

TOP_COUNT = 10
TOP_SECONDS = 10.0
TOP_BY_CPU = "by_cpu"
TOP_BY_MEMORY = "by_memory"
TOP_PROCESS_FIELDS = ("pid", "name", "cpu_percent", "memory_percent", "rss")
# cpu_percent is of one CPU (a process on two busy cores shows 200), as top and psutil show it.
TOP_UNITS = {"cpu_percent": "% of one CPU", "memory_percent": "%", "rss": "bytes"}


def build_top(moment: datetime, processes: Iterable[Mapping[str, Any]], count: int = TOP_COUNT) -> dict[str, Any]:
    """The top `count` processes by CPU and by memory (RSS) from per-process readings."""
    rows = [{name: process.get(name) for name in TOP_PROCESS_FIELDS} for process in processes]
    by = lambda field: sorted(rows, key=lambda row: row[field] or 0, reverse=True)[:count]  # noqa: E731
    return {TIMESTAMP: format_timestamp(moment), TOP_BY_CPU: by("cpu_percent"), TOP_BY_MEMORY: by("rss")}


def parse_top(raw: str | bytes | bytearray) -> dict[str, Any]:
    """The top-processes value: a JSON object with both lists of process objects, else SampleError."""
    value = decode_object(raw)
    for name in (TOP_BY_CPU, TOP_BY_MEMORY):
        rows = value.get(name)
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise SampleError(f"top processes: {name!r} must be a list of process objects")
    return value


def top_to_frame(top: Mapping[str, Any], by: str = TOP_BY_CPU) -> pd.DataFrame:
    """One ranking of the top-processes value as a frame with the columns TOP_PROCESS_FIELDS."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(top.get(by) or []), columns=list(TOP_PROCESS_FIELDS))
    for column in ("cpu_percent", "memory_percent"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in ("pid", "rss"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


# --- stream entries -----------------------------------------------------------------------------

def sample_entry(sample_json: str, extra_json: str | None = None) -> dict[str, str]:
    """The fields of the input-stream entry that carries one sample (the exact `metrics` value) and its extras."""
    return {SAMPLE_FIELD: sample_json} if extra_json is None else {SAMPLE_FIELD: sample_json, EXTRA_FIELD: extra_json}


def encode_extra(extra: Mapping[str, float | int]) -> str:
    return json.dumps(extra, allow_nan=False)


def rollup_entry(sample: Mapping[str, Any], extra: Mapping[str, Any], count: int) -> dict[str, str]:
    """The fields of one rollup-tier entry: the bucket's mean sample (timestamp = bucket start), extras, count."""
    return {SAMPLE_FIELD: encode_sample(sample), EXTRA_FIELD: encode_extra(extra), COUNT_FIELD: str(count)}


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

def column_kind(column: str) -> type | None:
    """float or int for a known numeric column of a frame (course fields, extras, `count`), else None."""
    kind = field_kind(column)
    if kind is None and column == COUNT_FIELD:
        return int
    if kind is None and (spec := extra_spec(column)) is not None:
        return spec[0]
    return kind


def samples_to_frame(samples: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Samples as a DataFrame indexed by their time (`time`, naive local time), known fields typed, in time order."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(samples))
    if frame.empty:
        return pd.DataFrame(index=pd.DatetimeIndex([], name="time"))
    frame.index = _time_index(frame.pop(TIMESTAMP).tolist())
    return _typed(frame)[_known_order(frame.columns)].sort_index(kind="stable")


def _time_index(values: list[Any]) -> pd.DatetimeIndex:
    """Timestamps as naive local times; aware ones (`…Z`, `+09:00`) are converted, so instants line up."""
    import pandas as pd

    try:
        index = pd.DatetimeIndex(pd.to_datetime(values, format="ISO8601"), name="time")
    except (ValueError, TypeError, OverflowError):  # offsets mixed with naive times, or differing offsets
        index = None
    if index is None or index.tz is not None:
        index = pd.DatetimeIndex([local_naive(parse_timestamp(value)) for value in values], name="time")
    return index


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Known numeric columns as float64 or Int64 (rounded: a rollup's mean of a counter is not whole)."""
    import pandas as pd

    for column in frame.columns:
        kind = column_kind(column)
        if kind is float:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        elif kind is int:
            frame[column] = _whole(pd.to_numeric(frame[column], errors="coerce"))
    return frame


def _whole(values: pd.Series) -> pd.Series:
    """Int64 where the values fit 64 bits; float64 where they do not (a huge counter), never an error."""
    try:
        with warnings.catch_warnings():  # pandas warns before it refuses the cast we fall back from
            warnings.simplefilter("ignore", RuntimeWarning)
            return values.round().astype("Int64")
    except (TypeError, ValueError, OverflowError):
        return values.astype("float64")


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


def entry_row(entry_id: Any, fields: Mapping[Any, Any]) -> tuple[dict[str, Any] | None, bool]:
    """One stream entry as a flat row (sample, extras, `count`, `entry_id`) and whether any of it was malformed.

    A bad sample drops the entry (None); bad extras drop only the extras. Never raises.
    """
    try:
        row = parse_sample(entry_payload(fields))
    except SampleError:
        return None, True
    malformed = False
    if any(key in fields for key in (EXTRA_FIELD, EXTRA_FIELD.encode())):
        try:
            row.update(parse_extra(entry_payload(fields, EXTRA_FIELD)))
        except SampleError:
            malformed = True
    if any(key in fields for key in (COUNT_FIELD, COUNT_FIELD.encode())):
        count = entry_payload(fields, COUNT_FIELD)
        count = count.decode("ascii", "replace") if isinstance(count, bytes) else str(count)
        row[COUNT_FIELD] = int(count) if count.isdigit() else None
    row["entry_id"] = entry_id.decode("ascii", "replace") if isinstance(entry_id, bytes) else entry_id
    return row, malformed


def entries_to_frame(entries: Iterable[tuple[Any, Mapping[Any, Any]]]) -> tuple[pd.DataFrame, int]:
    """Stream entries as a sample DataFrame (extras as further columns, `entry_id`), and how many were malformed."""
    rows, malformed = [], 0
    for entry_id, fields in entries:
        row, bad = entry_row(entry_id, fields)
        malformed += bad
        if row is not None:
            rows.append(row)
    return samples_to_frame(rows), malformed


def tier_to_frame(entries: Iterable[tuple[Any, Mapping[Any, Any]]]) -> tuple[pd.DataFrame, int]:
    """A rollup tier's entries as a frame indexed by bucket start, with `count`; and how many were malformed.

    A bucket written twice (the collector stopped within it and started again) becomes one row, its
    means weighted by the counts.
    """
    frame, malformed = entries_to_frame(entries)
    if frame.empty or not frame.index.has_duplicates or COUNT_FIELD not in frame:
        return frame, malformed
    weights = frame[COUNT_FIELD].astype("float64").fillna(1.0)
    values = frame.drop(columns=[COUNT_FIELD, "entry_id"]).astype("float64")
    totals = values.mul(weights, axis=0).groupby(level=0).sum(min_count=1)
    merged = totals / values.notna().mul(weights, axis=0).groupby(level=0).sum()
    merged[COUNT_FIELD] = weights.groupby(level=0).sum()
    merged["entry_id"] = frame["entry_id"].groupby(level=0).last()
    return _typed(merged)[list(frame.columns)], malformed
