"""Many hosts on one runtime: one blocking read over all their streams, one worker, a small state per host.

    assign   a keeper thread renews this replica's host leases and takes its fair share (fleetlease)
    read     one XREAD BLOCK over the streams of every host held, each after its own checkpoint
    call     each host's batch in the shared worker, in that host's own context (fleetpool)
    commit   each host's outputs, errors and checkpoint in the fenced commit script (commit.py)

Per host there is no thread, process or connection: a host is a loop.Runtime used only for its
checkpoint, commit and status pieces (its `handle()`), fed by this reader. A handler that times out
or crashes the worker costs that host's invocation; the other hosts restore their contexts from
their checkpoints before their next batch. Hosts silent for HOST_TTL are dropped and released.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import zlib
from typing import Any

import redis

from runtime import status
from runtime.config import BACKOFF_CAP_SECONDS, RuntimeConfig
from runtime.fleetcommit import CommitRound
from runtime.fleetkeeper import AssignmentKeeper
from runtime.fleetlease import Assignment, HostLeases
from runtime.fleetmetrics import FleetMetrics
from runtime.fleetpool import HostInvoker, Pool
from runtime.invoke import EnvLost
from runtime.keytypes import KeyTypeError, is_wrongtype
from runtime.lease import LeaseLost
from runtime.loop import Runtime
from runtime.observe import STALL_SECONDS, Health, Metrics
from runtime.reader import entry_sample, unblock
from runtime.status import State

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 0.1
BLOCKED_RECHECK_SECONDS = 10.0  # how often a host whose stream key has the wrong type is looked at again
ROUND_SAMPLES = 5000  # samples read in one round at most, shared among the hosts: bounds a backlog's memory
IDLE_WAIT_SECONDS = STALL_SECONDS / 2  # an idle loop's longest wait: well within what /healthz allows


def env_phase(name: str) -> float:
    """Where in the env period a host stores its env, in [0, 1): hosts adopted together spread their stores."""
    return zlib.crc32(name.encode()) % 1024 / 1024


@dataclasses.dataclass
class HostLease:
    """A host's lease as its Runtime sees it: held by the fleet's keeper; a fenced commit may drop it."""

    key: str
    holder: str
    held: bool = True

    def release(self) -> None:
        pass  # the keeper gives leases back


@dataclasses.dataclass
class Host:
    """One followed host: its runtime pieces, its stream, when it last spoke (server clock, ms)."""

    name: str
    runtime: Runtime
    invoker: HostInvoker
    stream: str
    last_seen_ms: int
    generation: int | None = None  # the shared worker's generation the host's context was adopted in


class Fleet:
    def __init__(self, config: RuntimeConfig, client: redis.Redis, stop: threading.Event, pool: Pool,
                 metrics: Metrics | None = None) -> None:
        self.config, self.client, self.stop, self.pool = config, client, stop, pool
        self.metrics = FleetMetrics(metrics or Metrics())
        self.health = Health(config.handler_timeout)
        self.leases = HostLeases(client, config.keys, config.lease_seconds, config.max_hosts)
        self.keeper = AssignmentKeeper(self)
        self.hosts: dict[str, Host] = {}
        self.by_stream: dict[str, Host] = {}
        self.rounds = CommitRound(client)
        self.blocked: dict[str, float] = {}  # host -> monotonic time to look at its stream's type again
        self.problem = ""  # what the fleet as a whole cannot do (shown by /readyz and logged once)
        self._blocking: redis.Redis | None = None  # a connection of its own for XREAD BLOCK, made at the first read
        self._blocking_id: int | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        """Follow the hosts assigned to this replica until `stop`; no failure of a step ends the loop."""
        threading.Thread(target=self._wake_on_stop, name="fleet-stop-waker", daemon=True).start()
        self.keeper.start()
        backoff = FIRST_BACKOFF_SECONDS
        try:
            while not self.stop.is_set():
                backoff = self._guarded_step(backoff)
        finally:
            self.pool.close()
            self._release_all()
            if self._blocking is not None:
                self._blocking.close()
        log.info("fleet_stopped hosts=%d", len(self.hosts))

    def _guarded_step(self, backoff: float) -> float:
        try:
            self._step()
            return FIRST_BACKOFF_SECONDS
        except redis.RedisError as error:
            self.health.ready = False
            self.health.progress()  # waiting for Redis is not a stall a restart would cure
            self._blocking_id = None
            log.warning("redis_unavailable url=%s error=%s retry_in=%.1fs", self.config.redis.safe_url(), error,
                        backoff)
        except Exception as error:  # a fault of the fleet's own: it must not end the loop
            log.exception("fleet_step_failed error=%r retry_in=%.1fs", error, backoff)
            self.metrics.base.loop_errors.inc()
            for host in self.hosts.values():
                host.runtime.invalidate()
        self.stop.wait(backoff)
        return min(backoff * 2, BACKOFF_CAP_SECONDS)

    def _wake_on_stop(self) -> None:
        self.stop.wait()
        self.wake()
        self.keeper.changed.set()

    def wake(self) -> None:
        """End a blocking read now (from another thread): new hosts, or a stop."""
        unblock(self.client, self._blocking_id)

    def _release_all(self) -> None:
        try:
            self.leases.release_all(list(self.hosts))
        except redis.RedisError as error:
            log.warning("leases_not_released error=%s: they lapse in %gs", error, self.config.lease_seconds)

    # --- one round ------------------------------------------------------------------------------

    def _step(self) -> None:
        self._follow(self.keeper.assignment)
        if not self.hosts:  # no worker until there is a host: the course's setup has none
            self.health.ready = True
            self.health.wait_idle(self.keeper.changed)  # until the keeper assigns a host, or a stop
            self.keeper.changed.clear()
            return
        if not self._function_ready():
            return
        streams = {host.stream: host.runtime.read_after().entry_id for host in self._ready_hosts()}
        self.health.ready = True
        if not streams:
            self._idle()
            return
        batches = [(self.by_stream[stream], [entry_sample(entry_id, fields) for entry_id, fields in entries])
                   for stream, entries in self._read(streams)]
        if batches:
            self._run_round(batches)
        self.health.progress()

    def _idle(self) -> None:
        """Nothing to read: wait for a new assignment, coming round often enough to stay alive for /healthz."""
        self.keeper.changed.wait(IDLE_WAIT_SECONDS)
        self.keeper.changed.clear()
        self.health.progress()

    def _function_ready(self) -> bool:
        if self.pool.refresh():
            self.metrics.base.function.info({"version": self.pool.version})
            log.info("fleet_function version=%s", self.pool.version)
        if self.pool.version is None:
            self.health.ready = False
            self.health.progress()
            self.stop.wait(min(self.config.interval, 2.0))
            return False
        return True

    def _ready_hosts(self) -> list[Host]:
        """Held hosts with their checkpoint adopted, except those whose stream has the wrong type."""
        ready = []
        for host in self.hosts.values():
            if not host.runtime.lease.held or self._blocked(host):
                continue
            if host.generation != self.pool.generation():  # the worker restarted: its context is gone
                host.runtime.invalidate()
            if self._resumed(host):
                host.generation = self.pool.generation()
                ready.append(host)
        # A later host's replay that hung restarted the worker: the contexts restored before it are gone.
        for host in [host for host in ready if host.generation != self.pool.generation()]:
            host.runtime.invalidate()
            ready.remove(host)
        self.by_stream = {host.stream: host for host in ready}
        return ready

    def _resumed(self, host: Host) -> bool:
        """Adopt the host's checkpoint now (its status says running); False when that failed (recorded)."""
        try:
            host.runtime.resume()
            self.health.progress()
            return True
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except EnvLost as lost:
            self._worker_lost(host, lost)
        except Exception as error:  # its keys or checkpoint: that host waits, the others go on
            self._host_failed(host, error)
        return False

    def _read(self, streams: dict[str, str]) -> list[Any]:
        if self._blocking is None:
            self._blocking = redis.Redis(connection_pool=self.client.connection_pool, single_connection_client=True)
        if self._blocking_id is None:
            self._blocking_id = self._blocking.client_id()
        try:
            count = max(1, min(self.config.batch_size, ROUND_SAMPLES // len(streams)))
            return self._blocking.xread(streams, count=count, block=int(self.config.block_seconds * 1000)) or []
        except redis.ResponseError as error:
            if not is_wrongtype(error):
                raise
            self._find_wrong_types(list(streams))
            return []
        except redis.ConnectionError:
            self._blocking_id = None  # a new connection has another id
            raise

    def _find_wrong_types(self, streams: list[str]) -> None:
        """One host's input stream is not a stream: set that host aside (it says why), not the others."""
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            pipe.type(stream)
        for stream, found in zip(streams, pipe.execute()):
            if found not in ("stream", "none"):
                host = self.by_stream[stream]
                self._host_failed(host, KeyTypeError(stream, found, "stream"))
                self.blocked[host.name] = time.monotonic() + BLOCKED_RECHECK_SECONDS

    def _blocked(self, host: Host) -> bool:
        recheck_at = self.blocked.get(host.name)
        if recheck_at is None:
            return False
        if time.monotonic() < recheck_at:
            return True
        del self.blocked[host.name]  # look again: XREAD says whether it is still wrong
        return False

    # --- one round: every host's batch sent to the worker at once, every commit in one pipeline ---

    def _run_round(self, batches: list[tuple[Host, list]]) -> None:
        """Call and commit the round's batches; a host whose context or commit failed re-reads its checkpoint."""
        try:
            presented = self._present(batches)
        except EnvLost as lost:  # the worker died idle: no batch's fault; everyone restores next round
            self._worker_lost(batches[0][0], lost)
            return
        generation = self.pool.generation()
        self.rounds.open()
        # The presented first, in the order sent; the others after them (their own message, their own replies).
        batches = sorted(batches, key=lambda item: item[0].name not in presented)
        try:
            for host, batch in batches:
                if self.pool.generation() != generation:  # a host's invocation restarted the worker
                    host.invoker.presented = None
                    host.runtime.invalidate()
                    continue
                self._handle(host, batch, presented.get(host.name))
            failed = self.rounds.send()
        except BaseException:
            self.rounds.abandon()
            for host, _ in batches:  # what was stored is unknown: re-read it
                host.runtime.invalidate()
            raise
        for name, problem in failed:
            if name in self.hosts:
                self._commit_refused(self.hosts[name], problem)

    def _present(self, batches: list[tuple[Host, list]]) -> dict[str, bool]:
        """Send every host's batch to the worker before reading any reply; with_env of each host sent."""
        if not self.pool.pipelined:
            return {}
        sent = [(host, batch, host.runtime.env_due(batch)) for host, batch in batches
                if not host.runtime.lost]  # a sample that did not return before: the loop's own path handles it
        if sent:
            self.pool.present([(host.invoker, [sample.request() for sample in batch], with_env)
                               for host, batch, with_env in sent])
        return {host.name: with_env for host, _, with_env in sent}

    def _commit_refused(self, host: Host, problem: Exception) -> None:
        if isinstance(problem, LeaseLost):  # another replica has it now: it re-runs from the checkpoint
            log.warning("commit_dropped host=%s reason=%s", host.name, problem)
            host.runtime.lease.held = False
            host.runtime.invalidate()
        else:
            self._host_failed(host, problem)

    # --- one host's batch -----------------------------------------------------------------------

    def _handle(self, host: Host, batch: list, with_env: bool | None) -> None:
        """Call and commit one host's batch; whatever fails costs this host's batch, not the others'."""
        self.health.calling(True)
        try:
            host.runtime.handle(batch, with_env)
            host.last_seen_ms = batch[-1].cursor.millis
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except EnvLost as lost:  # the shared worker died idle: every context is gone, this host says so
            self._worker_lost(host, lost)
        except Exception as error:  # its keys, its checkpoint, the runtime's own fault at this host
            self._host_failed(host, error)
        finally:
            self.health.calling(False)
            self.health.progress()  # a round of many hosts is many steps: liveness sees each
            if host.invoker.presented is not None:  # sent but not read: its context ran what was not committed
                host.invoker.presented = None
                host.runtime.invalidate()

    def _worker_lost(self, host: Host, lost: EnvLost) -> None:
        log.warning("worker_lost host=%s error=%s; every host restores from its checkpoint", host.name, lost)
        self.metrics.base.errors.labels(fault=lost.error["fault"]).inc()
        host.runtime.status.store_error(lost.error)
        for other in self.hosts.values():
            other.runtime.invalidate()

    def _host_failed(self, host: Host, error: Exception) -> None:
        if isinstance(error, KeyTypeError):
            log.error("host_stalled host=%s problem=%s", host.name, error)
        else:
            log.exception("host_step_failed host=%s error=%r", host.name, error)
            self.metrics.base.loop_errors.inc()
        problem = f"{type(error).__name__}: {error}" if not isinstance(error, KeyTypeError) else str(error)
        try:
            host.runtime.status.set(State.STALLED, problem=problem[:status.ERROR_MESSAGE_MAX])
        except redis.RedisError:
            pass
        host.runtime.invalidate()

    # --- following and dropping hosts -------------------------------------------------------------

    def _follow(self, assignment: Assignment) -> None:
        """Adopt the hosts newly assigned to us, drop the others, say when some cannot be followed at all."""
        for name in [name for name in self.hosts if name not in assignment.held]:
            self._drop(name)
        for name in sorted(assignment.held - set(self.hosts)):
            self.hosts[name] = self._adopt(name)
        for host in self.hosts.values():
            if not host.runtime.lease.held:  # a commit found it taken; the keeper has it back for us
                host.runtime.lease.held = True
                host.runtime.invalidate()
        self._report(assignment)

    def _adopt(self, name: str) -> Host:
        keys = self.config.keys.for_host(name)
        invoker = HostInvoker(self.pool, name, {"input_key": keys.input, "output_key": keys.output})
        config = dataclasses.replace(self.config, keys=keys,
                                     env_checkpoint_seconds=self.config.host_env_checkpoint_seconds)
        runtime = Runtime(config, self.client, self.stop, invoker,  # type: ignore[arg-type]
                          metrics=self.metrics.for_host(name))
        runtime.lease = HostLease(keys.lease, self.leases.holder)
        runtime.committer._script = self.rounds.script(runtime.committer._script, name)  # noqa: SLF001
        runtime.health = self.health
        runtime.env_first_due_in(config.env_checkpoint_seconds * env_phase(name))
        log.info("host_followed host=%s output=%s", name, keys.output)
        return Host(name, runtime, invoker, keys.input_stream, self.keeper.server_ms)

    def _drop(self, name: str) -> None:
        """Forget a host no longer ours (or silent): its context, its series; the keeper gave its lease back."""
        host = self.hosts.pop(name)
        self.blocked.pop(name, None)
        self.metrics.drop(name)
        try:
            host.invoker.close()
        except Exception as error:  # noqa: BLE001 - a dead worker holds no context to drop
            log.debug("context_not_dropped host=%s error=%r", name, error)
        log.info("host_released host=%s", name)

    def _report(self, assignment: Assignment) -> None:
        problem = ""
        if assignment.capped and assignment.unheld:
            problem = (f"{len(assignment.unheld)} hosts are followed by no runtime: every replica follows "
                       f"MAX_HOSTS={self.config.max_hosts}; add runtime replicas or raise MAX_HOSTS")
        if problem != self.problem:
            (log.error if problem else log.info)("fleet_hosts %s", problem or "every host is followed")
        self.problem = problem
        self.metrics.hosts.labels(state="held").set(len(self.hosts))
        self.metrics.hosts.labels(state="unheld").set(len(assignment.unheld))

    def silent(self, now_ms: int) -> list[str]:
        """The hosts held whose last sample is older than HOST_TTL (server clock)."""
        limit = now_ms - int(self.config.host_ttl * 1000)
        return [host.name for host in list(self.hosts.values()) if host.last_seen_ms < limit]

    def describe(self) -> str:
        if self.problem:
            return self.problem
        if self.pool.version is None:
            return f"no function loaded ({self.pool.error or 'loading'})"
        return "starting"
