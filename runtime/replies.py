"""The worker's replies to a batch, sent in bursts without ever holding one behind a call that hangs.

One write per reply costs the worker and the runtime a system call and a wake-up each, about as much
as a trivial handler's call itself. So replies wait in a buffer for at most FLUSH_AFTER and go out
together; the end of a batch sends them at once. While a batch runs, a flusher thread looks every
FLUSH_AFTER: when a call runs long, the replies before it leave, so a hung call is the only one
without a reply and the runtime's timeout blames the right sample. (A call stuck in C code that
holds the GIL keeps the flusher out too: after a timeout the runtime asks for the next batch
unbuffered, see `Worker`, so a sample is never blamed twice.)
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from runtime.channel import Channel, ChannelClosed
from runtime.progress import Mark

FLUSH_AFTER = 0.001  # seconds a reply may wait for company

_exit, _monotonic, _sleep = os._exit, time.monotonic, time.sleep  # bound before user code runs


class Replies:
    """Buffered replies on a channel, flushed by size of wait, at the end of a batch, or by the flusher."""

    def __init__(self, channel: Channel, mark: Mark) -> None:
        self.channel = channel
        self.mark = mark
        self.buffered = True  # False: every reply goes out at once (the batch after a lost invocation)
        self._lock = threading.Lock()
        self._pending: list[Any] = []
        self._oldest = 0.0
        self._running = threading.Event()  # set while a batch runs: the flusher sleeps otherwise
        threading.Thread(target=self._flusher, name="reply-flusher", daemon=True).start()

    def begin(self, buffered: bool, count: int) -> None:
        """A batch of `count` invocations starts. One alone needs no flusher: its reply is the last, sent at once
        (and waking the flusher would cost a thread switch while the handler runs)."""
        self.buffered = buffered
        if count > 1:
            self._running.set()

    def add(self, reply: Any, last: bool) -> None:
        """Queue one reply; send the queue if it is the batch's last, unbuffered, or the oldest waited enough."""
        with self._lock:
            if not self._pending:
                self._oldest = _monotonic()
            self._pending.append(reply)
            if last or not self.buffered or _monotonic() - self._oldest >= FLUSH_AFTER:
                self._flush()
        if last:
            self._running.clear()

    def send_now(self, reply: Any) -> None:
        with self._lock:
            self._pending.append(reply)
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            self.channel.send_many(pending)
        except ChannelClosed:  # the runtime is gone, or a handler broke the socket: the unsent calls are lost
            if pending and type(pending[0]) is list:  # from the first of them on, as the runtime will see it
                self.mark.finished(pending[0][0] - 1)
            _exit(0)

    def _flusher(self) -> None:
        while True:
            self._running.wait()
            _sleep(FLUSH_AFTER)
            with self._lock:
                if self._pending and _monotonic() - self._oldest >= FLUSH_AFTER:
                    self._flush()
