"""The collector: sample the host with psutil every INTERVAL seconds and publish each sample to Redis.

Each sample goes out in one round trip: SET <input> (the course's latest-value key, the course's fields
only) and XADD to <input>:stream (the same sample, and the extended metrics beside it as `extra`), with
the rollup entries the sample closed and, every ~10 s, the top processes. While Redis is away, samples
wait in a bounded buffer and go out in order once it is back. Streams are trimmed by age on the Redis
server's clock: the id the server gave the last entry, never this host's clock.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import redis

from runtime import schema
from runtime.extras import ExtraSampler, TopProcesses, guarded
from runtime.rollup import Rollups
from runtime.config import BACKOFF_CAP_SECONDS, CollectorConfig, ConfigError, configure_logging, connect

log = logging.getLogger("collector")


def default_route_interface(procfs_path: str) -> str | None:
    """The interface of the default route (destination 0.0.0.0) in <procfs>/net/route, if any."""
    try:
        lines = Path(procfs_path, "net", "route").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) > 2 and parts[1] == "00000000":
            return parts[0]
    return None


def choose_interface(requested: str | None, procfs_path: str, counters: dict[str, Any]) -> str | None:
    """NET_INTERFACE if set ('all' sums every interface), else the default route's, else the busiest one."""
    if requested:
        if requested != "all" and requested not in counters:
            raise ConfigError(f"NET_INTERFACE={requested!r} is not an interface here (found: {', '.join(sorted(counters))})")
        return None if requested == "all" else requested
    routed = default_route_interface(procfs_path)
    if routed in counters:
        return routed
    candidates = {name: c.bytes_sent + c.bytes_recv for name, c in counters.items() if name != "lo"}
    return max(candidates, key=candidates.get) if candidates else None


class Sampler:
    """Reads the host with psutil. Each source is guarded on its own, so one failure drops only its fields."""

    def __init__(self, net_interface: str | None = None, procfs_path: str | None = None) -> None:
        if procfs_path:
            psutil.PROCFS_PATH = procfs_path  # report the host from inside a container
        self.interface = choose_interface(net_interface, psutil.PROCFS_PATH, psutil.net_io_counters(pernic=True))
        psutil.cpu_percent(percpu=True)  # the first call returns 0.0: prime it
        log.info("sampling procfs=%s net_interface=%s cpus=%d", psutil.PROCFS_PATH,
                 self.interface or "all", psutil.cpu_count())

    def sample(self) -> dict[str, Any]:
        return schema.build_sample(
            datetime.now(),
            cpu_percents=guarded("cpu_percent", lambda: psutil.cpu_percent(percpu=True)),
            cpu_freq_mhz=guarded("cpu_freq", lambda: psutil.cpu_freq().current),
            cpu_stats=guarded("cpu_stats", lambda: psutil.cpu_stats()._asdict()),
            memory=guarded("virtual_memory", lambda: psutil.virtual_memory()._asdict()),
            n_pids=guarded("pids", lambda: len(psutil.pids())),
            net=guarded("net_io_counters", self._net),
        )

    def _net(self) -> dict[str, int]:
        if self.interface is None:
            return psutil.net_io_counters()._asdict()
        return psutil.net_io_counters(pernic=True)[self.interface]._asdict()


class Publisher:
    """Publishes samples in order; keeps up to `capacity` unsent ones while Redis is unreachable."""

    def __init__(self, client: redis.Redis, keys: schema.Keys, retention_seconds: float, capacity: int,
                 host: str | None = None) -> None:
        self.client = client
        self.registry = keys.hosts
        self.host = host
        self.keys = keys.for_host(host) if host else keys
        self.retention_seconds = retention_seconds
        self.pending: deque[tuple[str, str | None]] = deque(maxlen=capacity)  # (sample, extras) JSON
        self.rollups: deque[tuple[str, dict[str, str]]] = deque(maxlen=capacity)  # (tier, entry)
        self.top: str | None = None  # only the latest top processes matter
        self.dropped = 0
        self.server_ms: int | None = None  # the Redis server's clock, from the id of the last entry it added
        self._backoff = 0.0
        self._next_attempt = 0.0

    def publish(self, sample: dict[str, Any], extra: dict[str, Any] | None = None,
                rollups: list[tuple[str, dict[str, str]]] = (), top: dict[str, Any] | None = None) -> bool:
        """Queue the sample (its extras, closed rollups, top processes) and send everything queued.

        False while Redis is unreachable.
        """
        if len(self.pending) == self.pending.maxlen:
            self.dropped += 1
            log.warning("buffer_full dropped_oldest total_dropped=%d capacity=%d", self.dropped, self.pending.maxlen)
        self.pending.append((schema.encode_sample(sample), schema.encode_extra(extra) if extra is not None else None))
        self.rollups.extend(rollups)
        if top is not None:
            self.top = json.dumps(top, allow_nan=False)
        if time.monotonic() < self._next_attempt:
            return False
        return self.flush()

    def _minid(self) -> int | None:
        """Entries older than the retention on the server's clock go; None (no trim) before it is known."""
        return None if self.server_ms is None else self.server_ms - int(self.retention_seconds * 1000)

    def flush(self) -> bool:
        if not self.pending and not self.rollups:
            return True
        batch, rollups, minid = list(self.pending), list(self.rollups), self._minid()
        pipe = self.client.pipeline(transaction=True)
        for sample_json, extra_json in batch:
            pipe.xadd(self.keys.input_stream, schema.sample_entry(sample_json, extra_json), minid=minid,
                      approximate=True)
        for tier, fields in rollups:
            pipe.xadd(self.keys.rollup(tier), fields, minid=minid, approximate=True)
        if batch:
            pipe.set(self.keys.input, batch[-1][0])
        if self.top is not None:
            pipe.set(self.keys.top, self.top)
        if self.host:
            pipe.hset(self.registry, self.host, datetime.now().isoformat(sep=" "))
        try:
            # EXEC applies every write that does not fail (a key of the wrong type fails only its own):
            # read each reply, and forget exactly what landed, so nothing is ever sent twice.
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as error:  # unreachable, restarting, out of memory: nothing was applied
            self._retry_later(error)
            return False
        self._sent(batch, rollups, replies)
        failed = [reply for reply in replies if isinstance(reply, Exception)]
        if failed:
            self._retry_later(failed[0])
            self._report_wrong_types()
            return False
        return True

    def _retry_later(self, error: Exception) -> None:
        self._backoff = min(max(self._backoff * 2, 0.5), BACKOFF_CAP_SECONDS)
        self._next_attempt = time.monotonic() + self._backoff
        log.warning("redis_unavailable error=%s buffered=%d retry_in=%.1fs", error, len(self.pending), self._backoff)

    def _report_wrong_types(self) -> None:
        """Name each key that holds another type than the collector writes, so an operator can fix it."""
        expected = {self.keys.input_stream: "stream", self.keys.input: "string", self.keys.top: "string",
                    **{self.keys.rollup(tier): "stream" for tier in schema.ROLLUP_TIERS}}
        if self.host:
            expected[self.registry] = "hash"
        try:
            found = dict(zip(expected, self._types(list(expected))))
        except redis.RedisError:
            return
        for key, kind in found.items():
            if kind not in ("none", expected[key]):
                log.error("wrong_key_type key=%s type=%s expected=%s: samples wait in the buffer until the key "
                          "is deleted or renamed", key, kind, expected[key])

    def _types(self, keys: list[str]) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        return [kind.decode() if isinstance(kind, bytes) else kind for kind in pipe.execute()]

    def _sent(self, batch: list, rollups: list, replies: list) -> None:
        """Forget what landed; keep what failed (its key of the wrong type named in the log) for later."""
        sample_replies, rest = replies[:len(batch)], replies[len(batch):]
        if batch and not isinstance(sample_replies[-1], Exception):  # one key: all of them landed, or none
            for _ in batch:
                self.pending.popleft()
            self.server_ms = schema.stream_id_millis(sample_replies[-1])
            if self._backoff:
                log.info("redis_back published_buffered=%d", len(batch))
        failed_rollups = [item for item, reply in zip(rollups, rest) if isinstance(reply, Exception)]
        for _ in rollups:
            self.rollups.popleft()
        self.rollups.extendleft(reversed(failed_rollups))
        top_reply = rest[len(rollups) + (1 if batch else 0)] if self.top is not None else None
        if not isinstance(top_reply, Exception):
            self.top = None
        if not [reply for reply in replies if isinstance(reply, Exception)]:
            self._backoff = 0.0


def run(config: CollectorConfig, client: redis.Redis, stop: threading.Event) -> None:
    """Sample on a fixed schedule (no drift) until `stop` is set."""
    sampler, extras, top = Sampler(config.net_interface, config.procfs_path), ExtraSampler(), TopProcesses()
    rollups = Rollups()
    publisher = Publisher(client, config.keys, config.retention_seconds, config.buffer_samples, config.host_id)
    next_tick = time.monotonic() + min(config.interval, 1.0)  # a first sample soon after start
    while not stop.wait(max(0.0, next_tick - time.monotonic())):
        sample, extra = sampler.sample(), extras.read()
        if publisher.publish(sample, extra, rollups.add(sample, extra), top.due()):
            log.debug("published timestamp=%s", sample[schema.TIMESTAMP])
        next_tick += config.interval
        if next_tick < time.monotonic():  # fell behind (suspended host): skip, don't burst
            next_tick = time.monotonic() + config.interval
    publisher.rollups.extend(rollups.close_all())  # the open buckets: a reader merges them with a later start's
    publisher.flush()
    log.info("stopped unsent=%d", len(publisher.pending))


def main() -> int:
    """`python -m runtime.collector`."""
    try:
        config = CollectorConfig.from_env()
        configure_logging(os.environ)
    except ConfigError as error:
        print(f"collector: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("starting redis=%s key=%s host=%s interval=%gs", config.redis.safe_url(), config.keys.input,
             config.host_id or "-", config.interval)
    try:
        run(config, connect(config.redis, client_name="collector"), stop)
    except ConfigError as error:
        print(f"collector: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
