"""The runtime loop: wait for the next samples, call the handler on each, commit the effects at once.

    read   the input stream after the checkpoint's cursor (XREAD BLOCK), or poll the plain key
    call   handler(input, context) for each sample, every fault becoming an error record
    commit outputs, output-stream entries, error records, checkpoint (cursor, env) and status
           in one server-side script that applies all of them or none

After a restart the loop resumes at the committed cursor with the committed `context.env`, so every
sample is handled exactly once. An invocation that hangs or kills its worker is recorded, and the
batch is read again from the checkpoint in a fresh worker. Redis going away costs a wait, never a
sample; any other failure of a step is logged, counted and shown in the status, and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from runtime import keytypes, status
from runtime.checkpoint import Checkpoint, CheckpointStore, MemoryCheckpoints
from runtime.commit import Committer, Done, Effects, MemoryCommitter, effects_of, last_execution, oldest_lag
from runtime.config import BACKOFF_CAP_SECONDS, RuntimeConfig
from runtime.cursor import StreamCursor
from runtime.faults import Fault, record
from runtime.invoke import EnvLost, FunctionSettings, InProcess, InvocationLost, Invoker, Outcome
from runtime.keytypes import KeyTypeError
from runtime.lease import Lease, LeaseKeeper, LeaseLost, LeaseUnavailable, NoLease
from runtime.observe import Health, Metrics
from runtime.reader import Reader, Sample
from runtime.rewind import rewind
from runtime.status import State
from runtime.statuswriter import NullStatus, StatusWriter
from runtime.worker import Worker

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 0.1


class Runtime:
    def __init__(self, config: RuntimeConfig, client: redis.Redis, stop: threading.Event,
                 invoker: Invoker | None = None, metrics: Metrics | None = None) -> None:
        self.config, self.client, self.stop = config, client, stop
        self.invoker = invoker or make_invoker(config)
        self.metrics = metrics or Metrics()
        self.health = Health(config.handler_timeout)
        self.reader = Reader(client, config.keys, stop, config.interval, config.batch_size, config.block_seconds,
                             config.start_from_earliest)
        if config.keys.output:
            self.status, self.checkpoints = StatusWriter(client, config.keys), CheckpointStore(client, config.keys)
            self.committer = Committer(client, config.keys, config.retention_seconds)
            self.lease = Lease(client, config.keys.lease, config.lease_seconds)
        else:  # the course's "no output key": the handler runs, nothing is stored
            self.checkpoints = MemoryCheckpoints()
            self.status, self.committer, self.lease = NullStatus(), MemoryCommitter(self.checkpoints), NoLease()
        self._lease_problem_shown: str | None = None
        self.keeper = LeaseKeeper(self.lease, stop, self._heartbeat, self._lease_problem)
        self.committed = Checkpoint()
        self.lost: dict[object, dict[str, Any]] = {}  # cursor -> error of an invocation that did not return
        self._restored = False
        self._reported_load_error: str | None = None
        self._env_due_at = 0.0  # monotonic time from which the next commit stores the env

    @property
    def ready(self) -> bool:
        return self.health.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.health.ready = value
        self.metrics.ready.set(1 if value else 0)

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        """Process samples until `stop` is set; no failure of a step ends the loop."""
        if not self.config.keys.output:
            log.warning("no REDIS_OUTPUT_KEY: the handler runs on every sample but nothing is stored")
        threading.Thread(target=self._wake_on_stop, name="stop-waker", daemon=True).start()
        self.keeper.tick()
        self.keeper.start()
        backoff = FIRST_BACKOFF_SECONDS
        try:
            while not self.stop.is_set():
                try:
                    backoff = self._guarded_step(backoff)
                except Exception:  # handling a failure failed too (Redis refused the error record): go on
                    log.exception("recovery_failed retry_in=%.1fs", backoff)
                    self._restored = False
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_CAP_SECONDS)
            if self.lease.held:
                self.status.set(State.STOPPED)
        finally:
            self.invoker.close()
            self._release_lease()
            self.reader.close()
        log.info("stopped cursor=%s", self.committed.cursor and self.committed.cursor.text())

    def _guarded_step(self, backoff: float) -> float:
        """One step; on any failure: log, count, say so in the status, back off. The next backoff."""
        try:
            self._step()
            return FIRST_BACKOFF_SECONDS
        except EnvLost as lost:  # the worker died between batches: no sample's fault, rewind to the checkpoint
            log.warning("env_lost error=%s; rewinding to the checkpoint", lost)
            self._restored = False
            self.metrics.errors.labels(fault=lost.error["fault"]).inc()
            self.status.store_error(lost.error)
            return FIRST_BACKOFF_SECONDS
        except (KeyTypeError, LeaseUnavailable) as error:  # it needs an operator: say what and where
            self._stalled(str(error), backoff)
        except redis.RedisError as error:  # unreachable, restarting, out of memory, read-only, a wrong-type key
            self.ready = False
            if isinstance(error, redis.ResponseError) and keytypes.is_wrongtype(error):
                self._stalled(f"a key the runtime uses has the wrong type ({error}); {keytypes.FIX}", backoff)
            else:
                self.health.progress()  # waiting for Redis is not a stall a restart would cure
                log.warning("redis_unavailable url=%s error=%s retry_in=%.1fs", self.config.redis.safe_url(), error,
                            backoff)
        except Exception as error:  # a fault of the runtime's own: it must not end the loop
            log.exception("step_failed error=%r retry_in=%.1fs", error, backoff)
            self.metrics.loop_errors.inc()
            self.status.set(State.STALLED, problem=f"{type(error).__name__}: {error}"[:status.ERROR_MESSAGE_MAX])
            self.invoker.close()  # a fresh worker from the last commit
        self._restored = False  # what is stored is the truth: re-read it before going on
        self.stop.wait(backoff)
        return min(backoff * 2, BACKOFF_CAP_SECONDS)

    def _stalled(self, problem: str, backoff: float) -> None:
        self.ready = False
        log.error("stalled problem=%s retry_in=%.1fs", problem, backoff)
        self.status.set(State.STALLED, problem=problem)

    def _step(self) -> None:
        self.reader.mark_start()  # samples published from now on are ours, however long the worker takes to start
        if not self._active():
            return
        if not self._function_ready():
            return
        if not self._restored:
            self._restore()  # after the function loaded: the samples since the stored env run again
        self.ready = True
        batch = self.reader.next_batch(self.committed.cursor)
        self.status.set(mode=self.reader.mode)
        if batch:
            self._function_ready()  # an edit made while we waited for samples applies to them
            # A sample lost before is committed with the env: a replay from an older env would run it again.
            with_env = self.env_due(batch)
            done = self._invoke(batch, with_env)
            if done:
                self._commit(done, with_env)
        self.health.progress()

    def _active(self) -> bool:
        """Whether we hold the lease; a standby keeps its function loaded, so a takeover is quick."""
        if self.lease.held:
            return True
        if self.keeper.problem:
            self.client.ping()  # unreachable: an outage; else Redis refuses the lease itself
            raise LeaseUnavailable(self.keeper.problem)
        self._restored = False  # when our turn comes, start from the active one's checkpoint
        self.invoker.refresh()
        self.ready = self.invoker.version is not None
        self.health.progress()
        self.keeper.changed.wait(self.keeper.period)
        self.keeper.changed.clear()
        return False

    def _heartbeat(self) -> tuple[str, dict[str, str]] | None:
        """What the lease keeper writes with each renewal: the heartbeat, while the loop makes progress."""
        return (self.config.keys.status, self.status.heartbeat()) if self.health.alive else None

    def _lease_problem(self, problem: str | None) -> None:
        """The keeper cannot take or renew the lease (stalled, with why), or can again: take that back, or a
        standby's status would say stalled for as long as no commit of the holder's overwrites it."""
        if problem:
            self.status.set(State.STALLED, problem=problem)
        elif self._lease_problem_shown and self.status.problem == self._lease_problem_shown:
            self.status.set(State.RUNNING, problem="")
        self._lease_problem_shown = problem

    def _wake_on_stop(self) -> None:
        self.stop.wait()
        self.reader.wake()
        self.keeper.changed.set()

    def _release_lease(self) -> None:
        """Hand over at once on a clean stop, instead of letting the standby wait for the lease to lapse."""
        try:
            self.lease.release()
        except redis.RedisError:
            pass

    def _restore(self) -> None:
        """Adopt the stored checkpoint and roll the env back to it: after a start, a failure, a takeover."""
        self.client.ping()
        stored = self.checkpoints.load()
        if stored.cursor is None and self.committed.cursor is not None:  # deleted (say, as a wrong-type key)
            log.warning("checkpoint_missing key=%s: going on from the one this runtime committed last",
                        self.config.keys.state if self.config.keys.output else "-")
            stored = self.committed
        if stored.cursor != self.committed.cursor or self.status.problem:
            log.info("resumed cursor=%s", stored.cursor and stored.cursor.text())
        self.committed = stored
        rewind(self.invoker, stored, self.client, self.config.keys)
        self._restored = True
        self.status.started()
        self.status.set(State.RUNNING, problem="")
        self._check_gap()

    def _check_gap(self) -> None:
        """Say so when Redis trimmed samples this runtime had not read: they cannot be run any more."""
        gap = self.reader.trimmed_after(self.committed.cursor)
        if gap:
            self.metrics.gaps.inc()
            self.status.write({status.LAST_GAP: gap})

    def _function_ready(self) -> bool:
        """Load or reload the function; while none has ever loaded, wait and report why."""
        if self.invoker.refresh():
            self.metrics.function.info({"version": self.invoker.version})
            self.status.write({status.FUNCTION_VERSION: self.invoker.version, status.FUNCTION_ERROR: ""})
        if self.invoker.error and self.invoker.error != self._reported_load_error:
            error = record(Fault.FUNCTION_LOAD, self.invoker.error, None, None)
            log.error("error fault=%s message=%s", error["fault"], error["message"])
            self.metrics.errors.labels(fault=error["fault"]).inc()
            if self.invoker.version is None:  # the state first: readers see it with the error
                self.status.set(State.FUNCTION_ERROR)
            self.status.store_error(error)
        self._reported_load_error = self.invoker.error
        if self.invoker.version is None:
            self.ready = False
            self.status.set(State.FUNCTION_ERROR)
            self.health.progress()
            self.stop.wait(min(self.config.interval, 2.0))
            return False
        return True

    # --- call -----------------------------------------------------------------------------------

    def _env_due(self, last: Sample) -> bool:
        """Store the env with this commit? Every ENV_CHECKPOINT_SECONDS, and whenever there is no stream to replay."""
        stored_at = self.committed.env_cursor or self.committed.cursor
        return (time.monotonic() >= self._env_due_at or not isinstance(last.cursor, StreamCursor)
                or not isinstance(stored_at, StreamCursor))

    def _invoke(self, batch: list[Sample], with_env: bool) -> Done | None:
        """Run the batch up to a sample lost before (recorded, not run again); None when one is lost now."""
        if batch[0].cursor in self.lost:  # it hung or killed its worker before: recorded, not run again
            error = self.lost.pop(batch[0].cursor)
            return [(batch[0], Outcome(timestamp=error["sample_timestamp"] or None, error=error))]
        run = batch[:next((i for i, s in enumerate(batch) if s.cursor in self.lost), len(batch))]
        done: Done = []
        self.health.calling(True)
        try:
            for sample, outcome in zip(run, self.invoker.invoke_batch([s.request() for s in run], with_env)):
                self.metrics.duration.observe(outcome.duration)
                done.append((sample, outcome))
        except InvocationLost as lost:  # the samples before the lost one run again from the checkpoint
            self._forget_batch(run[lost.index if lost.index is not None else len(done)], lost.error)
            return None
        except EnvLost:  # the worker was found dead as the batch went out: no sample's fault, rewind
            raise
        except Exception as error:  # the runtime's side failed at this sample: record it, skip it next time
            self._forget_batch(run[len(done)], record(Fault.WORKER_DIED, f"the runtime failed while this sample "
                                                      f"ran: {type(error).__name__}: {error}", None, None))
            raise
        finally:
            self.health.calling(False)
        return done

    def _forget_batch(self, sample: Sample, error: dict[str, Any]) -> None:
        """The env of this batch is gone: re-read it from the checkpoint, this sample recorded."""
        error.update(sample_id=sample.cursor.entry_id or "", sample_timestamp=error.get("sample_timestamp") or "")
        self.lost[sample.cursor] = error
        log.warning("invocation_lost sample=%s fault=%s error=%s; re-reading from cursor=%s", sample.cursor.text(),
                    error["fault"], error["message"], self.committed.cursor and self.committed.cursor.text())
        self._restored = False  # the next step restarts the worker, then rewinds it to the checkpoint

    # --- commit ---------------------------------------------------------------------------------

    def _commit(self, done: Done, with_env: bool) -> None:
        """Store the batch's outputs, errors, checkpoint and status in one script: all or nothing."""
        checkpoint = self._checkpoint_after(done, with_env)
        lag = oldest_lag(done)
        last_sample, last = done[-1]
        effects = effects_of(done, self.status.of_commit(last_sample.cursor.entry_id, last.timestamp, last.duration,
                                                         checkpoint.last_execution, checkpoint.env_error, lag,
                                                         self.invoker.version))
        # Our own lease is renewed by the commit too; a host's lease is the fleet keeper's to renew or let go.
        renew_ms = self.lease.millis if isinstance(self.lease, Lease) else 0
        sent = time.monotonic()
        try:
            self.committer.commit(self.lease.holder, checkpoint, effects, with_env, renew_ms)
        except LeaseLost as lost:  # a standby took over while we worked: it re-runs from the checkpoint
            log.warning("commit_dropped cursor=%s reason=%s", checkpoint.cursor.text(), lost)
            self.lease.held = False
            self._restored = False
            return
        self.committed = checkpoint
        if renew_ms:
            self.keeper.renewed_by_commit(sent)
        if with_env:
            self._env_due_at = next_due(self._env_due_at, self.config.env_checkpoint_seconds, time.monotonic())
        self._account(done, effects, lag)

    def _checkpoint_after(self, done: Done, with_env: bool) -> Checkpoint:
        """The checkpoint of a batch: with the env after it, or keeping the stored env (and where it was taken)."""
        cursor, executed = done[-1][0].cursor, last_execution(done, self.committed.last_execution)
        if not with_env:
            stored = self.committed
            return Checkpoint(cursor, stored.env_text, executed, stored.env_cursor or stored.cursor, stored.env_error)
        env = done[-1][1].env or self.invoker.env_data()
        return Checkpoint(cursor, env.text, executed, env_error=env.error)

    def _account(self, done: Done, effects: Effects, lag: float | None) -> None:
        """Metrics and log lines of a committed batch."""
        self.metrics.invocations.inc(len(done))
        if lag is not None:
            self.metrics.lag.observe(max(lag, 0.0))
        for error in effects.errors:
            self.metrics.errors.labels(fault=error["fault"]).inc()
            log.warning("invocation_failed sample=%s fault=%s error=%s", error["sample_id"] or "-", error["fault"],
                        error["message"])
        log.info("committed samples=%d cursor=%s errors=%d lag_s=%s", len(done), done[-1][0].cursor.text(),
                 len(effects.errors), "?" if lag is None else f"{lag:.3f}")

    # --- batches read elsewhere: the fleet reads many hosts' streams in one XREAD ----------------------

    def handle(self, batch: list[Sample], with_env: bool | None = None) -> None:
        """Call and commit a batch read after `read_after()`; restores from the checkpoint first if needed."""
        self.resume()
        with_env = self.env_due(batch) if with_env is None else with_env
        done = self._invoke(batch, with_env)
        if done:
            self._commit(done, with_env)

    def env_first_due_in(self, seconds: float) -> None:
        """Store the env first `seconds` from now (a new host's first commit stores it anyway), then in step."""
        self._env_due_at = time.monotonic() + seconds

    def env_due(self, batch: list[Sample]) -> bool:
        """Whether the commit of this batch stores the env: ENV_CHECKPOINT_SECONDS, or a sample lost before."""
        return self._env_due(batch[-1]) or batch[0].cursor in self.lost

    def resume(self) -> None:
        """Adopt the stored checkpoint unless already done since the last `invalidate()`."""
        if not self._restored:
            self._restore()

    def invalidate(self) -> None:
        """Re-read the checkpoint before the next batch: the env in the invoker is gone or not ours."""
        self._restored = False

    def read_after(self) -> StreamCursor:
        """The stream position the next batch starts after (resume() first)."""
        if isinstance(self.committed.cursor, StreamCursor):
            return self.committed.cursor
        if self.reader.started_ms is None:
            seconds, micros = self.client.time()
            self.reader.started_ms = seconds * 1000 + micros // 1000
        return self.reader._start_cursor(self.committed.cursor)  # noqa: SLF001 - the same rule as reading alone

    def describe(self) -> str:
        """Why the runtime is not ready, for /readyz."""
        if self.status.problem:
            return self.status.problem
        if self.invoker.version is None:
            return f"no function loaded ({self.invoker.error or 'loading'})"
        return "Redis unreachable" if not self._restored else "starting"


# --- helpers ------------------------------------------------------------------------------------

def next_due(due: float, period: float, now: float) -> float:
    """The env's next store: whole periods on from the last due time, not from when the commit came.

    A commit comes late by however long its round took; counting the period from then would let hosts
    whose stores were spread apart drift into the same rounds, and one round carry every host's env.
    """
    if period <= 0:
        return now
    if due > now:  # stored before it was due (a host's first commit): the phase stays
        return due
    return due + (int((now - due) // period) + 1) * period


def make_invoker(config: RuntimeConfig, extra_paths: list[str] | None = None) -> InProcess | Worker:
    """A worker process with a hard timeout, or (HANDLER_TIMEOUT=0) calls in this process."""
    settings = FunctionSettings(
        path=config.function_path, handler=config.handler_name, unpack_dir=config.work_dir / "functions",
        output_max_bytes=config.output_max_bytes, memory_mb=config.handler_memory_mb,
        context_fields={"host": config.redis.host, "port": config.redis.port,
                        "input_key": config.keys.input, "output_key": config.keys.output})
    if config.handler_timeout > 0:
        return Worker(settings, config.handler_timeout, extra_paths)
    if config.handler_memory_mb:
        log.warning("HANDLER_MEMORY_MB needs the worker process: it is ignored with HANDLER_TIMEOUT=0")
    return InProcess(settings)
