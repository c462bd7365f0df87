"""The dashboard's data: read from Redis incrementally, kept in memory once for every viewer.

Each stream is read once from its start (up to a day back), then only entries newer than the last
id seen. Frames are typed by the shared schema module; charts get them windowed and downsampled.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
import redis

from runtime import schema
from runtime import status as status_times
from runtime.config import RedisSettings, connect

HISTORY_SECONDS = 24 * 3600
READ_CHUNK = 10_000  # entries per XRANGE call while catching up
STALE_AFTER_SECONDS = 15.0  # a runtime heartbeat older than this: runtime not running
WINDOWS = {"1 min": 60, "5 min": 300, "15 min": 900, "1 h": 3600, "6 h": 6 * 3600, "24 h": 24 * 3600}
MAX_POINTS = 1000  # per series: about a chart's width in pixels
ENTRY_MS = "_entry_ms"  # bookkeeping column: the stream entry's server time
EMBEDDED_OUTPUT_KEY = "metrics-output"


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
            refresh_seconds=min(max(float(env.get("DASHBOARD_REFRESH") or 2.0), 1.0), 10.0),
        )


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a handler's output, nested keys joined with '.'."""
    if isinstance(value, Mapping):
        leaves: dict[str, float] = {}
        for key, item in value.items():
            leaves.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return leaves
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return {}
    return {prefix or "output": float(value)}


def _entry_time(entry_id: str, timestamp: str | None) -> datetime:
    if timestamp:
        try:
            return schema.parse_timestamp(timestamp)
        except schema.SampleError:
            pass
    return datetime.fromtimestamp(schema.stream_id_millis(entry_id) / 1000)


def output_rows(entries: list[tuple[str, dict]]) -> tuple[pd.DataFrame, int]:
    """Output-stream entries as a frame of numeric outputs indexed by their sample's time."""
    rows, times, ids, malformed = [], [], [], 0
    for entry_id, fields in entries:
        try:
            output = json.loads(schema.entry_payload(fields, schema.OUTPUT_FIELD))
        except (schema.SampleError, ValueError):
            malformed += 1
            continue
        rows.append(flatten(output))
        times.append(_entry_time(entry_id, fields.get(schema.TIMESTAMP)))
        ids.append(entry_id)
    frame = pd.DataFrame(rows, index=pd.DatetimeIndex(times, name="time"), dtype="float64")
    frame["entry_id"] = ids
    return frame, malformed


class StreamHistory:
    """One stream's entries of the last day as a frame, topped up with only the entries that are new."""

    def __init__(self, key: str, to_frame) -> None:
        self.key = key
        self.to_frame = to_frame
        self.frame = pd.DataFrame(index=pd.DatetimeIndex([], name="time"))
        self.last_id: str | None = None
        self.malformed = 0

    def refresh(self, client: redis.Redis) -> None:
        start = f"({self.last_id}" if self.last_id else str(int((time.time() - HISTORY_SECONDS) * 1000))
        parts = []
        while True:
            entries = client.xrange(self.key, min=start, count=READ_CHUNK)
            if not entries:
                break
            frame, malformed = self.to_frame(entries)
            self.malformed += malformed
            # Where the entry sits in the stream (server ms), to forget what Redis trims.
            frame[ENTRY_MS] = frame.pop("entry_id").str.split("-").str[0].astype("int64")
            parts.append(frame)
            self.last_id = entries[-1][0]
            start = f"({self.last_id}"
            if len(entries) < READ_CHUNK:
                break
        if parts:
            new = pd.concat(parts)
            self.frame = new if self.frame.empty else pd.concat([self.frame, new])
            if not self.frame.index.is_monotonic_increasing:
                self.frame = self.frame.sort_index(kind="stable")
        if not self.frame.empty:
            self._trim(client)

    def _trim(self, client: redis.Redis) -> None:
        """Keep a day at most, and nothing Redis has trimmed away: memory stays bounded by retention."""
        keep = self.frame.index >= self.frame.index[-1] - pd.Timedelta(seconds=HISTORY_SECONDS)
        oldest = client.xrange(self.key, count=1)
        keep &= self.frame[ENTRY_MS].to_numpy() >= (schema.stream_id_millis(oldest[0][0]) if oldest else 0)
        if not keep.all():
            self.frame = self.frame.loc[keep]


@dataclass
class Snapshot:
    """What one tick of the dashboard shows."""

    samples: pd.DataFrame
    outputs: pd.DataFrame
    status: dict[str, str]
    last_error: dict[str, str] | None
    malformed_samples: int
    malformed_outputs: int
    outputs_from_plain_key: bool = False
    latest_sample: dict[str, Any] | None = None

    @property
    def runtime_stale(self) -> bool:
        beat = self.status.get("heartbeat")
        if not beat:
            return True
        age = status_times.seconds_since(status_times.parse_instant(beat))  # the runtime writes zoned instants
        return age is None or age > STALE_AFTER_SECONDS


@dataclass
class MetricsStore:
    """Every viewer's shared view of Redis: one client, one history per stream, one lock."""

    settings: RedisSettings
    keys: schema.Keys
    client: redis.Redis = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.client = connect(self.settings, client_name="dashboard")
        self.samples = StreamHistory(self.keys.input_stream, schema.entries_to_frame)
        self.outputs = StreamHistory(self.keys.output_stream, output_rows) if self.keys.output else None
        self.polled: list[tuple[datetime, dict[str, float]]] = []  # outputs of a runtime that only SETs
        self._polled_last: str | None = None

    def snapshot(self) -> Snapshot:
        """Top up every history and read the runtime's status; ConnectionError when Redis is away."""
        with self.lock:
            self.samples.refresh(self.client)
            latest_sample = self._latest_plain_sample() if self.samples.frame.empty else None
            status, last_error, outputs, plain = {}, None, pd.DataFrame(), False
            if self.outputs is not None:
                self.outputs.refresh(self.client)
                status = self.client.hgetall(self.keys.status)
                last = self.client.xrevrange(self.keys.errors, count=1)
                last_error = last[0][1] if last else None
                outputs = self.outputs.frame
                if outputs.empty and self.outputs.last_id is None:
                    outputs, plain = self._poll_plain_output(), bool(self.polled)
            return Snapshot(self.samples.frame, outputs, status, last_error, self.samples.malformed,
                            self.outputs.malformed if self.outputs else 0, plain, latest_sample)

    def _latest_plain_sample(self) -> dict[str, Any] | None:
        """The course's collector writes only the key: show its latest sample at least."""
        raw = self.client.get(self.keys.input)
        try:
            return schema.parse_sample(raw) if raw else None
        except schema.SampleError:
            return None

    def _poll_plain_output(self) -> pd.DataFrame:
        """The course's runtime only SETs its output: keep a history of it from our own polling."""
        raw = self.client.get(self.keys.output)
        if raw and raw != self._polled_last:
            self._polled_last = raw
            try:
                self.polled.append((datetime.now(), flatten(json.loads(raw))))
            except ValueError:
                pass
            cutoff = datetime.now().timestamp() - HISTORY_SECONDS
            self.polled = [(t, row) for t, row in self.polled if t.timestamp() >= cutoff]
        if not self.polled:
            return pd.DataFrame()
        times, rows = zip(*self.polled)
        return pd.DataFrame(list(rows), index=pd.DatetimeIndex(times, name="time"), dtype="float64")


def window(frame: pd.DataFrame, seconds: float) -> pd.DataFrame:
    """The rows of the last `seconds` before the newest row (not before now: no clock in the spec)."""
    if frame.empty:
        return frame
    return frame.loc[frame.index >= frame.index[-1] - pd.Timedelta(seconds=seconds)]


def downsample(frame: pd.DataFrame, seconds: float, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """At most about `max_points` rows: the mean of each time bucket, so a day draws like a minute."""
    numeric = frame.select_dtypes("number").drop(columns=[ENTRY_MS], errors="ignore")
    if len(numeric) <= max_points:
        return numeric.astype("float64")
    bucket = max(1, math.ceil(seconds / max_points))
    return numeric.astype("float64").resample(f"{bucket}s").mean().dropna(how="all")


def host_overview(client: redis.Redis, keys: schema.Keys) -> pd.DataFrame:
    """One row per registered host: its latest CPU and memory, when it was last seen, and if it is stale."""
    registry = client.hgetall(keys.hosts)
    rows = []
    for host in sorted(registry):
        raw = client.get(keys.for_host(host).input)
        try:
            sample = schema.parse_sample(raw) if raw else {}
        except schema.SampleError:
            sample = {}
        cpus = [sample[f] for f in schema.cpu_fields(sample)]
        seen = datetime.fromisoformat(registry[host]) if registry[host] else None
        age = (datetime.now() - seen).total_seconds() if seen else float("inf")
        rows.append({"host": host, "CPU %": sum(cpus) / len(cpus) if cpus else None,
                     "memory %": sample.get(schema.MEMORY_PERCENT), "last seen": registry[host],
                     "stale": age > STALE_AFTER_SECONDS})
    return pd.DataFrame(rows, columns=["host", "CPU %", "memory %", "last seen", "stale"])
