"""The contract between the runtime and its readers (dashboard, alerts, benchmarks): the status hash.

The runtime writes `<output>:status` with these field names and encodings; readers build a `Status`
with `Status.from_hash()`, which never raises: a field that is missing, of the wrong type or not
UTF-8 reads as unknown (None), and the reader says so instead of failing.

Times are written as ISO 8601 instants with their UTC offset, so a runtime, a collector and a
dashboard in different time zones agree; a naive time (an older runtime) is read as local time.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# --- timings both sides agree on ----------------------------------------------------------------
# The runtime rewrites `heartbeat` at least this often while it runs. Each commit does, so this is also the
# lease keeper's period when the lease allows: longer than the collector's default interval (5 s), so
# that while samples come at that pace the keeper has nothing to do.
HEARTBEAT_SECONDS = 6.0
STALE_AFTER_SECONDS = 15.0  # a heartbeat older than this: the runtime is not running (or stuck)


class State(str, enum.Enum):
    """The runtime's `state` field."""

    RUNNING = "running"
    STOPPED = "stopped"
    FUNCTION_ERROR = "function_error"  # no version of the function has loaded yet
    STALLED = "stalled"  # samples wait but the loop makes no progress; `problem` says why
    STANDBY = "standby"  # another replica holds the lease


class Mode(str, enum.Enum):
    STREAM = "stream"  # XREAD on `<input>:stream`
    POLL = "poll"  # GET of the plain key every INTERVAL (the course's collector)


# --- field names of the status hash --------------------------------------------------------------
STATE = "state"
MODE = "mode"
PID = "pid"
STARTED = "started"
HEARTBEAT = "heartbeat"
PROBLEM = "problem"  # what keeps the runtime from processing, empty when nothing does
LAST_SAMPLE_ID = "last_sample_id"
LAST_SAMPLE_TIMESTAMP = "last_sample_timestamp"
LAST_EXECUTION = "last_execution"
LAST_DURATION_MS = "last_duration_ms"
LAG_SECONDS = "lag_seconds"  # sample time to output stored, of the oldest sample of the last commit
FUNCTION_VERSION = "function_version"
FUNCTION_ERROR = "function_error"
ENV_DURABLE = "env_durable"  # "1" or "0"
ENV_ERROR = "env_error"
INVOCATIONS = "invocations"  # counter
ERRORS = "errors"  # counter
ERRORS_PREFIX = "errors_"  # + a faults.Fault value: counter per fault
LAST_ERROR = "last_error"  # the latest error record as JSON (see ERROR_FIELDS)
LAST_GAP = "last_gap"  # samples trimmed before the runtime read them

# --- the error record (errors stream entry, and `last_error` as JSON) ---------------------------
ERROR_FIELDS = ("fault", "message", "sample_id", "sample_timestamp", "time", "traceback", "output")
ERROR_MESSAGE_MAX = 4 * 1024  # characters of an error record's message
ERROR_TRACEBACK_MAX = 16 * 1024  # characters of its traceback
ERROR_OUTPUT_MAX = 4 * 1024  # characters of the handler's own stdout/stderr kept with a failure

# --- the function's outputs the dashboard draws specially ----------------------------------------
# A convention, not a requirement: an output key `avg-util-cpu<i>-60sec` (as the example function
# writes) is drawn on the CPU chart as core i's moving average; every other numeric key on its own.
CPU_AVERAGE_OUTPUT = "avg-util-cpu{index}-60sec"
CPU_AVERAGE_PREFIX, CPU_AVERAGE_SUFFIX = CPU_AVERAGE_OUTPUT.split("{index}")


def cpu_average_index(output_key: str) -> int | None:
    """The CPU number of an output named like CPU_AVERAGE_OUTPUT, None for any other key."""
    middle = output_key.removeprefix(CPU_AVERAGE_PREFIX).removesuffix(CPU_AVERAGE_SUFFIX)
    if len(middle) + len(CPU_AVERAGE_PREFIX) + len(CPU_AVERAGE_SUFFIX) != len(output_key) or not middle.isdigit():
        return None
    return int(middle)


# --- times -------------------------------------------------------------------------------------

def now_text() -> str:
    """This instant as the status writes times: ISO 8601 with the UTC offset."""
    return datetime.now(timezone.utc).isoformat(sep=" ")


def format_instant(moment: datetime) -> str:
    """A datetime as the status writes it; a naive one is taken as local time."""
    return moment.astimezone(timezone.utc).isoformat(sep=" ")


def parse_instant(text: Any) -> datetime | None:
    """An aware datetime from an ISO time (naive means local time), or None when it is not one."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.astimezone()


def seconds_since(moment: datetime | None, now: datetime | None = None) -> float | None:
    if moment is None:
        return None
    return ((now or datetime.now(timezone.utc)) - moment).total_seconds()


# --- reading -----------------------------------------------------------------------------------

def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # a lone surrogate: bytes that were not UTF-8
        except UnicodeEncodeError:
            return None
        return value
    return None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> int:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else 0


@dataclass(frozen=True)
class Status:
    """The runtime's status as a reader sees it; every field optional, nothing raises."""

    state: str | None = None
    mode: str | None = None
    pid: str | None = None
    started: datetime | None = None
    heartbeat: datetime | None = None
    problem: str | None = None
    last_sample_id: str | None = None
    last_sample_timestamp: str | None = None
    last_execution: datetime | None = None
    last_duration_ms: float | None = None
    lag_seconds: float | None = None
    function_version: str | None = None
    function_error: str | None = None
    env_durable: bool | None = None
    env_error: str | None = None
    invocations: int = 0
    errors: int = 0
    errors_by_fault: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, str] | None = None
    last_gap: str | None = None
    unreadable: tuple[str, ...] = ()  # fields present but not readable (wrong type, not UTF-8)

    @property
    def present(self) -> bool:
        """Whether any runtime has written a status at all."""
        return self.state is not None or self.heartbeat is not None

    def stale(self, now: datetime | None = None) -> bool:
        """No heartbeat within STALE_AFTER_SECONDS: the runtime is not running, or stuck."""
        age = seconds_since(self.heartbeat, now)
        return age is None or age > STALE_AFTER_SECONDS

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any] | None) -> Status:
        """The status from HGETALL's reply (str or bytes keys and values); never raises."""
        fields: dict[str, str] = {}
        unreadable: list[str] = []
        for key, value in (raw or {}).items() if isinstance(raw, Mapping) else ():
            name, text = _text(key), _text(value)
            if name is None:
                continue
            if text is None:
                unreadable.append(name)
                continue
            fields[name] = text

        def instant(name: str) -> datetime | None:
            moment = parse_instant(fields.get(name))
            if moment is None and fields.get(name):
                unreadable.append(name)
            return moment

        durable = fields.get(ENV_DURABLE)
        return cls(
            state=fields.get(STATE) or None,
            mode=fields.get(MODE) or None,
            pid=fields.get(PID) or None,
            started=instant(STARTED),
            heartbeat=instant(HEARTBEAT),
            problem=fields.get(PROBLEM) or None,
            last_sample_id=fields.get(LAST_SAMPLE_ID) or None,
            last_sample_timestamp=fields.get(LAST_SAMPLE_TIMESTAMP) or None,
            last_execution=instant(LAST_EXECUTION),
            last_duration_ms=_number(fields.get(LAST_DURATION_MS)),
            lag_seconds=_number(fields.get(LAG_SECONDS)),
            function_version=fields.get(FUNCTION_VERSION) or None,
            function_error=fields.get(FUNCTION_ERROR) or None,
            env_durable=None if durable is None else durable == "1",
            env_error=fields.get(ENV_ERROR) or None,
            invocations=_count(fields.get(INVOCATIONS)),
            errors=_count(fields.get(ERRORS)),
            errors_by_fault={name.removeprefix(ERRORS_PREFIX): _count(value) for name, value in fields.items()
                             if name.startswith(ERRORS_PREFIX)},
            last_error=error_from_json(fields.get(LAST_ERROR)),
            last_gap=fields.get(LAST_GAP) or None,
            unreadable=tuple(unreadable),
        )


def error_from_fields(raw: Mapping[Any, Any] | None) -> dict[str, str] | None:
    """An error record from an errors-stream entry (str or bytes), only the known fields, as text."""
    if not isinstance(raw, Mapping):
        return None
    record = {}
    for key, value in raw.items():
        name = _text(key)
        if name in ERROR_FIELDS:
            text = _text(value)
            record[name] = text if text is not None else "(not UTF-8 text)"
    return record or None


def error_from_json(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return error_from_fields(value)
