"""Hard timeouts: the handler runs in a child process the runtime can kill.

The child holds the function and the `context` (so `context.env` lives there between calls) and
answers one JSON message per request over a pipe; nothing is pickled after start-up. An invocation
that runs past HANDLER_TIMEOUT gets its worker killed; a handler that calls `os._exit()` or crashes
ends only the worker. Either way the runtime starts a new worker from the last committed env.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from multiprocessing.connection import Connection
from typing import Any

from runtime.context import Context
from runtime.faults import Fault, record
from runtime.function import FunctionSource, source_identity
from runtime.invoke import EMPTY_ENV, EnvData, FunctionSettings, InvocationLost, Outcome, Request, call
from runtime.invoke import decode_env, encode_env

log = logging.getLogger("runtime.worker")

PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # where `runtime` is importable from
START_TIMEOUT = 120.0  # seconds a new worker may take to import the function (pandas, numpy…)


def _serve(conn: Connection, settings: FunctionSettings, extra_paths: list[str]) -> None:
    """The child: answer requests until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the runtime, which stops us itself
    if settings.memory_mb:
        # Allocation past the limit raises MemoryError in the handler: an error record, not a dead host.
        limit = settings.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    sys.path[:0] = extra_paths
    function = FunctionSource(settings.path, settings.handler, settings.unpack_dir)
    context = Context(function_getmtime="", **settings.context_fields)
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        op = request["op"]
        if op == "invoke":
            reply = call(function, context, settings, request["raw"], request["problem"], request["entry_id"])
            if request.get("with_env"):  # the last of a batch: save the commit a round trip
                reply["env"] = encode_env(context.env)
        elif op == "load":
            function.refresh()
            current = function.current
            reply = {"version": current.version if current else None, "error": function.error}
        elif op == "env":
            data, error = encode_env(context.env)
            reply = {"env": data, "error": error}
        elif op == "restore":
            context.env = decode_env(request["env"])
            last = request["last_execution"]
            context.last_execution = datetime.fromisoformat(last) if last else None
            reply = {}
        else:
            reply = {"unknown": op}
        try:
            conn.send_bytes(json.dumps(reply).encode())
        except OSError:  # the runtime is gone
            return


class Worker:
    """The runtime's handle on its worker process; the same interface as invoke.InProcess."""

    def __init__(self, settings: FunctionSettings, timeout: float, extra_paths: list[str] | None = None) -> None:
        self.settings = settings
        self.timeout = timeout
        self.extra_paths = extra_paths or []
        self.version: str | None = None
        self.error: str | None = None
        self._identity: tuple | None = None
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._env_data: str | None = EMPTY_ENV  # the env a new worker starts from (None: not durable, empty)
        self._last_execution: datetime | None = None

    # --- the same interface as InProcess -----------------------------------------------------

    def refresh(self) -> bool:
        """(Re)start the worker if needed and reload the function when its files changed."""
        identity = source_identity(self.settings.path)
        if self._process is not None and identity == self._identity:
            return False
        if self._process is None:
            self._start()
        self._identity = identity
        previous = self.version
        reply = self._request({"op": "load"}, START_TIMEOUT)
        self.version, self.error = reply["version"] or previous, reply["error"]
        return reply["version"] is not None and reply["version"] != previous

    def invoke_batch(self, requests: Sequence[Request], with_env: bool = True) -> Iterator[Outcome]:
        for index, request in enumerate(requests):
            reply = self.invoke(request.raw, request.problem, request.entry_id,
                                with_env=with_env and index == len(requests) - 1)
            env = reply.pop("env", None)
            yield Outcome(**reply, env=EnvData(*env) if env is not None else None)

    def invoke(self, raw: str | None, problem: str | None, entry_id: str | None,
               with_env: bool = False) -> dict[str, Any]:
        """One invocation's outcome; with `with_env`, also the env after it, as env_data() gives it."""
        try:
            return self._request({"op": "invoke", "raw": raw, "problem": problem, "entry_id": entry_id,
                                  "with_env": with_env}, self.timeout)
        except InvocationLost as lost:
            lost.error.update(sample_id=entry_id or "", sample_timestamp=_timestamp_of(raw))
            raise

    def env_data(self) -> EnvData:
        reply = self._request({"op": "env"}, START_TIMEOUT)
        return EnvData(reply["env"], reply["error"])

    def restore(self, env_data: str | None, last_execution: datetime | None) -> None:
        """The env a worker starts from; sent now if one runs, else when the next one starts."""
        self._env_data, self._last_execution = env_data, last_execution
        if self._process is not None:
            self._send_env()

    def close(self) -> None:
        if self._process is not None:
            self._conn.close()
            self._conn = None
            try:
                self._process.wait(2)  # it leaves when the socket closes
            except subprocess.TimeoutExpired:
                pass
            self._kill()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # --- the process ---------------------------------------------------------------------------

    def _start(self) -> None:
        # A fresh interpreter (`python -m runtime.worker`), not fork: no locks copied from our threads;
        # and not multiprocessing's spawn, which re-runs whatever script is __main__ in the child.
        ours, theirs = socket.socketpair()
        settings = json.dumps({**dataclasses.asdict(self.settings), "path": str(self.settings.path),
                               "unpack_dir": str(self.settings.unpack_dir), "extra_paths": self.extra_paths})
        path = os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
        self._process = subprocess.Popen([sys.executable, "-m", "runtime.worker", str(theirs.fileno()), settings],
                                         pass_fds=[theirs.fileno()], env={**os.environ, "PYTHONPATH": path})
        theirs.close()
        self._conn = Connection(ours.detach())
        self._identity = None
        log.info("worker_started pid=%d timeout=%gs", self._process.pid, self.timeout)
        self._send_env()

    def _send_env(self) -> None:
        last = self._last_execution.isoformat() if self._last_execution else None
        self._request({"op": "restore", "env": self._env_data, "last_execution": last}, START_TIMEOUT)

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(5)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn, self._identity = None, None, None

    def _request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._conn.send_bytes(json.dumps(message).encode())
        try:
            if self._conn.poll(timeout):
                return json.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            code = self._process.wait(5)
            self._kill()
            raise InvocationLost(record(Fault.WORKER_DIED, f"the handler's process ended (exit code {code}): "
                                        "os._exit(), a crash or running out of memory", None, None)) from None
        self._kill()
        raise InvocationLost(record(Fault.TIMEOUT, f"the handler ran past HANDLER_TIMEOUT={self.timeout:g}s "
                                    "and was stopped", None, None))


def _timestamp_of(raw: str | None) -> str:
    try:
        value = json.loads(raw).get("timestamp") if raw else None
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def main(argv: list[str]) -> None:
    """`python -m runtime.worker FD SETTINGS`: serve the runtime on the socket FD (started by Worker)."""
    options = json.loads(argv[2])
    extra_paths = options.pop("extra_paths")
    settings = FunctionSettings(**{**options, "path": Path(options["path"]), "unpack_dir": Path(options["unpack_dir"])})
    _serve(Connection(int(argv[1])), settings, extra_paths)


if __name__ == "__main__":
    main(sys.argv)
