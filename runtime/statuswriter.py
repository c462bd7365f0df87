"""The runtime's side of the status contract (runtime/status.py): what it writes to `<output>:status`.

The loop and the lease keeper both write through one StatusWriter, which remembers the state,
mode and problem, so a heartbeat repeats them instead of guessing. Without an output key nothing is
stored (NullStatus), and the loop does not need to ask.
"""

from __future__ import annotations

from json import dumps as json_dumps  # bound at import: out of a handler's reach
import logging
import os
import threading
from datetime import datetime
from typing import Any

import redis

from runtime import keytypes, schema, status
from runtime.config import ERRORS_KEPT
from runtime.faults import Fault
from runtime.status import Mode, State

log = logging.getLogger(__name__)


class StatusWriter:
    def __init__(self, client: redis.Redis, keys: schema.Keys) -> None:
        self.client = client
        self.keys = keys
        self.state = State.RUNNING
        self.mode = Mode.POLL
        self.problem = ""
        self._lock = threading.Lock()

    def started(self) -> None:
        self.write({status.PID: str(os.getpid()), status.STARTED: status.now_text()})

    def set(self, state: State | None = None, mode: Mode | None = None, problem: str | None = None) -> None:
        """Change what the status says; written at once when it changed."""
        with self._lock:
            before = (self.state, self.mode, self.problem)
            self.state = state or self.state
            self.mode = mode or self.mode
            self.problem = self.problem if problem is None else problem
            changed = before != (self.state, self.mode, self.problem)
        if changed:
            self.write({})

    def heartbeat(self) -> dict[str, str]:
        """The heartbeat alone: the loop writes state, mode and problem itself when they change, so a
        heartbeat from the lease keeper's thread can never put back a state that just changed."""
        return {status.HEARTBEAT: status.now_text()}

    def write(self, fields: dict[str, str]) -> None:
        try:
            self.client.hset(self.keys.status, mapping={**self.current(), **fields})
        except redis.RedisError as error:
            log.warning("status_not_written key=%s error=%s", self.keys.status, error)

    def current(self) -> dict[str, str]:
        return {status.STATE: self.state.value, status.MODE: self.mode.value, status.PROBLEM: self.problem,
                status.HEARTBEAT: status.now_text()}

    def of_commit(self, last_id: str | None, last_timestamp: str | None, duration: float,
                  last_execution: datetime | None, env_error: str | None, lag: float | None,
                  version: str | None) -> dict[str, str]:
        """The fields a commit writes, in the commit's own script."""
        fields = {
            **self.current(),
            status.LAST_SAMPLE_ID: last_id or "",
            status.LAST_SAMPLE_TIMESTAMP: last_timestamp or "",
            status.LAST_EXECUTION: status.format_instant(last_execution) if last_execution else "",
            status.LAST_DURATION_MS: f"{duration * 1000:.3f}",
            status.FUNCTION_VERSION: version or "",
            status.ENV_DURABLE: "1" if env_error is None else "0",
            status.ENV_ERROR: env_error or "",
        }
        if lag is not None:
            fields[status.LAG_SECONDS] = f"{lag:.3f}"
        return fields

    def store_error(self, error: dict[str, Any]) -> None:
        """An error that belongs to no commit (the function does not load, the worker died idle): record, counters.

        The key types are checked first: EXEC would apply the record and fail the counters, and the
        caller, seeing the failure, would store the record again.
        """
        keytypes.check(self.client, self.keys.errors, "stream")
        keytypes.check(self.client, self.keys.status, "hash")
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.keys.errors, error, maxlen=ERRORS_KEPT, approximate=True)
        fields = {status.LAST_ERROR: json_dumps(error)}
        if error["fault"] == Fault.FUNCTION_LOAD:
            fields[status.FUNCTION_ERROR] = error["message"]
        pipe.hset(self.keys.status, mapping=fields)
        for name in (status.ERRORS, status.ERRORS_PREFIX + error["fault"]):
            pipe.hincrby(self.keys.status, name, 1)
        pipe.execute()


class NullStatus(StatusWriter):
    """No output key: the status is kept in memory only."""

    def __init__(self) -> None:
        super().__init__(None, schema.Keys())  # type: ignore[arg-type]

    def heartbeat(self) -> dict[str, str]:
        """The heartbeat alone: the loop writes state, mode and problem itself when they change, so a
        heartbeat from the lease keeper's thread can never put back a state that just changed."""
        return {status.HEARTBEAT: status.now_text()}

    def write(self, fields: dict[str, str]) -> None:
        pass

    def store_error(self, error: dict[str, Any]) -> None:
        pass
