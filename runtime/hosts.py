"""Many hosts: the plain keys' runtime as the course runs it, and one fleet for every registered host.

Collectors started with HOST_ID publish under `metrics:<host>` and register the host in
`metrics:hosts`. The supervisor runs the single-host runtime on the plain keys (the course's setup,
unchanged) in a thread, and the fleet (runtime/fleet.py) for the registered hosts: one reader, one
worker and a small state per host, hosts shared between replicas by per-host leases.
"""

from __future__ import annotations

import logging
import threading

import redis

from runtime.config import RuntimeConfig
from runtime.fleet import Fleet
from runtime.fleetpool import pool_of
from runtime.loop import Runtime, make_invoker
from runtime.observe import Health, Metrics

log = logging.getLogger(__name__)


class HostSupervisor:
    def __init__(self, config: RuntimeConfig, client: redis.Redis, stop: threading.Event,
                 extra_paths: list[str] | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.stop = stop
        self.metrics = metrics or Metrics()
        self.plain = Runtime(config, client, stop, make_invoker(config, extra_paths), metrics=self.metrics)
        # Hosts need an output key of their own to store anything: without one only the plain keys run.
        self.fleet = Fleet(config, client, stop, pool_of(make_invoker(config, extra_paths)),
                           self.metrics) if config.keys.output else None
        self.health = SupervisorHealth(self)
        # One readiness for the whole process, computed at each scrape: no part overwrites another's.
        self.metrics.ready.set_function(lambda: 1.0 if self.health.ready else 0.0)

    def run(self) -> None:
        plain = threading.Thread(target=self.plain.run, name="runtime-default", daemon=True)
        plain.start()
        if self.fleet is not None:
            self.fleet.run()
        plain.join()

    def describe(self) -> str:
        if not self.plain.ready:
            return self.plain.describe()
        return self.fleet.describe() if self.fleet is not None else "starting"


class SupervisorHealth(Health):
    """Alive while the plain runtime's loop and the fleet's come round; ready when both are."""

    def __init__(self, supervisor: HostSupervisor) -> None:
        super().__init__()
        self.supervisor = supervisor

    def _parts(self) -> list[Health]:
        fleet = self.supervisor.fleet
        return [self.supervisor.plain.health, *([fleet.health] if fleet is not None else [])]

    @property
    def alive(self) -> bool:
        return all(part.alive for part in self._parts())

    @property
    def ready(self) -> bool:
        return all(part.ready for part in self._parts())

    @ready.setter
    def ready(self, value: bool) -> None:
        pass  # derived from the parts
