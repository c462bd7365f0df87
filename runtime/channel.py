"""Length-prefixed JSON messages over a socket, for the runtime and its worker process.

Every reference the channel uses is bound when it is built, before any user code runs, so a handler
that replaces `json.dumps`, `sys.modules["json"]` or socket methods cannot change what goes over it.
Reads are buffered: a burst of replies costs one system call, not one per reply.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

HEADER = struct.Struct("!I")  # the length of the JSON body that follows
MAX_MESSAGE = 2**32 - 1
CHUNK = 1 << 18
# A wait already set within this much of the one asked for is kept as it is: each setting is a system
# call, and a deadline a few milliseconds late is harmless for timeouts of a second or more.
TIMEOUT_SLACK = 0.05


BLOB_MARK = b"\x00"  # ends the JSON part of a frame that carries raw bytes after it
BLOB_SIZES = "blob_sizes"


def _split(body: bytes, start: int, sizes: list[int]) -> list[bytes]:
    blobs = []
    for size in sizes:
        blobs.append(body[start:start + size])
        start += size
    if start != len(body):
        raise ValueError(f"raw parts add up to {start:,} bytes, the frame has {len(body):,}")
    return blobs


class ChannelClosed(Exception):
    """The other end closed the socket or it failed; `reason` says how."""


class ChannelTimeout(Exception):
    """No message came within the time allowed."""


class Channel:
    """One end of a socket pair carrying JSON objects."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sendall, self._recv, self._settimeout = sock.sendall, sock.recv, sock.settimeout
        self._timeout: float | None = None  # what the socket is set to: setting it costs a system call
        sock.settimeout(None)
        self._dumps, self._loads = json.dumps, json.loads
        self._pack, self._unpack = HEADER.pack, HEADER.unpack_from
        self._monotonic = time.monotonic
        self._buffer = bytearray()
        self._start = 0  # where the next frame begins in the buffer (consumed bytes are dropped in bulk)

    def send(self, message: Any, blobs: list[bytes] | None = None) -> None:
        """Send one JSON object; ChannelClosed when the other end is gone.

        `blobs` travel after it as raw bytes (the receiver finds them in the object's `blobs`): a
        sample's JSON text crosses as it is, never escaped into a string and parsed back out.
        """
        if not blobs:
            self.send_many([message])
            return
        body = b"".join([self._dumps({**message, BLOB_SIZES: [len(b) for b in blobs]}).encode(), BLOB_MARK, *blobs])
        self._write([self._pack(len(body)), body])

    def send_many(self, messages: list[Any]) -> None:
        """Send JSON values in one write (one system call, one wake-up of the reader)."""
        frames = []
        for message in messages:
            body = self._dumps(message).encode()
            if len(body) > MAX_MESSAGE:
                raise ValueError(f"message of {len(body):,} bytes is over {MAX_MESSAGE:,}")
            frames += (self._pack(len(body)), body)
        self._write(frames)

    def _write(self, frames: list[bytes]) -> None:
        data = b"".join(frames)
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"message of {len(data):,} bytes is over {MAX_MESSAGE:,}")
        try:
            self._sendall(data)
        except OSError as error:
            raise ChannelClosed(f"send failed: {error}") from None

    def receive(self, timeout: float | None = None) -> Any:
        """The next JSON value; ChannelTimeout after `timeout` seconds, ChannelClosed at the end."""
        deadline = None if timeout is None else self._monotonic() + timeout
        while True:
            body = self._frame()
            if body is not None:
                return self._decode(body)
            self._fill(deadline)

    def _decode(self, body: bytes) -> Any:
        mark = body.find(BLOB_MARK)  # never inside JSON text, where a NUL must be escaped
        try:
            message = self._loads((body if mark < 0 else body[:mark]).decode())  # text: no encoding guess
            if mark >= 0:
                message["blobs"] = _split(body, mark + 1, message.pop(BLOB_SIZES))
        except (ValueError, RecursionError, TypeError, KeyError, AttributeError) as error:
            raise ChannelClosed(f"unreadable message ({error!r})") from None
        return message

    def _frame(self) -> bytes | None:
        buffer, start = self._buffer, self._start
        if len(buffer) - start < HEADER.size:
            return None
        (length,) = self._unpack(buffer, start)
        end = start + HEADER.size + length
        if len(buffer) < end:
            return None
        self._start = end
        return bytes(buffer[start + HEADER.size:end])

    def _fill(self, deadline: float | None) -> None:
        remaining = None if deadline is None else deadline - self._monotonic()
        if remaining is not None and remaining <= 0:
            raise ChannelTimeout()
        if self._start:  # drop what was read, once per refill rather than once per message
            del self._buffer[:self._start]
            self._start = 0
        try:
            if self._needs_timeout(remaining):
                self._settimeout(remaining)
                self._timeout = remaining
            data = self._recv(CHUNK)
        except TimeoutError:
            raise ChannelTimeout() from None
        except OSError as error:
            raise ChannelClosed(f"receive failed: {error}") from None
        if not data:
            raise ChannelClosed("the other end closed the connection")
        self._buffer += data

    def _needs_timeout(self, remaining: float | None) -> bool:
        current = self._timeout
        if remaining is None or current is None:
            return remaining is not current
        return abs(remaining - current) > TIMEOUT_SLACK

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()
