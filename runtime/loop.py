"""The runtime loop: wait for the next samples, call the handler on each, commit the effects at once.

    read   the input stream from the checkpoint's cursor (XREAD BLOCK), or poll the plain key
    call   handler(input, context) for each sample, every fault becoming an error record
    commit output SET + output-stream entries + error records + checkpoint (cursor, env) + status
           in one MULTI/EXEC, so a crash at any point leaves either all of a batch or none of it

After a restart the loop resumes at the committed cursor with the committed `context.env`, so every
sample is handled exactly once. An invocation that hangs or kills its worker is recorded, and the
batch is read again from the checkpoint in a fresh worker. Redis going away costs a wait, never a
sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import redis

from runtime import envcodec, schema
from runtime.config import BACKOFF_CAP_SECONDS, BLOCK_SECONDS, ERRORS_KEPT, ConfigError, RuntimeConfig
from runtime.config import configure_logging, connect
from runtime.faults import Fault, record
from runtime.invoke import EMPTY_ENV, FunctionSettings, InProcess, InvocationLost, Invoker, Outcome, Request
from runtime.lease import Lease, LeaseLost
from runtime.observe import Health, Metrics, serve
from runtime.requirements import RequirementsError, install
from runtime.worker import Worker

log = logging.getLogger("runtime")

POLL_PREFIX = "poll:"  # cursor of the polling mode: a digest of the last value handled
HEARTBEAT_SECONDS = 2.0
POLL_HANDOVER_SEARCH = 1000  # newest stream entries searched for the value polled last


@dataclass
class Sample:
    cursor: str  # stream entry id, or POLL_PREFIX + digest of the value
    raw: str | None  # the JSON text; None when the stream entry carried none
    problem: str | None = None  # why the entry is unusable, when raw is None

    @property
    def entry_id(self) -> str | None:
        return None if self.cursor.startswith(POLL_PREFIX) else self.cursor


@dataclass
class Checkpoint:
    cursor: str | None = None
    env_data: str | None = EMPTY_ENV  # the env as committed (envcodec JSON text); None when not durable
    last_execution: datetime | None = None


class Runtime:
    def __init__(self, config: RuntimeConfig, client: redis.Redis, stop: threading.Event,
                 invoker: Invoker | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.keys = config.keys
        self.client = client
        self.stop = stop
        self.invoker = invoker or make_invoker(config)
        self.committed = Checkpoint()
        self.lease = Lease(client, self.keys.lease, config.lease_seconds) if self.keys.output else None
        self.metrics = metrics or Metrics()
        self.health = Health()
        self.stream_mode = False
        self.lost: dict[str, dict[str, Any]] = {}  # cursor -> error of an invocation that did not return
        self._pending: str | None = None  # cursor of a commit whose outcome is unknown
        self._restored = False
        self._started_ms: int | None = None
        self._reported_load_error: str | None = None
        self._last_heartbeat = 0.0

    @property
    def ready(self) -> bool:
        return self.health.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.health.ready = value
        self.metrics.ready.set(1 if value else 0)

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        """Process samples until `stop` is set; Redis outages are waited out."""
        if not self.keys.output:
            log.warning("no REDIS_OUTPUT_KEY: the handler runs on every sample but nothing is stored")
        backoff = 0.1
        try:
            while not self.stop.is_set():
                self.health.beat()
                try:
                    self._step()
                    backoff = 0.1
                except redis.RedisError as error:  # unreachable, restarting, out of memory, wrong key type
                    self.ready = False
                    self._restored = False
                    log.warning("redis_unavailable url=%s error=%s retry_in=%.1fs", self.config.redis.safe_url(),
                                error, backoff)  # unreachable, or refusing writes (out of memory, read-only)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_CAP_SECONDS)
            if self.lease is None or self.lease.held:
                self._write_status({"state": "stopped"})
        finally:
            self.invoker.close()
            self._release_lease()
        log.info("stopped cursor=%s", self.committed.cursor)

    def _step(self) -> None:
        if self.lease is not None and not self.lease.hold():
            self._forget_state()  # when our turn comes, start from the active one's checkpoint
            self.invoker.refresh()  # standby: the function loaded and ready, so a takeover is quick
            self.ready = self.invoker.version is not None
            self.stop.wait(self.lease.millis / 3000)
            return
        if not self._restored:
            self._restore()
        if not self._function_ready():
            return
        self.ready = True
        batch = self._next_batch()
        if not batch:
            self._heartbeat()
            return
        self._function_ready()  # an edit made while we waited for samples applies to them
        done = self._invoke(batch)
        if done is not None:
            self._commit(done)

    def _forget_state(self) -> None:
        """Not the active runtime: whatever we hold may be stale; the stored checkpoint is the truth."""
        self._restored = False
        self.committed = Checkpoint()

    def _release_lease(self) -> None:
        """Hand over at once on a clean stop, instead of letting the standby wait for the lease to lapse."""
        try:
            if self.lease is not None:
                self.lease.release()
        except redis.RedisError:
            pass

    def _forget_batch(self, sample: Sample, error: dict[str, Any]) -> None:
        """The worker is gone with the env of this batch: re-read it from the checkpoint, this sample recorded."""
        self.lost[sample.cursor] = error
        log.warning("invocation_lost sample=%s fault=%s error=%s; re-reading from cursor=%s",
                    sample.entry_id or sample.cursor, error["fault"], error["message"], self.committed.cursor)
        self.invoker.restore(self.committed.env_data, self.committed.last_execution)

    def _restore(self) -> None:
        """Adopt the stored checkpoint (first start), or settle an unconfirmed commit (after an outage)."""
        self.client.ping()
        if self._started_ms is None:
            seconds, micros = self.client.time()  # the server's clock, the one stream ids come from
            self._started_ms = seconds * 1000 + micros // 1000
        stored = self._load_checkpoint()
        pending, self._pending = self._pending, None
        if pending is not None and stored.cursor == pending:
            self.committed = Checkpoint(pending, stored.env_data, stored.last_execution)  # it landed
        elif pending is not None:
            log.info("commit_lost cursor=%s: re-running from %s", pending, self.committed.cursor)
            self._restore_env(self.committed)
        elif self.committed.cursor is None or stored.cursor not in (None, self.committed.cursor):
            self.committed = stored
            self._restore_env(stored)
            log.info("resumed cursor=%s", stored.cursor)
        self._restored = True
        self._write_status({"state": "running", "pid": str(os.getpid()), "started": _now()}, force=True)
        self._check_gap()

    def _check_gap(self) -> None:
        """Say so when Redis may have trimmed samples this runtime had not read: they cannot be run any more.

        Retention trims by age, so when even the oldest kept sample is newer than the checkpoint, the
        samples published after the checkpoint up to it are gone (unless the stream was idle there).
        """
        cursor = self.committed.cursor
        if not cursor or cursor.startswith(POLL_PREFIX):
            return
        oldest = self.client.xrange(self.keys.input_stream, count=1)
        if oldest and _id_order(oldest[0][0]) > _id_order(cursor):
            self.metrics.gaps.inc()
            log.error("samples_skipped after=%s before=%s: the stream was trimmed past the checkpoint while the "
                      "runtime was away; raise RETENTION_SECONDS or keep the runtime running", cursor, oldest[0][0])
            self._write_status({"last_gap": f"after {cursor}, before {oldest[0][0]}"})

    def _restore_env(self, checkpoint: Checkpoint) -> None:
        if checkpoint.env_data is None:  # kept in memory only: what is there is the best there is
            log.warning("env_not_restored cursor=%s: the env is not durable, so it is not rolled back",
                        checkpoint.cursor)
            return
        self.invoker.restore(checkpoint.env_data, checkpoint.last_execution)

    def _load_checkpoint(self) -> Checkpoint:
        if not self.keys.output:
            return self.committed
        text = self.client.get(self.keys.state)
        if text is None:
            return Checkpoint()
        try:
            state = json.loads(text)
            env = state.get("env")
            checkpoint = Checkpoint(cursor=state.get("cursor"), env_data=None if env is None else json.dumps(env))
            if state.get("last_execution"):
                checkpoint.last_execution = datetime.fromisoformat(state["last_execution"])
            if env is not None:
                envcodec.decode(env)  # refuse it here, not in the worker
        except (ValueError, TypeError, AttributeError) as error:
            log.error("checkpoint_unreadable key=%s error=%s; starting without it", self.keys.state, error)
            return Checkpoint()
        return checkpoint

    def _function_ready(self) -> bool:
        """Load or reload the function; while none has ever loaded, wait and report why."""
        if self.invoker.refresh():
            self.metrics.function.info({"version": self.invoker.version})
            self._write_status({"function_version": self.invoker.version, "function_error": ""}, force=True)
        if self.invoker.error and self.invoker.error != self._reported_load_error:
            self._store_error(record(Fault.FUNCTION_LOAD, self.invoker.error, None, None))
        self._reported_load_error = self.invoker.error
        if self.invoker.version is None:
            self.ready = False
            self._write_status({"state": "function_error"})
            self.stop.wait(min(self.config.interval, 2.0))
            return False
        return True

    # --- read -----------------------------------------------------------------------------------

    def _next_batch(self) -> list[Sample]:
        if self.stream_mode or self.client.exists(self.keys.input_stream):
            if not self.stream_mode:
                log.info("mode=stream key=%s", self.keys.input_stream)
            self.stream_mode = True
            return self._read_stream()
        return self._poll()

    def _read_stream(self) -> list[Sample]:
        cursor = self.committed.cursor
        if cursor is None or cursor.startswith(POLL_PREFIX):
            cursor = self._start_cursor()
        reply = self.client.xread({self.keys.input_stream: cursor}, count=self.config.batch_size,
                                  block=int(BLOCK_SECONDS * 1000))
        if not reply:
            if not self.client.exists(self.keys.input_stream):
                self.stream_mode = False
                log.info("mode=poll key=%s (the stream is gone)", self.keys.input)
            return []
        samples = []
        for entry_id, fields in reply[0][1]:
            try:
                samples.append(Sample(entry_id, schema.entry_payload(fields)))
            except schema.SampleError as error:
                samples.append(Sample(entry_id, None, str(error)))
        return samples

    def _start_cursor(self) -> str:
        """Where reading the stream starts without a stream checkpoint.

        After polling: right after the entry holding the value handled last, so nothing published
        while we waited is skipped. Else the first entry, or (START_FROM=latest) the newest one.
        """
        if self.config.start_from_earliest:
            return "0-0"
        recent = self.client.xrevrange(self.keys.input_stream, count=POLL_HANDOVER_SEARCH)
        polled = self.committed.cursor
        for entry_id, fields in recent if polled and polled.startswith(POLL_PREFIX) else ():
            if _poll_cursor(fields.get(schema.SAMPLE_FIELD, "")) == polled:
                return entry_id
        if not recent:
            return "0-0"
        # The newest sample, or every sample published since this runtime started if that is more.
        since_start = f"{self._started_ms - 1}-{2**64 - 1}"
        return min(_just_before(recent[0][0]), since_start, key=_id_order)

    def _poll(self) -> list[Sample]:
        """The course's trigger: GET the key every INTERVAL, but run only when the value changed."""
        raw = self.client.get(self.keys.input)
        if raw is not None:
            cursor = _poll_cursor(raw)
            if cursor != self.committed.cursor:
                if self.client.exists(self.keys.input_stream):
                    return []  # the stream began since we looked: take the sample from there, in order
                return [Sample(cursor, raw)]
        self.stop.wait(self.config.interval)
        return []

    # --- call -----------------------------------------------------------------------------------

    def _invoke(self, batch: list[Sample]) -> list[tuple[Sample, Outcome]] | None:
        """Run the batch up to a sample lost before (recorded, not run again); None when one is lost now."""
        if batch[0].cursor in self.lost:  # it hung or killed its worker before: recorded, not run again
            error = self.lost.pop(batch[0].cursor)
            return [(batch[0], Outcome(timestamp=error["sample_timestamp"] or None, error=error))]
        run = batch[:next((i for i, s in enumerate(batch) if s.cursor in self.lost), len(batch))]
        done: list[tuple[Sample, Outcome]] = []
        requests = [Request(s.entry_id, s.raw, s.problem) for s in run]
        try:
            for sample, outcome in zip(run, self.invoker.invoke_batch(requests)):
                self.metrics.duration.observe(outcome.duration)
                done.append((sample, outcome))
        except InvocationLost as lost:
            self._forget_batch(run[len(done)], lost.error)
            return None
        return done

    # --- commit ---------------------------------------------------------------------------------

    def _commit(self, outcomes: list[tuple[Sample, Outcome]]) -> None:
        """Store the batch's outputs, errors, checkpoint and status in one transaction."""
        if not outcomes:
            return
        cursor = outcomes[-1][0].cursor
        last_execution = _last_execution(outcomes, self.committed.last_execution)
        errors = [o.error for _, o in outcomes if o.error is not None]
        if not self.keys.output:
            self.committed = Checkpoint(cursor, None, last_execution)
            self._account(outcomes, errors, _lag_seconds(*outcomes[-1]))
            return
        env = outcomes[-1][1].env or self.invoker.env_data()
        env_data, env_error = env.text, env.error
        pipe = self.client.pipeline(transaction=True)
        try:
            self.lease.fence(pipe)
        except LeaseLost as lost:  # a standby took over while we worked: it re-runs from the checkpoint
            log.warning("commit_dropped cursor=%s reason=%s", cursor, lost)
            self._forget_state()
            return
        except redis.RedisError:
            self._pending = cursor  # the batch ran but is not stored: _restore() rolls the env back
            raise
        self._queue_effects(pipe, outcomes)
        pipe.set(self.keys.state, _state_json(cursor, env_data, env_error, last_execution))
        lag = _lag_seconds(*outcomes[-1])
        status = self._status_fields(outcomes[-1], last_execution, env_error, lag)
        if errors:
            status["last_error"] = json.dumps(errors[-1])
            for error in errors:
                pipe.hincrby(self.keys.status, f"errors_{error['fault']}", 1)
        pipe.hset(self.keys.status, mapping=status)
        pipe.hincrby(self.keys.status, "invocations", len(outcomes))
        pipe.hincrby(self.keys.status, "errors", len(errors))
        try:
            pipe.execute()
        except redis.WatchError:
            log.warning("commit_dropped cursor=%s reason=the lease changed hands during the commit", cursor)
            self._forget_state()
            return
        except redis.RedisError:
            self._pending = cursor  # the reply was lost: _restore() reads whether it landed
            raise
        self.committed = Checkpoint(cursor, env_data, last_execution)
        self._last_heartbeat = time.monotonic()
        self._account(outcomes, errors, lag)
        log.info("committed samples=%d cursor=%s errors=%d lag_s=%s", len(outcomes), cursor, len(errors),
                 status.get("lag_seconds", "?"))

    def _queue_effects(self, pipe: redis.client.Pipeline, outcomes: list[tuple[Sample, Outcome]]) -> None:
        minid = int((time.time() - self.config.retention_seconds) * 1000)
        last_output = None
        for sample, outcome in outcomes:
            if outcome.output is not None:
                last_output = outcome.output
                pipe.xadd(self.keys.output_stream, {schema.SAMPLE_ID_FIELD: sample.entry_id or "",
                                                    schema.TIMESTAMP: outcome.timestamp or "",
                                                    schema.OUTPUT_FIELD: outcome.output},
                          minid=minid, approximate=True)
            if outcome.error is not None:
                pipe.xadd(self.keys.errors, outcome.error, maxlen=ERRORS_KEPT, approximate=True)
        if last_output is not None:
            pipe.set(self.keys.output, last_output)

    def _account(self, outcomes: list[tuple[Sample, Outcome]], errors: list[dict[str, Any]], lag: float | None) -> None:
        """Metrics and logs of a committed batch."""
        self.metrics.invocations.inc(len(outcomes))
        if lag is not None:
            self.metrics.lag.observe(max(lag, 0.0))
        for error in errors:
            self.metrics.errors.labels(fault=error["fault"]).inc()
            log.warning("invocation_failed sample=%s fault=%s error=%s", error["sample_id"] or "-",
                        error["fault"], error["message"])

    def _status_fields(self, last: tuple[Sample, Outcome], last_execution: datetime | None,
                       env_error: str | None, lag: float | None) -> dict[str, str]:
        sample, outcome = last
        status = {
            "state": "running",
            "mode": "stream" if self.stream_mode else "poll",
            "last_sample_id": sample.entry_id or "",
            "last_sample_timestamp": outcome.timestamp or "",
            "last_execution": last_execution.isoformat(sep=" ") if last_execution else "",
            "last_duration_ms": f"{outcome.duration * 1000:.3f}",
            "function_version": self.invoker.version or "",
            "env_durable": "1" if env_error is None else "0",
            "env_error": env_error or "",
            "heartbeat": _now(),
        }
        if lag is not None:
            status["lag_seconds"] = f"{lag:.3f}"
        return status

    def _store_error(self, error: dict[str, Any]) -> None:
        log.error("error fault=%s message=%s", error["fault"], error["message"])
        self.metrics.errors.labels(fault=error["fault"]).inc()
        if not self.keys.output:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.keys.errors, error, maxlen=ERRORS_KEPT, approximate=True)
        pipe.hset(self.keys.status, mapping={"last_error": json.dumps(error), "function_error": error["message"]})
        pipe.hincrby(self.keys.status, "errors", 1)
        pipe.hincrby(self.keys.status, f"errors_{error['fault']}", 1)
        pipe.execute()

    def _write_status(self, fields: dict[str, str], force: bool = False) -> None:
        if self.keys.output and (self._restored or force):
            try:
                self.client.hset(self.keys.status, mapping={**fields, "heartbeat": _now()})
            except redis.RedisError as error:
                log.warning("status_not_written error=%s", error)

    def _heartbeat(self) -> None:
        """While idle, tell the dashboard the runtime is alive."""
        if time.monotonic() - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._last_heartbeat = time.monotonic()
            self._write_status({"state": "running", "mode": "stream" if self.stream_mode else "poll"})

    def describe(self) -> str:
        """Why the runtime is not ready, for /readyz."""
        if self.invoker.version is None:
            return f"no function loaded ({self.invoker.error or 'loading'})"
        return "Redis unreachable" if not self._restored else "starting"


# --- helpers ------------------------------------------------------------------------------------

def make_invoker(config: RuntimeConfig, extra_paths: list[str] | None = None) -> InProcess | Worker:
    """A worker process with a hard timeout, or (HANDLER_TIMEOUT=0) calls in this process."""
    url = urlsplit(config.redis.url)
    settings = FunctionSettings(
        path=config.function_path, handler=config.handler_name, unpack_dir=config.work_dir / "functions",
        output_max_bytes=config.output_max_bytes, memory_mb=config.handler_memory_mb,
        context_fields={"host": url.hostname or "localhost", "port": url.port or 6379,
                        "input_key": config.keys.input, "output_key": config.keys.output})
    if config.handler_timeout > 0:
        return Worker(settings, config.handler_timeout, extra_paths)
    if config.handler_memory_mb:
        log.warning("HANDLER_MEMORY_MB needs the worker process: it is ignored with HANDLER_TIMEOUT=0")
    return InProcess(settings)


def _state_json(cursor: str, env_text: str | None, env_error: str | None, last_execution: datetime | None) -> str:
    """The checkpoint document, with the env's JSON text spliced in as it came (no re-encoding)."""
    fields = json.dumps({"cursor": cursor, "env_durable": env_error is None, "env_error": env_error,
                         "last_execution": last_execution.isoformat() if last_execution else None})
    return f'{fields[:-1]}, "env": {env_text if env_text is not None else "null"}}}'


def _last_execution(outcomes: list[tuple[Sample, Outcome]], previous: datetime | None) -> datetime | None:
    for _, outcome in reversed(outcomes):
        if outcome.last_execution:
            return datetime.fromisoformat(outcome.last_execution)
    return previous


def _lag_seconds(sample: Sample, outcome: Outcome) -> float | None:
    """Sample time to output stored: from the sample's timestamp, else from its stream id."""
    if outcome.timestamp:
        try:
            return (datetime.now() - schema.parse_timestamp(outcome.timestamp)).total_seconds()
        except schema.SampleError:
            pass
    if sample.entry_id:
        return time.time() - schema.stream_id_millis(sample.entry_id) / 1000
    return None


def _poll_cursor(raw: str) -> str:
    return POLL_PREFIX + hashlib.sha1(raw.encode()).hexdigest()


def _just_before(entry_id: str) -> str:
    """The id XREAD must be given so that `entry_id` itself comes next."""
    millis, seq = (int(part) for part in entry_id.split("-"))
    return f"{millis}-{seq - 1}" if seq else f"{millis - 1}-{2**64 - 1}"


def _id_order(entry_id: str) -> tuple[int, int]:
    millis, seq = entry_id.split("-")
    return int(millis), int(seq)


def _now() -> str:
    return datetime.now().isoformat(sep=" ")


def main() -> int:
    """`python -m runtime`: configuration from the environment, SIGTERM finishes the current invocation."""
    try:
        config = RuntimeConfig.from_env()
        configure_logging(os.environ)
    except ConfigError as error:
        print(f"runtime: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("starting redis=%s input=%s output=%s function=%s handler=%s timeout=%gs", config.redis.safe_url(),
             config.keys.input, config.keys.output, config.function_path, config.handler_name,
             config.handler_timeout)
    extra_paths = []
    if config.requirements is not None and config.requirements.exists():
        try:
            extra_paths.append(str(install(config.requirements, config.work_dir / "packages")))
        except RequirementsError as error:
            log.error("requirements_failed %s", error)
            print(f"runtime: {error}", file=sys.stderr)
            return 3
        sys.path[:0] = extra_paths
    from runtime.hosts import HostSupervisor  # it builds on this module

    supervisor = HostSupervisor(config, connect(config.redis, client_name="runtime"), stop, extra_paths)
    if config.http_port is not None:
        try:
            serve(config.http_port, supervisor.health, supervisor.metrics, supervisor.describe)
        except OSError as error:  # the runtime's job is the samples: go on without probes
            log.error("http_not_started port=%d error=%s; set HTTP_PORT to a free port", config.http_port, error)
    supervisor.run()
    return 0
