"""Many hosts: one runtime per host in the registry, each with its own context, checkpoint and lease.

Collectors started with HOST_ID publish under `metrics:<host>` and register the host in
`metrics:hosts`. The supervisor runs the single-host runtime on the plain keys (the course's setup)
and starts a runtime for every registered host, new ones included, each in a thread of its own with
its own worker: one slow or failing host does not hold the others back.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import redis

from runtime.config import RuntimeConfig, connect
from runtime.loop import Runtime, make_invoker
from runtime.observe import Health, Metrics
from runtime.reader import text_of

log = logging.getLogger(__name__)

SCAN_SECONDS = 5.0  # how soon a new host is picked up (each scan is a wake-up of an idle runtime)


class HostSupervisor:
    def __init__(self, config: RuntimeConfig, client: redis.Redis, stop: threading.Event,
                 extra_paths: list[str] | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.client = client
        self.stop = stop
        self.extra_paths = extra_paths or []
        self.metrics = metrics or Metrics()
        self.skipped: set[str] = set()  # host ids that cannot be followed, reported once each
        self.health = SupervisorHealth(self)
        self.runtimes: dict[str | None, Runtime] = {}
        self.threads: list[threading.Thread] = []

    def run(self) -> None:
        self._start(None)  # the plain keys, as the course's collector writes them
        while not self.stop.wait(SCAN_SECONDS if self.config.keys.output else 3600):
            try:
                hosts = self.client.hkeys(self.config.keys.hosts)
            except redis.RedisError as error:
                log.warning("hosts_unreadable key=%s error=%s", self.config.keys.hosts, error)
                continue
            for host in sorted(set(hosts) - set(self.runtimes) - self.skipped):
                self._follow(host)
        for thread in self.threads:
            thread.join()

    def _follow(self, host: str) -> None:
        """Start a runtime for a newly registered host; skip (and count) an id that cannot be one."""
        try:
            text_of(host)
            self._start(host)
        except (ValueError, UnicodeError) as error:  # UnicodeError: bytes that are not UTF-8
            self.skipped.add(host)
            self.metrics.hosts_skipped.inc()
            log.error("host_ignored host=%r error=%s", host, error)

    def _start(self, host: str | None) -> None:
        config = self.config if host is None else dataclasses.replace(self.config, keys=self.config.keys.for_host(host))
        # A client (connection pool) per host: each one blocks a connection in XREAD.
        client = self.client if host is None else connect(config.redis, client_name=f"runtime-{host}")
        runtime = Runtime(config, client, self.stop, make_invoker(config, self.extra_paths), metrics=self.metrics)
        self.runtimes[host] = runtime
        thread = threading.Thread(target=runtime.run, name=f"runtime-{host or 'default'}", daemon=True)
        self.threads.append(thread)
        thread.start()
        if host is not None:
            log.info("host_followed host=%s input=%s output=%s", host, config.keys.input, config.keys.output)

    def describe(self) -> str:
        waiting = {host: runtime.describe() for host, runtime in self.runtimes.items() if not runtime.ready}
        if list(waiting) == [None]:
            return waiting[None]
        return "; ".join(f"host {host or '(plain keys)'}: {why}" for host, why in waiting.items()) or "starting"


class SupervisorHealth(Health):
    """Alive while every host's loop comes round; ready when every host's runtime is."""

    def __init__(self, supervisor: HostSupervisor) -> None:
        super().__init__()
        self.supervisor = supervisor

    @property
    def alive(self) -> bool:
        runtimes = list(self.supervisor.runtimes.values())
        return bool(runtimes) and all(r.health.alive for r in runtimes)

    @property
    def ready(self) -> bool:
        runtimes = list(self.supervisor.runtimes.values())
        return bool(runtimes) and all(r.ready for r in runtimes)

    @ready.setter
    def ready(self, value: bool) -> None:
        pass  # derived from the hosts' runtimes
