"""The fleet's lease keeper: reads the registry and runs the lease script, apart from the fleet's loop.

Each tick (2.5 times per lease period, at least every 6 s): the registry's valid ids (invalid ones
logged once and counted), minus hosts silent for HOST_TTL (removed from the registry, their leases
given back), then one lease script (fleetlease) that says which hosts this replica holds now. Hosts
that no replica has room for (MAX_HOSTS) get a status that says so. While the registry is empty and
nothing is held (the course's setup, no HOST_ID), a tick is one read, every IDLE_PERIOD_SECONDS.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from runtime import schema, status
from runtime.fleetlease import Assignment
from runtime.lease import RENEWALS_PER_LEASE
from runtime.status import HEARTBEAT_SECONDS, State

log = logging.getLogger(__name__)

NOTHING = Assignment(frozenset(), (), False)  # no host held, none waiting
IDLE_PERIOD_SECONDS = 15.0  # between reads of an empty registry: a first host is followed within this


class AssignmentKeeper(threading.Thread):
    """Reads the registry and runs the lease script 2.5 times per lease period, apart from the loop."""

    def __init__(self, fleet: Any) -> None:  # runtime.fleet.Fleet, which imports this module
        super().__init__(name="fleet-leases", daemon=True)
        self.fleet = fleet
        self.period = min(fleet.config.lease_seconds / RENEWALS_PER_LEASE, HEARTBEAT_SECONDS)
        self.assignment = NOTHING
        self.changed = threading.Event()
        self.server_ms = 0  # the Redis server's clock at the last tick
        self.unheld_marked: set[str] = set()  # hosts whose status says that no runtime follows them
        self.skipped: set[str] = set()  # registry ids that are not host ids, reported once each

    def run(self) -> None:
        while not self.fleet.stop.is_set():
            wait = self.period
            try:
                wait = self.tick()
            except redis.RedisError as error:  # the loop reports the outage; a missed tick is retried
                log.warning("leases_not_renewed error=%s", error)
            except Exception as error:  # noqa: BLE001 - the keeper must keep going
                log.exception("lease_tick_failed error=%r", error)
            self.fleet.stop.wait(wait)

    def tick(self) -> float:
        """Read the registry, renew and take leases; the seconds until the next tick."""
        fleet = self.fleet
        registry = fleet.client.hgetall(fleet.config.keys.hosts)
        hosts, skipped = schema.valid_host_ids(registry)
        fleet.metrics.hosts.labels(state="skipped").set(skipped)
        if skipped:
            self._report_skipped(set(registry) - set(hosts))
        if not hosts and self.assignment == NOTHING:  # the course's setup: one read, nothing to renew,
            return IDLE_PERIOD_SECONDS  # and read less often: the first host waits a little longer
        seconds, micros = fleet.client.time()
        self.server_ms = seconds * 1000 + micros // 1000
        hosts = self._without_silent(hosts, registry)
        assignment = fleet.leases.assign(hosts, heartbeat=fleet.health.alive)
        self._mark_unheld(assignment)
        if assignment.held != self.assignment.held:
            fleet.wake()  # the read in progress does not cover the new hosts
        if assignment != self.assignment:
            self.assignment = assignment
            self.changed.set()  # the fleet's loop, waiting while it has nothing to read, follows it now
        return self.period

    def _report_skipped(self, invalid: set[str]) -> None:
        """Log and count each id that cannot be a host once (not UTF-8, not a node name, reserved)."""
        for host in sorted(invalid - self.skipped):
            try:
                schema.validate_host_id(host)
            except ValueError as error:
                log.error("host_ignored host=%r error=%s", host, error)
            self.fleet.metrics.base.hosts_skipped.inc()
        self.skipped = invalid

    def _without_silent(self, hosts: list[str], registry: dict[str, str]) -> list[str]:
        """Forget the hosts silent for HOST_TTL (unless they registered again meanwhile)."""
        forgotten = set()
        for host in self.fleet.silent(self.server_ms):
            if self.fleet.leases.forget(host, registry.get(host, "")):
                forgotten.add(host)
                log.warning("host_dropped host=%s: no sample for HOST_TTL=%gs; it is followed again when its "
                            "collector publishes", host, self.fleet.config.host_ttl)
        if forgotten:
            self.fleet.leases.release_all(sorted(forgotten), announced=True)
        return [host for host in hosts if host not in forgotten]

    def _mark_unheld(self, assignment: Assignment) -> None:
        """Say in each waiting host's status why nothing handles its samples (once per host)."""
        waiting = set(assignment.unheld) if assignment.capped else set()
        pipe = self.fleet.client.pipeline(transaction=False)
        for host in waiting - self.unheld_marked:
            pipe.hset(self.fleet.config.keys.for_host(host).status, mapping={
                status.STATE: State.STALLED.value, status.PROBLEM: self.fleet.problem or (
                    f"no runtime replica has room for this host: each follows MAX_HOSTS="
                    f"{self.fleet.config.max_hosts}; add runtime replicas or raise MAX_HOSTS")})
        pipe.execute()
        self.unheld_marked = waiting
