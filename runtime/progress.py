"""How far the worker got: the id of the last invocation whose reply it queued, in memory both share.

Replies wait in the worker's buffer for up to a millisecond (runtime/replies.py), so when the worker
dies mid-batch the runtime cannot tell from the replies alone which call ended it: the ones before it
may have run and lost their replies with the process. The worker writes each finished invocation's
id here (a store to shared memory, no system call), and the runtime reads it after the death: the
culprit is the next one. A handler can overwrite it, but only to shift the blame among its own
samples: the runtime keeps the value within the batch it awaits.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile

SLOT = struct.Struct("q")
NONE = -1  # no invocation finished yet


class Progress:
    """The runtime's end: made before each worker starts, its descriptor passed to the worker."""

    def __init__(self) -> None:
        self.fd = _shared_file()
        os.ftruncate(self.fd, SLOT.size)
        self._map = mmap.mmap(self.fd, SLOT.size)
        SLOT.pack_into(self._map, 0, NONE)

    def last(self) -> int:
        """The id of the last invocation the worker finished (NONE before the first)."""
        return SLOT.unpack_from(self._map, 0)[0]

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)


class Mark:
    """The worker's end, opened from the descriptor before any user code runs."""

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, SLOT.size)
        os.close(fd)
        self._pack = SLOT.pack_into

    def finished(self, invocation: int) -> None:
        self._pack(self._map, 0, invocation)


def _shared_file() -> int:
    if hasattr(os, "memfd_create"):  # Linux: memory with no name in any file system
        return os.memfd_create("runtime-progress", os.MFD_CLOEXEC)
    handle = tempfile.TemporaryFile()
    fd = os.dup(handle.fileno())
    handle.close()
    return fd
