"""The worker process: forked by its warden (runtime/warden.py), which worker.Worker starts.

It answers the runtime over the socket FD until the socket closes: `load` (re)loads the function,
`restore` sets the env, `env` returns it, `batch` runs samples and sends one reply per invocation as
each finishes: `[invocation id, *OUTCOME_FIELDS, env]`, env only on a batch's last. Every reference the protocol needs is bound before
user code loads; the handler's prints are captured per invocation; fd 1 and 2 lead nowhere, so
nothing the handler (or a process it starts) prints reaches the runtime's log.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import resource
import signal
import socket
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from runtime import logs
from runtime.capture import Tail
from runtime.channel import Channel, ChannelClosed
from runtime.context import Context
from runtime.function import FunctionSource
from runtime.progress import Mark
from runtime.invoke import OUTCOME_FIELDS, OUTPUT_TAIL, FunctionSettings, Request, call, decode_env, encode_env
from runtime.replies import Replies
from runtime.sandbox import die_with_parent

log = logging.getLogger(__name__)

_getpid, _exit = os.getpid, os._exit  # bound before user code: a handler cannot replace them for us


class Server:
    """The function, its context and the channel to the runtime."""

    def __init__(self, channel: Channel, settings: FunctionSettings, mark: Mark) -> None:
        self.channel = channel
        self.mark = mark  # how far we got, in memory the runtime reads if we die
        self.settings = settings
        self.function = FunctionSource(settings.path, settings.handler, settings.unpack_dir)
        self.context = Context(function_getmtime="", **settings.context_fields)
        self.tail = Tail(OUTPUT_TAIL)
        self.pid = _getpid()
        self.replies = Replies(channel, mark)
        # Further contexts by id (the fleet's hosts), each with its own env and context fields.
        self.contexts: dict[str, tuple[Context, FunctionSettings]] = {}

    def serve(self) -> None:
        """Answer requests until the runtime closes the socket."""
        while True:
            try:
                message = self.channel.receive()
            except ChannelClosed:
                return
            op, message_id = message.get("op"), message.get("id")
            if op == "batch":
                self.run_batch(message_id, message["requests"], message["blobs"], message.get("with_env", True),
                               message.get("buffered", True), message.get("context"))
            elif op == "batches":  # many hosts' batches in one message: the fleet's round
                self.run_batches(message["batches"], message["blobs"])
            else:
                self.only_worker_answers()
                self.replies.send_now({**self.answer(op, message), "id": message_id})

    def run_batches(self, parts: list[dict[str, Any]], raws: list[bytes]) -> None:
        start = 0
        for part in parts:
            count = len(part["requests"])
            self.run_batch(part["id"], part["requests"], raws[start:start + count], part["with_env"], True,
                           part["context"])
            start += count

    def run_batch(self, first: int, requests: list[list[Any]], raws: list[bytes], with_env: bool = True,
                  buffered: bool = True, context_id: str | None = None) -> None:
        context, settings = self.context_of(context_id)
        self.replies.begin(buffered, len(requests))
        last = len(requests) - 1
        for index, ((entry_id, problem, has_raw), raw) in enumerate(zip(requests, raws)):
            request = Request(entry_id, raw if has_raw else None, problem)
            outcome = call(self.function, context, settings, request, self.tail)
            self.only_worker_answers()
            # The env with the last reply (when asked for) saves the commit a round trip.
            env = encode_env(context.env) if with_env and index == last else None
            self.replies.add([first + index, *(outcome[name] for name in OUTCOME_FIELDS), env], index == last)
            self.mark.finished(first + index)  # after the reply is queued: a send that fails blames this call

    def context_of(self, context_id: str | None,
                   fields: dict[str, Any] | None = None) -> tuple[Context, FunctionSettings]:
        """The default context (None), or one by id, made with its own context fields when new."""
        if context_id is None:
            return self.context, self.settings
        if context_id not in self.contexts:
            settings = replace(self.settings, context_fields={**self.settings.context_fields, **(fields or {})})
            self.contexts[context_id] = Context(function_getmtime="", **settings.context_fields), settings
        return self.contexts[context_id]

    def answer(self, op: str, message: dict[str, Any]) -> dict[str, Any]:
        if op == "drop":  # a host the runtime no longer follows: its env goes with it
            self.contexts.pop(message.get("context"), None)
            return {}
        context = self.context_of(message.get("context"), message.get("fields"))[0]
        if op == "load":
            self.function.refresh(retry=True)
            current = self.function.current
            return {"version": current.version if current else None, "error": self.function.error, "pid": self.pid}
        if op == "env":
            data, error = encode_env(context.env)
            return {"env": data, "error": error}
        if op == "restore":
            context.env = decode_env(message["env"])
            last = message["last_execution"]
            context.last_execution = datetime.fromisoformat(last) if last else None
            return {}
        return {"unknown": op}

    def only_worker_answers(self) -> None:
        if _getpid() != self.pid:  # a copy the handler forked: it leaves before touching the replies' lock
            _exit(0)


def _quiet_standard_streams() -> TextIO:
    """Point fd 1 and 2 at /dev/null; return a stream on the runtime's stderr for our own log lines."""
    log_stream = os.fdopen(os.dup(2), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    return log_stream


def _configure(log_stream: TextIO, settings: FunctionSettings) -> None:
    logs.configure(os.environ.get("LOG_LEVEL", "INFO"))  # the runtime's format and level (it checked the level)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(log_stream)
    faulthandler.enable(file=log_stream)  # a crash in C code still says where
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the runtime, which stops us itself
    if settings.memory_mb:
        # Allocation past the limit raises MemoryError in the handler: an error record, not a dead host.
        limit = settings.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def main(argv: list[str]) -> None:
    die_with_parent(int(argv[2]))
    options = json.loads(argv[3])
    sys.path[:0] = options.pop("extra_paths")
    mark = Mark(options.pop("progress_fd"))
    settings = FunctionSettings(**{**options, "path": Path(options["path"]), "unpack_dir": Path(options["unpack_dir"])})
    _configure(_quiet_standard_streams(), settings)
    channel = Channel(socket.socket(fileno=int(argv[1])))
    Server(channel, settings, mark).serve()


if __name__ == "__main__":
    main(sys.argv)
