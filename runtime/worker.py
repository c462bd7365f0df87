"""Hard timeouts: the handler runs in a child process the runtime can kill.

The child holds the function and the `context` (so `context.env` lives there between calls). The
runtime sends a whole batch of samples in one message; the child answers one message per
invocation as each finishes, tagged with its invocation id, so every invocation keeps its own
deadline (measured from the previous reply) and a timeout costs only that invocation. Nothing is
pickled. The child runs under a warden (runtime/warden.py) that kills everything the handler started,
in its process group or not, on timeout, restart and close, and when the runtime dies. Either way the
runtime starts a new worker from the env it last had.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from runtime.channel import Channel, ChannelClosed, ChannelTimeout
from runtime.faults import Fault, record
from runtime.function import Retry, source_identity
from runtime.invoke import EMPTY_ENV, OUTCOME_FIELDS, EnvData, EnvLost, FunctionSettings, InvocationLost, Outcome
from runtime.invoke import Request
from runtime.progress import Progress
from runtime.sandbox import become_subreaper, child_environment, kill_children, stop_warden, wait_for_exit

log = logging.getLogger(__name__)

PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # where `runtime` is importable from
START_TIMEOUT = 120.0  # seconds a new worker may take to import the function (pandas, numpy…)
EXIT_GRACE = 1.0  # seconds a worker that closed its socket gets to finish exiting, for its exit code
ALIVE_CHECK_SECONDS = 0.5  # while a reply is awaited, how often the worker is checked for having ended

# The wardens this process runs, for a runtime that adopts orphans (see adopt_orphans()).
_wardens: set[int] = set()
_wardens_lock = threading.Lock()
_adopting = False


def adopt_orphans() -> None:
    """Make this process a child subreaper that kills what it adopts: for `python -m runtime` alone.

    A handler that kills its warden, or leaves it with its own worker, hands its processes to us
    instead of to init; each time a worker is stopped, every child of ours that is not a warden goes.
    """
    global _adopting
    become_subreaper()
    _adopting = True


class Worker:
    """The runtime's handle on its worker process; the same interface as invoke.InProcess."""

    def __init__(self, settings: FunctionSettings, timeout: float, extra_paths: list[str] | None = None) -> None:
        # Absolute once, here: a handler that changes the working directory cannot move the function.
        self.settings = dataclasses.replace(settings, path=Path(os.path.abspath(settings.path)),
                                            unpack_dir=Path(os.path.abspath(settings.unpack_dir)))
        self.timeout = timeout
        self.extra_paths = extra_paths or []
        self.version: str | None = None
        self.error: str | None = None
        self._identity: tuple | None = None
        self._process: subprocess.Popen | None = None
        self._channel: Channel | None = None
        self._next_id = 0  # the id of the next message or invocation sent to the worker
        self._env_data: str | None = EMPTY_ENV  # the env a new worker starts from (None: not durable, empty)
        self._last_execution: datetime | None = None
        self._retry = Retry()
        self._unbuffered_next = False
        self._handler_pid: int | None = None
        self._progress: Progress | None = None  # how far the current (or last) worker got

    # --- the Invoker interface -------------------------------------------------------------------

    def refresh(self) -> bool:
        """(Re)start the worker if needed and reload the function when its files changed or a load failed."""
        if self._process is not None and not self._alive():
            self._restart_dead_worker()
        identity = source_identity(self.settings.path)
        retry = self.error is not None and self._retry.due()
        if self._process is not None and identity == self._identity and not retry:
            return False
        if self._process is None:
            self._start()
        self._identity = identity
        previous, failing = self.version, self.error is not None
        reply = self._request({"op": "load"}, START_TIMEOUT)
        self.version, self.error = reply["version"] or previous, reply["error"]
        self._handler_pid = reply.get("pid")
        if self.error is not None:
            self._retry.failed()
            return False
        self._retry.succeeded()
        return reply["version"] is not None and (reply["version"] != previous or failing)

    def invoke_batch(self, requests: Sequence[Request], with_env: bool = True,
                     context: str | None = None) -> Iterator[Outcome]:
        """Send the batch in one message; yield each outcome as its reply comes, each with its own deadline.

        `context`: the id of one of the worker's further contexts (a host of the fleet), None for its own.
        """
        if not requests:
            return
        yield from self.receive_batch(self._send_batch(requests, with_env, context), requests, context)

    def send_batches(self, batches: Sequence[tuple[str, Sequence[Request], bool]]) -> list[int]:
        """Send (context, requests, with_env) batches in one message; their first ids, for receive_batch().

        One message, read whole by the worker before it replies: neither side can block the other.
        """
        if self._process is None or not self._alive():
            self._restart_dead_worker()
        parts = [{"id": self._take_ids(len(requests)), "context": context, "with_env": with_env,
                  "requests": [[r.entry_id, r.problem, r.raw is not None] for r in requests]}
                 for context, requests, with_env in batches]
        blobs = [_raw_bytes(r.raw) for _, requests, _ in batches for r in requests]
        try:
            self._send({"op": "batches", "batches": parts, "id": None}, blobs)
        except InvocationLost as lost:  # it died between the check and the send: while idle
            raise self._died_idle(lost.exit_code) from None
        return [part["id"] for part in parts]

    def receive_batch(self, first: int, requests: Sequence[Request], context: str | None = None) -> Iterator[Outcome]:
        """The outcomes of a batch sent as `first`, each as its reply comes, each with its own deadline."""
        last_execution = self._last_execution
        received = 0
        try:
            for index, request in enumerate(requests):
                try:
                    reply = self._receive(first + index, self.timeout)
                except InvocationLost as lost:
                    lost.index = self._culprit(first, index, len(requests))
                    culprit = requests[lost.index]
                    lost.error.update(sample_id=culprit.entry_id or "", sample_timestamp=_timestamp_of(culprit.raw))
                    raise
                received += 1
                env = reply[-1]
                outcome = Outcome(*reply[1:-1], env=EnvData(*env) if env is not None else None)
                if outcome.last_execution:
                    last_execution = datetime.fromisoformat(outcome.last_execution)
                if outcome.env is not None and context is None:  # what env_data() gives while no worker runs
                    self._env_data, self._last_execution = outcome.env.text, last_execution
                if index == len(requests) - 1:
                    self._unbuffered_next = False
                yield outcome
        finally:
            if received < len(requests) and self._process is not None:
                # Abandoned part-way: the worker would go on changing the env with calls nobody records.
                log.warning("batch_abandoned after=%d of %d: stopping the worker", received, len(requests))
                self._kill()

    def _culprit(self, first: int, awaited: int, count: int) -> int:
        """Which of the batch's invocations was lost: the one after the last the worker finished (their
        replies may have died in its buffer), if that lies between the awaited one and the batch's end."""
        after = self._progress.last() + 1 - first if self._progress is not None else awaited
        return after if awaited <= after < count else awaited

    def _send_batch(self, requests: Sequence[Request], with_env: bool, context: str | None = None) -> int:
        """Send the batch to a running worker; its first invocation id. EnvLost if it died while idle."""
        if self._process is None or not self._alive():
            self._restart_dead_worker()
        first = self._take_ids(len(requests))
        # After a timeout, one batch unbuffered: a call stuck holding the GIL cannot hide replies before it.
        message = {"op": "batch", "id": first, "with_env": with_env, "buffered": not self._unbuffered_next,
                   "requests": [[r.entry_id, r.problem, r.raw is not None] for r in requests], "context": context}
        try:
            self._send(message, [_raw_bytes(r.raw) for r in requests])
        except InvocationLost as lost:  # it died between the check and the send: while idle, no sample's fault
            raise self._died_idle(lost.exit_code) from None
        return first

    def env_data(self) -> EnvData:
        if self._process is None:
            return EnvData(self._env_data, None if self._env_data is not None else "the env was not durable")
        reply = self._request({"op": "env"}, START_TIMEOUT)
        return EnvData(reply["env"], reply["error"])

    def restore(self, env_data: str | None, last_execution: datetime | None) -> None:
        """The env a worker starts from; sent now if one runs, else when the next one starts."""
        self._env_data, self._last_execution = env_data, last_execution
        if self._process is not None:
            try:
                self._send_env()
            except InvocationLost as lost:  # the next refresh() starts a new one from this env
                log.warning("worker_lost during restore: %s", lost)

    def close(self) -> None:
        self._kill()
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # --- further contexts (the fleet's hosts): each its own env, all in this one worker --------------

    def context_env(self, context: str) -> EnvData:
        """The env of a further context, from the running worker."""
        reply = self._request({"op": "env", "context": context}, START_TIMEOUT)
        return EnvData(reply["env"], reply["error"])

    def restore_context(self, context: str, fields: dict[str, Any], env_data: str | None,
                        last_execution: datetime | None) -> None:
        """Set a further context's env (made with these context fields when new), starting a worker if none runs."""
        if self._process is None or not self._alive():
            self._restart_dead_worker()
        last = last_execution.isoformat() if last_execution else None
        self._request({"op": "restore", "context": context, "fields": fields, "env": env_data,
                       "last_execution": last}, START_TIMEOUT)

    def drop_context(self, context: str) -> None:
        """Forget a further context and its env (a host no longer followed)."""
        if self._process is not None:
            self._request({"op": "drop", "context": context}, START_TIMEOUT)

    @property
    def pid(self) -> int | None:
        """The process that runs the handler (under its warden, once it has loaded the function)."""
        return self._handler_pid

    # --- the process -------------------------------------------------------------------------------

    def _start(self) -> None:
        # A fresh interpreter (`python -m runtime.warden`, which forks `runtime.serve`), not fork: no locks
        # copied from our threads; and not multiprocessing's spawn, which re-runs whatever script is
        # __main__ in the child.
        ours, theirs = socket.socketpair()
        if self._progress is not None:
            self._progress.close()
        self._progress = Progress()
        settings = json.dumps({**dataclasses.asdict(self.settings), "path": str(self.settings.path),
                               "unpack_dir": str(self.settings.unpack_dir), "extra_paths": self.extra_paths,
                               "progress_fd": self._progress.fd})
        env = child_environment(os.environ, PACKAGE_ROOT)
        with _wardens_lock:  # known before any sweep can see it
            self._process = subprocess.Popen(
                [sys.executable, "-m", "runtime.warden", str(theirs.fileno()), str(os.getpid()), settings],
                pass_fds=[theirs.fileno(), self._progress.fd], env=env, stdin=subprocess.DEVNULL,
                start_new_session=True)
            _wardens.add(self._process.pid)
        theirs.close()
        self._channel = Channel(ours)
        self._identity = None
        log.info("worker_started pid=%d timeout=%gs", self._process.pid, self.timeout)
        self._send_env()

    def _restart_dead_worker(self) -> None:
        """A worker gone between batches: EnvLost (the env it held died with it); never started: start one."""
        if self._process is not None:
            raise self._died_idle(self._process.poll())
        self.refresh()

    def _died_idle(self, exit_code: int | str | None) -> EnvLost:
        """What a worker found dead between batches costs: no sample, the env since the checkpoint."""
        log.warning("worker_died_idle exit_code=%s: the runtime rewinds to its checkpoint", exit_code)
        self._kill()
        return EnvLost(record(Fault.WORKER_DIED, f"the handler's process ended while idle (exit code "
                              f"{exit_code}); context.env is restored from the checkpoint", None, None))

    def _alive(self) -> bool:
        return not wait_for_exit(self._process, 0)

    def _send_env(self) -> None:
        last = self._last_execution.isoformat() if self._last_execution else None
        self._request({"op": "restore", "env": self._env_data, "last_execution": last}, START_TIMEOUT)

    def _kill(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._process is not None:
            stop_warden(self._process)
            with _wardens_lock:
                _wardens.discard(self._process.pid)
                if _adopting:
                    kill_children(keep=_wardens)
        self._process, self._channel, self._identity, self._handler_pid = None, None, None, None

    # --- messages ----------------------------------------------------------------------------------

    def _take_ids(self, count: int) -> int:
        first, self._next_id = self._next_id, self._next_id + count
        return first

    def _request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        message_id = self._take_ids(1)
        self._send({**message, "id": message_id})
        return self._receive(message_id, timeout)

    def _send(self, message: dict[str, Any], blobs: list[bytes] | None = None) -> None:
        try:
            self._channel.send(message, blobs)
        except ChannelClosed:
            self._lost_worker("it closed its end before the request was sent")

    def _receive(self, expected: int, timeout: float) -> Any:
        """The reply with id `expected`; older replies (an abandoned batch, a forked copy) are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                # In slices: a worker that ended while a process it started keeps the socket open
                # sends no end of file, and must not pass for a handler still running.
                reply = self._channel.receive(max(0.0, min(ALIVE_CHECK_SECONDS, deadline - time.monotonic())))
            except ChannelTimeout:
                if self._process is not None and self._process.poll() is not None:
                    self._lost_worker("a process it started keeps its socket open")
                if time.monotonic() < deadline:
                    continue
                self._kill()
                self._unbuffered_next = True
                raise InvocationLost(record(Fault.TIMEOUT, f"the handler ran past HANDLER_TIMEOUT={self.timeout:g}s "
                                            "and was stopped", None, None)) from None
            except ChannelClosed as closed:
                self._lost_worker(str(closed))
            reply_id = _reply_id(reply)
            if reply_id == expected:
                return reply
            if not isinstance(reply_id, int) or reply_id > expected:
                self._lost_worker(f"it sent a reply out of order (id {reply_id!r}, expected {expected})")

    def _lost_worker(self, how: str) -> None:
        """Raise InvocationLost for a worker that ended or broke the protocol; its group is killed."""
        process = self._process
        ended = process is not None and wait_for_exit(process, EXIT_GRACE)
        self._kill()
        code = process.returncode if ended else "none, it was stopped"
        lost = InvocationLost(record(Fault.WORKER_DIED, f"the handler's process ended (exit code {code}): "
                                     f"os._exit(), a crash or running out of memory; {how}", None, None))
        lost.exit_code = code
        raise lost


def _reply_id(reply: Any) -> Any:
    """The id a reply carries: first in an invocation's list, `id` in an answer's object."""
    if type(reply) is list and len(reply) == len(OUTCOME_FIELDS) + 2:
        return reply[0]
    return reply.pop("id", None) if isinstance(reply, dict) else None


def _raw_bytes(raw: str | bytes | bytearray | None) -> bytes:
    """A sample's JSON text as the bytes the worker decodes (bytes as they came; the worker checks UTF-8)."""
    if raw is None:
        return b""
    if isinstance(raw, str):
        try:
            return raw.encode("utf-8", "surrogateescape")  # bytes read leniently go back to what they were
        except UnicodeEncodeError:
            return raw.encode("utf-8", "surrogatepass")  # not UTF-8: the worker says so
    return bytes(raw)


def _timestamp_of(raw: str | bytes | None) -> str:
    try:
        value = json.loads(raw).get("timestamp") if raw else None
    except (ValueError, AttributeError, RecursionError):
        return ""
    return value if isinstance(value, str) else ""
