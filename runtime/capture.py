"""The handler's own prints: captured per invocation, only the tail kept, never in the runtime's log."""

from __future__ import annotations

import io
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class Tail(io.TextIOBase):
    """A text stream that keeps only the last `limit` characters written to it, and counts the rest."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.written = 0
        self._chunks: deque[str] = deque()
        self._kept = 0

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # what libraries that print (tqdm, click) ask before they write
        return "utf-8"

    @property
    def errors(self) -> str:
        return "replace"

    @property
    def buffer(self) -> BinaryTail:
        """`sys.stdout.buffer`, for handlers that write bytes."""
        return BinaryTail(self)

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.written += len(text)
        self._chunks.append(text[-self.limit:])
        self._kept += len(self._chunks[-1])
        while self._kept - len(self._chunks[0]) >= self.limit:  # drop whole chunks no longer needed
            self._kept -= len(self._chunks.popleft())
        return len(text)

    def text(self) -> str:
        """What the tail holds, with a note of how much came before it when anything was dropped."""
        kept = "".join(self._chunks)[-self.limit:]
        dropped = self.written - len(kept)
        return f"[{dropped:,} earlier characters not kept]\n{kept}" if dropped else kept

    def clear(self) -> None:
        self.written, self._kept = 0, 0
        self._chunks.clear()


class BinaryTail(io.RawIOBase):
    """Bytes written to a Tail, decoded as UTF-8 (bad bytes replaced)."""

    def __init__(self, tail: Tail) -> None:
        super().__init__()
        self.tail = tail

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.tail.write(bytes(data).decode("utf-8", "replace"))
        return len(data)


@contextmanager
def captured(tail: Tail) -> Iterator[Tail]:
    """sys.stdout and sys.stderr go to `tail` (emptied first) for the duration; restored even if replaced."""
    tail.clear()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = tail
    try:
        yield tail
    finally:
        sys.stdout, sys.stderr = saved
