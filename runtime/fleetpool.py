"""Where the fleet's handlers run: one worker process (or this process) holding a context per host.

Each host sees an Invoker of its own (`HostInvoker`) over the shared one, keyed by host id, so its
`context.env`, `last_execution`, `input_key` and `output_key` are its own. When the shared worker
restarts (a host's handler timed out or crashed it), every other host's context is gone with it:
`stale` says so, and the fleet has that host restore from its checkpoint before its next batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from runtime.capture import Tail
from runtime.context import Context
from runtime.invoke import EMPTY_ENV, OUTPUT_TAIL, EnvData, InProcess, Outcome, Request
from runtime.worker import Worker

log = logging.getLogger(__name__)


class HostInvoker:
    """One host's Invoker over the shared worker: its own context, restored before it runs."""

    def __init__(self, pool: Pool, host: str, fields: dict[str, Any]) -> None:
        self.pool = pool
        self.host = host
        self.fields = fields  # input_key, output_key of this host
        self.generation: int | None = None  # the pool's generation the context was restored into
        self.presented: int | None = None  # the first id of a batch sent ahead, whose replies are not read yet

    @property
    def version(self) -> str | None:
        return self.pool.version

    @property
    def error(self) -> str | None:
        return self.pool.error

    @property
    def stale(self) -> bool:
        """The context in the worker is not the one restored last (the worker restarted since)."""
        return self.generation != self.pool.generation()

    def refresh(self) -> bool:
        return False  # the fleet refreshes the shared function once per round, not once per host

    def invoke_batch(self, requests: Sequence[Request], with_env: bool = True) -> Iterator[Outcome]:
        if self.presented is not None:
            first, self.presented = self.presented, None
            return self.pool.receive_batch(self.host, first, requests)
        if self.stale:  # an env that is not durable was not restored: it is gone with the old worker
            self.restore(EMPTY_ENV, None)
        return self.pool.invoke_batch(self.host, requests, with_env)

    def env_data(self) -> EnvData:
        return self.pool.env_data(self.host)

    def restore(self, env_text: str | None, last_execution: datetime | None) -> None:
        self.pool.restore(self.host, self.fields, env_text, last_execution)
        self.generation = self.pool.generation()

    def close(self) -> None:
        self.pool.drop(self.host)


class WorkerPool:
    """One worker process for every host: a hard timeout per invocation, contexts keyed by host."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._generation = 0
        self._pid: int | None = None

    @property
    def version(self) -> str | None:
        return self.worker.version

    @property
    def error(self) -> str | None:
        return self.worker.error

    def generation(self) -> int:
        """Counts worker processes: a new one holds none of the hosts' contexts."""
        pid = self.worker.pid
        if pid != self._pid:
            self._pid, self._generation = pid, self._generation + 1
        return self._generation

    def refresh(self) -> bool:
        return self.worker.refresh()

    pipelined = True  # batches of many hosts can be sent before the first reply is read

    def invoke_batch(self, host: str, requests: Sequence[Request], with_env: bool) -> Iterator[Outcome]:
        return self.worker.invoke_batch(requests, with_env, context=host)

    def present(self, batches: Sequence[tuple[HostInvoker, Sequence[Request], bool]]) -> None:
        """Send these hosts' batches in one message; each host's next invoke_batch() reads its replies."""
        firsts = self.worker.send_batches([(invoker.host, requests, with_env) for invoker, requests, with_env in batches])
        for (invoker, _, _), first in zip(batches, firsts):
            invoker.presented = first

    def receive_batch(self, host: str, first: int, requests: Sequence[Request]) -> Iterator[Outcome]:
        return self.worker.receive_batch(first, requests, context=host)

    def env_data(self, host: str) -> EnvData:
        return self.worker.context_env(host)

    def restore(self, host: str, fields: dict[str, Any], env_text: str | None,
                last_execution: datetime | None) -> None:
        self.worker.restore_context(host, fields, env_text, last_execution)

    def drop(self, host: str) -> None:
        self.worker.drop_context(host)

    def close(self) -> None:
        self.worker.close()


class InProcessPool:
    """HANDLER_TIMEOUT=0: the handlers run in this process, one loaded function, a context per host."""

    def __init__(self, invoker: InProcess) -> None:
        self.loaded = invoker  # the function is loaded once, here; each host's invoker shares it
        self.settings = invoker.settings
        self.function = invoker.function
        self.hosts: dict[str, InProcess] = {}

    @property
    def version(self) -> str | None:
        return self.loaded.version

    @property
    def error(self) -> str | None:
        return self.loaded.error

    pipelined = False  # each call runs here and now

    def generation(self) -> int:
        return 0  # the contexts live as long as the runtime

    def refresh(self) -> bool:
        return self.function.refresh()

    def _of(self, host: str, fields: dict[str, Any] | None = None) -> InProcess:
        if host not in self.hosts:
            invoker = InProcess.__new__(InProcess)  # sharing the loaded function, not loading one per host
            invoker.settings = replace(self.settings, context_fields={**self.settings.context_fields,
                                                                      **(fields or {})})
            invoker.function, invoker.tail = self.function, Tail(OUTPUT_TAIL)
            invoker.context = Context(function_getmtime="", **invoker.settings.context_fields)
            self.hosts[host] = invoker
        return self.hosts[host]

    def invoke_batch(self, host: str, requests: Sequence[Request], with_env: bool) -> Iterator[Outcome]:
        return self._of(host).invoke_batch(requests, with_env)

    def env_data(self, host: str) -> EnvData:
        return self._of(host).env_data()

    def restore(self, host: str, fields: dict[str, Any], env_text: str | None,
                last_execution: datetime | None) -> None:
        self._of(host, fields).restore(env_text, last_execution)

    def drop(self, host: str) -> None:
        self.hosts.pop(host, None)

    def close(self) -> None:
        self.hosts.clear()


Pool = WorkerPool | InProcessPool


def pool_of(invoker: Worker | InProcess) -> Pool:
    """The pool around the invoker the runtime would use alone (loop.make_invoker): the same settings."""
    return WorkerPool(invoker) if isinstance(invoker, Worker) else InProcessPool(invoker)
