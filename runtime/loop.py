"""The runtime loop: wait for the next samples, call the handler on each, commit the effects at once.

    read   the input stream from the checkpoint's cursor (XREAD BLOCK), or poll the plain key
    call   handler(input, context) for each sample, turning every fault into an error record
    commit output SET + output-stream entries + error records + checkpoint (cursor, env) + status
           in one MULTI/EXEC, so a crash at any point leaves either all of a batch or none of it

After a restart the loop resumes at the committed cursor with the committed `context.env`, so every
sample is handled exactly once. Redis going away costs a wait, never a sample.
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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import redis

from runtime import envcodec, schema
from runtime.config import BACKOFF_CAP_SECONDS, BLOCK_SECONDS, ERRORS_KEPT, ConfigError, RuntimeConfig
from runtime.config import configure_logging, connect
from runtime.context import Context
from runtime.faults import Fault, describe, record, user_traceback
from runtime.function import FunctionSource

log = logging.getLogger("runtime")

POLL_PREFIX = "poll:"  # cursor of the polling mode: a digest of the last value handled
HEARTBEAT_SECONDS = 2.0


@dataclass
class Sample:
    cursor: str  # stream entry id, or POLL_PREFIX + digest of the value
    raw: str | None  # the JSON text; None when the stream entry carried none
    problem: str | None = None  # why the entry is unusable, when raw is None

    @property
    def entry_id(self) -> str | None:
        return None if self.cursor.startswith(POLL_PREFIX) else self.cursor


@dataclass
class Outcome:
    sample: Sample
    timestamp: str | None = None  # the sample's own `timestamp` field
    output: str | None = None  # JSON to store; None when the handler returned something falsy
    error: dict[str, Any] | None = None
    duration: float = 0.0


@dataclass
class Checkpoint:
    cursor: str | None = None
    env: Any = field(default_factory=dict)
    env_data: Any = field(default_factory=dict)  # env as last committed; None when it was not durable
    last_execution: datetime | None = None


class Runtime:
    def __init__(self, config: RuntimeConfig, client: redis.Redis, stop: threading.Event) -> None:
        self.config = config
        self.keys = config.keys
        self.client = client
        self.stop = stop
        self.function = FunctionSource(config.function_path, config.handler_name)
        url = urlsplit(config.redis.url)
        self.context = Context(url.hostname or "localhost", url.port or 6379, self.keys.input, self.keys.output, "")
        self.committed = Checkpoint()
        self.ready = False
        self.stream_mode = False
        self._pending: str | None = None  # cursor of a commit whose outcome is unknown
        self._reported_load_error: str | None = None
        self._last_heartbeat = 0.0

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        """Process samples until `stop` is set; Redis outages are waited out."""
        if not self.keys.output:
            log.warning("no REDIS_OUTPUT_KEY: the handler runs on every sample but nothing is stored")
        backoff = 0.1
        while not self.stop.is_set():
            try:
                if not self.ready:
                    self._restore()
                if not self._function_ready():
                    continue
                batch = self._next_batch()
                if batch:
                    self._commit([self._invoke(s) for s in self._until_stopped(batch)])
                else:
                    self._heartbeat()
                backoff = 0.1
            except redis.RedisError as error:  # unreachable, restarting, out of memory, wrong key type
                self.ready = False
                log.warning("redis_unavailable url=%s error=%s retry_in=%.1fs",
                            self.config.redis.safe_url(), error, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP_SECONDS)
        self._write_status({"state": "stopped"})
        log.info("stopped cursor=%s", self.committed.cursor)

    def _until_stopped(self, batch: list[Sample]):
        """The batch, cut short after the current invocation once a stop is requested."""
        for sample in batch:
            yield sample
            if self.stop.is_set():
                return

    def _restore(self) -> None:
        """Adopt the stored checkpoint (first start), or settle an unconfirmed commit (after an outage)."""
        self.client.ping()
        stored = self._load_checkpoint()
        pending, self._pending = self._pending, None
        if pending is not None and stored.cursor == pending:
            self.committed = Checkpoint(pending, self.context.env, stored.env_data, self.context.last_execution)
        elif pending is not None:
            self._roll_back(pending)
        elif self.committed.cursor is None or stored.cursor not in (None, self.committed.cursor):
            self.committed = stored
            self.context.env = stored.env
            self.context.last_execution = stored.last_execution
            log.info("resumed cursor=%s", stored.cursor)
        self.ready = True
        self._write_status({"state": "running", "pid": str(os.getpid()), "started": _now()})

    def _roll_back(self, cursor: str) -> None:
        """The batch up to `cursor` was not stored: go back to the committed env and run it again."""
        if self.committed.env_data is None:
            log.warning("commit_lost cursor=%s: env is not durable, so the re-run batch may count twice", cursor)
        else:
            self.context.env = envcodec.decode(self.committed.env_data)
        self.context.last_execution = self.committed.last_execution
        log.info("commit_lost cursor=%s: re-running from %s", cursor, self.committed.cursor)

    def _load_checkpoint(self) -> Checkpoint:
        if not self.keys.output:
            return Checkpoint(cursor=self.committed.cursor, env=self.context.env)
        text = self.client.get(self.keys.state)
        if text is None:
            return Checkpoint()
        try:
            state = json.loads(text)
            checkpoint = Checkpoint(cursor=state.get("cursor"), env_data=state.get("env"))
            if state.get("last_execution"):
                checkpoint.last_execution = datetime.fromisoformat(state["last_execution"])
        except (ValueError, TypeError, AttributeError) as error:
            log.error("checkpoint_unreadable key=%s error=%s; starting without it", self.keys.state, error)
            return Checkpoint()
        if checkpoint.env_data is not None:
            try:
                checkpoint.env = envcodec.decode(checkpoint.env_data)
            except ValueError as error:
                log.error("checkpoint_env_unreadable key=%s error=%s; starting with an empty env", self.keys.state, error)
        elif not state.get("env_durable", True):
            log.warning("checkpoint_env_not_durable reason=%s; starting with an empty env", state.get("env_error"))
        return checkpoint

    def _function_ready(self) -> bool:
        """Load or reload the function; while none has ever loaded, wait and report why."""
        if self.function.refresh():
            self._write_status({"function_version": self.function.current.version, "function_error": ""})
        if self.function.error and self.function.error != self._reported_load_error:
            self._reported_load_error = self.function.error
            self._store_error(record(Fault.FUNCTION_LOAD, self.function.error, None, None))
        if self.function.current is None:
            self._write_status({"state": "function_error"})
            self.stop.wait(min(self.config.interval, 2.0))
            return False
        self.context.function_getmtime = self.function.current.getmtime
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
        if samples and samples[0].raw is not None and self.committed.cursor == _poll_cursor(samples[0].raw):
            self.committed.cursor = samples.pop(0).cursor  # handled by polling just before the stream began
        return samples

    def _start_cursor(self) -> str:
        """Where a runtime without a stream checkpoint starts: the first entry, or the newest one."""
        if self.config.start_from_earliest:
            return "0-0"
        newest = self.client.xrevrange(self.keys.input_stream, count=1)
        return _just_before(newest[0][0]) if newest else "0-0"

    def _poll(self) -> list[Sample]:
        """The course's trigger: GET the key every INTERVAL, but run only when the value changed."""
        raw = self.client.get(self.keys.input)
        if raw is not None:
            cursor = _poll_cursor(raw)
            if cursor != self.committed.cursor:
                return [Sample(cursor, raw)]
        self.stop.wait(self.config.interval)
        return []

    # --- call -----------------------------------------------------------------------------------

    def _invoke(self, sample: Sample) -> Outcome:
        outcome = Outcome(sample)
        if sample.raw is None:
            outcome.error = record(Fault.INPUT_INVALID, sample.problem, sample.entry_id, None)
            return outcome
        try:
            payload = schema.decode_object(sample.raw)
        except schema.SampleError as error:
            outcome.error = record(Fault.INPUT_INVALID, str(error), sample.entry_id, None)
            return outcome
        outcome.timestamp = payload.get(schema.TIMESTAMP) if isinstance(payload.get(schema.TIMESTAMP), str) else None
        self._reset_context_fields()
        started = time.perf_counter()
        try:
            result = self.function.current.handler(schema.with_aliases(payload), self.context)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # noqa: BLE001 - sys.exit() in user code must not end the runtime
            outcome.error = record(Fault.HANDLER_ERROR, describe(error), sample.entry_id, outcome.timestamp,
                                   user_traceback(error))
            return outcome
        finally:
            outcome.duration = time.perf_counter() - started
        self.context.last_execution = datetime.now()
        if result:
            self._encode_output(result, outcome)
        return outcome

    def _reset_context_fields(self) -> None:
        """As the reference does before every call: a handler that overwrote them gets them back."""
        ctx = self.context
        ctx.input_key, ctx.output_key = self.keys.input, self.keys.output
        ctx.function_getmtime = self.function.current.getmtime

    def _encode_output(self, result: Any, outcome: Outcome) -> None:
        try:
            text = json.dumps(result, default=_json_default, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as error:
            outcome.error = record(Fault.OUTPUT_NOT_JSON, f"the handler's result cannot be stored as JSON: {error}. "
                                   "Return a dict of numbers, strings, lists and dicts",
                                   outcome.sample.entry_id, outcome.timestamp)
            return
        if len(text) > self.config.output_max_bytes:
            outcome.error = record(Fault.OUTPUT_TOO_LARGE, f"the handler's result is {len(text):,} bytes as JSON, "
                                   f"over OUTPUT_MAX_BYTES={self.config.output_max_bytes:,}",
                                   outcome.sample.entry_id, outcome.timestamp)
            return
        outcome.output = text

    # --- commit ---------------------------------------------------------------------------------

    def _commit(self, outcomes: list[Outcome]) -> None:
        """Store the batch's outputs, errors, checkpoint and status in one transaction."""
        if not outcomes:
            return
        cursor = outcomes[-1].sample.cursor
        if not self.keys.output:
            self.committed.cursor = cursor
            return
        env_data, env_error = _encode_env(self.context.env)
        minid = _minid(self.config.retention_seconds)
        pipe = self.client.pipeline(transaction=True)
        last_output = None
        for outcome in outcomes:
            if outcome.output is not None:
                last_output = outcome.output
                pipe.xadd(self.keys.output_stream, {schema.SAMPLE_ID_FIELD: outcome.sample.entry_id or "",
                                                    schema.TIMESTAMP: outcome.timestamp or "",
                                                    schema.OUTPUT_FIELD: outcome.output},
                          minid=minid, approximate=True)
            if outcome.error is not None:
                pipe.xadd(self.keys.errors, outcome.error, maxlen=ERRORS_KEPT, approximate=True)
        if last_output is not None:
            pipe.set(self.keys.output, last_output)
        last_execution = self.context.last_execution
        pipe.set(self.keys.state, json.dumps({
            "cursor": cursor,
            "env": env_data,
            "env_durable": env_error is None,
            "env_error": env_error,
            "last_execution": last_execution.isoformat() if last_execution else None,
        }, allow_nan=False))
        errors = [o.error for o in outcomes if o.error is not None]
        status = self._status_fields(outcomes[-1], env_error)
        if errors:
            status["last_error"] = json.dumps(errors[-1])
            for error in errors:
                pipe.hincrby(self.keys.status, f"errors_{error['fault']}", 1)
        pipe.hset(self.keys.status, mapping=status)
        pipe.hincrby(self.keys.status, "invocations", len(outcomes))
        pipe.hincrby(self.keys.status, "errors", len(errors))
        try:
            pipe.execute()
        except redis.RedisError:
            self._pending = cursor  # the reply was lost: _restore() reads whether it landed
            raise
        self.committed = Checkpoint(cursor, self.context.env, env_data, last_execution)
        self._last_heartbeat = time.monotonic()
        for error in errors:
            log.warning("invocation_failed sample=%s fault=%s error=%s", error["sample_id"] or cursor,
                        error["fault"], error["message"])
        log.info("committed samples=%d cursor=%s errors=%d lag_s=%s", len(outcomes), cursor, len(errors),
                 status.get("lag_seconds", "?"))

    def _status_fields(self, last: Outcome, env_error: str | None) -> dict[str, str]:
        status = {
            "state": "running",
            "mode": "stream" if self.stream_mode else "poll",
            "last_sample_id": last.sample.entry_id or "",
            "last_sample_timestamp": last.timestamp or "",
            "last_execution": self.context.last_execution.isoformat(sep=" ") if self.context.last_execution else "",
            "last_duration_ms": f"{last.duration * 1000:.3f}",
            "function_version": self.function.current.version,
            "env_durable": "1" if env_error is None else "0",
            "env_error": env_error or "",
            "heartbeat": _now(),
        }
        lag = _lag_seconds(last)
        if lag is not None:
            status["lag_seconds"] = f"{lag:.3f}"
        return status

    def _store_error(self, error: dict[str, Any]) -> None:
        log.error("error fault=%s message=%s", error["fault"], error["message"])
        if not self.keys.output:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.keys.errors, error, maxlen=ERRORS_KEPT, approximate=True)
        pipe.hset(self.keys.status, mapping={"last_error": json.dumps(error), "function_error": error["message"]})
        pipe.hincrby(self.keys.status, "errors", 1)
        pipe.hincrby(self.keys.status, f"errors_{error['fault']}", 1)
        pipe.execute()

    def _write_status(self, fields: dict[str, str]) -> None:
        if self.keys.output and self.ready:
            try:
                self.client.hset(self.keys.status, mapping={**fields, "heartbeat": _now()})
            except redis.RedisError as error:
                log.warning("status_not_written error=%s", error)

    def _heartbeat(self) -> None:
        """While idle, tell the dashboard the runtime is alive."""
        if time.monotonic() - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._last_heartbeat = time.monotonic()
            self._write_status({"state": "running", "mode": "stream" if self.stream_mode else "poll"})


# --- helpers ------------------------------------------------------------------------------------

def _encode_env(env: Any) -> tuple[Any, str | None]:
    try:
        return envcodec.encode(env), None
    except envcodec.NotDurable as error:
        return None, str(error)


def _json_default(value: Any) -> Any:
    """numpy numbers and arrays, and datetimes, as JSON; anything else is not JSON."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    raise TypeError(f"{type(value).__name__} {value!r:.80} is not JSON serializable")


def _lag_seconds(outcome: Outcome) -> float | None:
    """Sample time to output stored: from the sample's timestamp, else from its stream id."""
    if outcome.timestamp:
        try:
            return (datetime.now() - schema.parse_timestamp(outcome.timestamp)).total_seconds()
        except schema.SampleError:
            pass
    if outcome.sample.entry_id:
        return time.time() - schema.stream_id_millis(outcome.sample.entry_id) / 1000
    return None


def _poll_cursor(raw: str) -> str:
    return POLL_PREFIX + hashlib.sha1(raw.encode()).hexdigest()


def _just_before(entry_id: str) -> str:
    """The id XREAD must be given so that `entry_id` itself comes next."""
    millis, seq = (int(part) for part in entry_id.split("-"))
    return f"{millis}-{seq - 1}" if seq else f"{millis - 1}-{2**64 - 1}"


def _minid(retention_seconds: float) -> int:
    return int((time.time() - retention_seconds) * 1000)


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
    log.info("starting redis=%s input=%s output=%s function=%s handler=%s", config.redis.safe_url(),
             config.keys.input, config.keys.output, config.function_path, config.handler_name)
    client = connect(config.redis, client_name="runtime")
    Runtime(config, client, stop).run()
    return 0
