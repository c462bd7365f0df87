"""Where the evaluator reads: the hosts, their streams and plain keys, and the runtime's own figures."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from runtime import schema
from runtime.status import Status

log = logging.getLogger(__name__)

POLL_PREFIX = "poll:"  # an input cursor in polling mode: a digest of the plain key's value
ERRORS_WINDOW_MS = 60_000


@dataclass(frozen=True)
class HostKeys:
    """One host's keys; host "" is the plain keys (a collector without HOST_ID)."""

    host: str
    keys: schema.Keys

    @property
    def output_stream(self) -> str | None:
        """The host's output stream, None without an output key."""
        return self.keys.output_stream if self.keys.output else None


def discover(client: redis.Redis, keys: schema.Keys) -> tuple[list[HostKeys], int]:
    """The plain keys (when anything was published there) and every valid host of the registry; and how
    many registry entries were not valid host ids (skipped)."""
    hosts = [HostKeys("", keys)] if client.exists(keys.input_stream, keys.input) else []
    valid, invalid = schema.valid_host_ids(client.hkeys(keys.hosts))
    return hosts + [HostKeys(host, keys.for_host(host)) for host in valid], invalid


def server_ms(client: redis.Redis) -> int:
    """Now on the Redis server's clock, the clock stream ids come from."""
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def newest_id(client: redis.Redis, stream: str) -> str | None:
    """The id of the stream's newest entry, None when it is empty or missing."""
    newest = client.xrevrange(stream, count=1)
    return newest[0][0] if newest else None


def poll_cursor(raw: str) -> str:
    """A polled value's cursor: a digest of it, to tell a new value from the one handled."""
    return POLL_PREFIX + hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()


def runtime_figures(client: redis.Redis, hosts: Iterable[HostKeys], now_ms: int) -> dict[str, dict[str, float]]:
    """Per host: seconds since its newest sample (the stream's, not how far the evaluator has read: a
    backlog being caught up is no dead collector), the runtime's lag (status hash), errors in a minute."""
    hosts = list(hosts)
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        pipe.xrevrange(host.keys.input_stream, count=1)
        if host.keys.output:
            pipe.hgetall(host.keys.status)
            pipe.xrange(host.keys.errors, min=str(now_ms - ERRORS_WINDOW_MS), count=10_000)
    replies = iter(pipe.execute(raise_on_error=False) if hosts else [])
    figures = {}
    for host in hosts:
        found: dict[str, float] = {}
        newest = next(replies)
        if isinstance(newest, list) and newest:
            found["seconds_since_sample"] = max(now_ms - schema.stream_id_millis(newest[0][0]), 0) / 1000
        if host.keys.output:
            status, errors = next(replies), next(replies)
            if isinstance(status, dict) and status:
                lag = Status.from_hash(status).lag_seconds
                if lag is not None:
                    found["lag_seconds"] = lag
                found["errors_per_minute"] = float(len(errors)) if isinstance(errors, list) else 0.0
        figures[host.host] = found
    return figures
