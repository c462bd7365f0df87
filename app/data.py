"""The dashboard's data: read from Redis incrementally, kept in memory once for every viewer.

Samples come from the raw stream for short windows and from the collector's rollup tiers (10 s,
1 min means) for long ones, falling back to raw when no tier exists (the course's collector).
Everything is read defensively: a key of the wrong type, a bad entry or bytes that are not UTF-8
cost only that key or entry, and the snapshot says what it skipped.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
import redis

from app import entries
from app.history import HISTORY_SECONDS, StreamHistory
from app.timeline import Window
from runtime import schema, status
from runtime.schema import local_naive
from runtime import config
from runtime.config import RedisSettings, connect

log = logging.getLogger(__name__)

WINDOWS = {"1 min": 60, "5 min": 300, "15 min": 900, "1 h": 3600, "6 h": 6 * 3600, "24 h": 24 * 3600}
EMBEDDED_OUTPUT_KEY = "metrics-output"
# Rollup tiers (schema.ROLLUP_TIERS), coarsest last: (tier, longest window it serves).
TIERS = (("10s", 6 * 3600), ("1m", HISTORY_SECONDS))
RAW_UP_TO_SECONDS = 900  # windows up to 15 min draw every raw sample
ERRORS_SHOWN = 200  # error records read for the outputs chart's marks
EVENTS_KEPT = 200


@dataclass(frozen=True)
class DashboardSettings:
    """Where to read: a configured Redis, or (none configured) the embedded stack this app starts."""

    redis: RedisSettings | None
    keys: schema.Keys
    refresh_seconds: float = 2.0

    @property
    def embedded(self) -> bool:
        return self.redis is None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DashboardSettings:
        configured = any(env.get(name) for name in ("REDIS_URL", "REDIS_HOST"))
        output = env.get("REDIS_OUTPUT_KEY") or (None if configured else EMBEDDED_OUTPUT_KEY)
        return cls(
            redis=RedisSettings.from_env(env) if configured else None,
            keys=schema.Keys(input=env.get("REDIS_INPUT_KEY") or "metrics", output=output),
            refresh_seconds=min(config._number(env, "DASHBOARD_REFRESH", 2.0, 1.0), 10.0),
        )


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a handler's output, nested keys joined with '.'; NaN and inf are gaps."""
    if isinstance(value, Mapping):
        leaves: dict[str, float] = {}
        for key, item in value.items():
            leaves.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return leaves
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return {}
    number = float(value) if not isinstance(value, int) or abs(value) < 2**1023 else math.inf
    return {prefix or "output": number if math.isfinite(number) else math.nan}


def _output_row(fields: Mapping[Any, Any]) -> dict[str, Any]:
    return entries.output_row(fields, flatten)


def server_now(client: redis.Redis) -> datetime:
    """The Redis server's clock as naive local time: the one clock every part of the system shares."""
    seconds, micros = client.time()
    return datetime.fromtimestamp(seconds + micros / 1e6)


def dashboard_client(settings: RedisSettings) -> redis.Redis:
    """A client whose replies never fail to decode: bytes that are not UTF-8 become lone surrogates."""
    client = connect(settings, client_name="dashboard")
    client.connection_pool.connection_kwargs["encoding_errors"] = "surrogateescape"
    client.connection_pool.reset()
    return client


@dataclass
class Snapshot:
    """What one tick of the dashboard shows, already cut to the window."""

    window: Window
    samples: pd.DataFrame
    outputs: pd.DataFrame
    status: status.Status
    errors: pd.DataFrame  # time, fault, message of the error records in the window
    events: pd.DataFrame  # time, end, kind, label: restarts, version changes
    problems: list[str]  # keys of the wrong type and the like, as sentences
    skipped_samples: int
    skipped_outputs: int
    skip_reason: str | None
    future_samples: int
    source: str  # "raw" or the tier's name
    loading: bool = False  # older history still being read in the background
    latest_sample: dict[str, Any] | None = None
    outputs_from_plain_key: bool = False
    top: dict[str, Any] | None = None
    latest_raw: pd.DataFrame = field(default_factory=pd.DataFrame)  # the newest raw rows, for the KPIs

    @property
    def runtime_stale(self) -> bool:
        """No runtime heartbeat within the status contract's staleness limit."""
        return self.status.stale()


def _typename(client: redis.Redis, key: str) -> str:
    try:
        return str(client.type(key))
    except redis.RedisError:
        return "another type"


@contextmanager
def guarded(client: redis.Redis, problems: list[str], key: str, expected: str) -> Iterator[None]:
    """A WRONGTYPE reply (or another server error) on one key is noted; the rest of the tick goes on."""
    try:
        yield
    except redis.ResponseError as error:
        if "WRONGTYPE" in str(error):
            problems.append(f"`{key}` holds a {_typename(client, key)}, not a {expected}: skipped. "
                            f"Delete or rename it (`DEL {key}`) so the collector or runtime can write it again.")
        else:
            problems.append(f"`{key}`: the server refused the read ({error}); skipped.")


def choose_tier(seconds: float) -> str | None:
    """The rollup tier a window reads first (None: raw samples)."""
    if seconds <= RAW_UP_TO_SECONDS:
        return None
    return next((tier for tier, longest in TIERS if seconds <= longest), TIERS[-1][0])


def _error_rows(records: list, window: Window) -> pd.DataFrame:
    """Error records inside the window: time, fault, message (shortened for a tooltip)."""
    rows = []
    for _, fields in records:
        record = status.error_from_fields(fields) or {}
        moment = status.parse_instant(record.get("time"))
        if moment is None:
            continue
        moment = pd.Timestamp(local_naive(moment))
        if window.start <= moment <= window.end:
            rows.append({"time": moment, "fault": record.get("fault", "?"),
                         "message": (record.get("message") or "")[:300]})
    return pd.DataFrame(rows, columns=["time", "fault", "message"])


class MetricsStore:
    """Every viewer's shared view of one host's keys: one client, one history per stream, one lock."""

    def __init__(self, settings: RedisSettings, keys: schema.Keys, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.keys = keys
        self.client = client or dashboard_client(settings)
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything read so far (after data that could not be drawn): the next tick rereads."""
        keys = self.keys
        self.raw = StreamHistory(keys.input_stream, entries.sample_row)
        self.tiers = {tier: StreamHistory(keys.rollup(tier), entries.sample_row) for tier, _ in TIERS}
        self.outputs = StreamHistory(keys.output_stream, _output_row) if keys.output else None
        self.polled: list[tuple[datetime, dict[str, float]]] = []  # outputs of a runtime that only SETs
        self._polled_last: str | None = None
        self.events: list[dict[str, Any]] = []
        self._seen: tuple[Any, Any] | None = None  # (started, function_version) of the last status

    def snapshot(self, seconds: float = WINDOWS["15 min"], end: datetime | None = None) -> Snapshot:
        """Top up the histories for a window ending at `end` (default: the server's now)."""
        with self.lock:
            now = server_now(self.client)
            window = Window.last(seconds, end or now)
            problems: list[str] = []
            now_ms = int(now.timestamp() * 1000)
            start_ms = window.start.to_pydatetime().timestamp() * 1000  # naive local, not UTC as pandas would
            need_ms = int(min(start_ms, now_ms - seconds * 1000)) - 60_000
            source, samples, loading = self._samples(problems, seconds, need_ms, now_ms)
            snap = Snapshot(window=window, samples=window.clip(samples), outputs=pd.DataFrame(),
                            status=status.Status(), errors=_error_rows([], window), events=pd.DataFrame(),
                            problems=problems, skipped_samples=self.raw.skipped, skipped_outputs=0,
                            skip_reason=self.raw.skip_reason, future_samples=window.future(samples),
                            source=source, loading=loading)
            snap.latest_raw = window.clip(self.raw.frame).tail(2)  # the KPIs: never a sample from the future
            if self.raw.frame.empty:
                snap.latest_sample = self._latest_plain_sample(problems)
            snap.top = self._top(problems)
            if self.outputs is not None:
                self._outputs(snap, need_ms)
            snap.events = self._events(snap.status, now)
            return snap

    def _samples(self, problems: list[str], seconds: float, need_ms: int,
                 now_ms: int) -> tuple[str, pd.DataFrame, bool]:
        tier = choose_tier(seconds)
        if tier is not None:
            history = self.tiers[tier]
            with guarded(self.client, problems, history.key, "stream"):
                history.refresh(self.client, need_ms)
            if not history.frame.empty:
                with guarded(self.client, problems, self.raw.key, "stream"):
                    self.raw.refresh(self.client, now_ms - RAW_UP_TO_SECONDS * 1000)
                return f"{tier} rollup", history.frame, history.loading
        with guarded(self.client, problems, self.raw.key, "stream"):
            self.raw.refresh(self.client, need_ms)
        return "raw", self.raw.frame, self.raw.loading

    def _outputs(self, snap: Snapshot, need_ms: int) -> None:
        keys, client, problems = self.keys, self.client, snap.problems
        with guarded(client, problems, self.outputs.key, "stream"):
            self.outputs.refresh(client, need_ms)
        with guarded(client, problems, keys.status, "hash"):
            snap.status = status.Status.from_hash(client.hgetall(keys.status))
        with guarded(client, problems, keys.errors, "stream"):
            snap.errors = _error_rows(client.xrevrange(keys.errors, count=ERRORS_SHOWN), snap.window)
        outputs = self.outputs.frame
        if outputs.empty and self.outputs.last_id is None:
            outputs = self._poll_plain_output(problems)
            snap.outputs_from_plain_key = bool(self.polled)
        snap.outputs = snap.window.clip(outputs)
        snap.skipped_outputs = self.outputs.skipped
        snap.skip_reason = snap.skip_reason or self.outputs.skip_reason
        snap.loading = snap.loading or self.outputs.loading

    def _events(self, current: status.Status, now: datetime) -> pd.DataFrame:
        """Runtime restarts and function version changes, as this page has seen them."""
        seen = (current.started, current.function_version)
        if current.present and seen != self._seen:
            previous, self._seen = self._seen, seen
            if current.started is not None and (previous is None or previous[0] != current.started):
                moment = pd.Timestamp(local_naive(current.started))
                self.events.append({"time": moment, "end": moment, "kind": "restart",
                                    "label": f"runtime started (pid {current.pid or '?'})"})
            if previous is not None and previous[1] != current.function_version:
                moment = pd.Timestamp(now)
                self.events.append({"time": moment, "end": moment, "kind": "version",
                                    "label": f"function version {current.function_version or '?'}"})
            del self.events[:-EVENTS_KEPT]
        return pd.DataFrame(self.events, columns=["time", "end", "kind", "label"])

    def _latest_plain_sample(self, problems: list[str]) -> dict[str, Any] | None:
        """The course's collector writes only the key: show its latest sample at least."""
        with guarded(self.client, problems, self.keys.input, "string"):
            raw = self.client.get(self.keys.input)
            try:
                return schema.parse_sample(raw) if raw else None
            except (schema.SampleError, ValueError):
                problems.append(f"`{self.keys.input}` does not hold a sample in the course's format: skipped.")
        return None

    def _top(self, problems: list[str]) -> dict[str, Any] | None:
        """The collector's top processes (`<input>:top`), if it writes them."""
        key = self.keys.top
        with guarded(self.client, problems, key, "string"):
            raw = self.client.get(key)
            if raw:
                try:
                    value = json.loads(raw)
                except (ValueError, RecursionError):
                    value = None
                if isinstance(value, dict):
                    return value
                problems.append(f"`{key}` is not the collector's JSON object of top processes: skipped.")
        return None

    def _poll_plain_output(self, problems: list[str]) -> pd.DataFrame:
        """The course's runtime only SETs its output: keep a history of it from our own polling."""
        raw = None
        with guarded(self.client, problems, self.keys.output, "string"):
            raw = self.client.get(self.keys.output)
        if raw and raw != self._polled_last:
            self._polled_last = raw
            try:
                self.polled.append((server_now(self.client), flatten(json.loads(raw))))
            except (ValueError, RecursionError):
                pass
            cutoff = self.polled[-1][0].timestamp() - HISTORY_SECONDS if self.polled else 0
            self.polled = [(t, row) for t, row in self.polled if t.timestamp() >= cutoff]
        if not self.polled:
            return pd.DataFrame()
        times, rows = zip(*self.polled)
        return pd.DataFrame(list(rows), index=pd.DatetimeIndex(times, name="time"), dtype="float64")
