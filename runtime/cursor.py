"""Where the loop is in its input: a stream entry id, or (polling the plain key) a digest of the value.

The checkpoint stores a cursor as text (`text()` / `parse()`); everywhere else it is a typed value,
so "is this a stream position?" is an isinstance check, not a string prefix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

POLL_TEXT_PREFIX = "poll:"  # how a poll cursor is written in the checkpoint (older checkpoints too)
MAX_SEQUENCE = 2**64 - 1


@dataclass(frozen=True, order=False)
class StreamCursor:
    """A stream entry id `<ms>-<seq>`: the last entry handled."""

    millis: int
    seq: int

    @classmethod
    def of(cls, entry_id: str) -> StreamCursor:
        """The cursor of an entry id, ValueError when it is not `<ms>-<seq>`."""
        millis, _, seq = entry_id.partition("-")
        if not (millis.isdigit() and seq.isdigit()):
            raise ValueError(f"{entry_id!r} is not a stream entry id like 1700000000000-0")
        return cls(int(millis), int(seq))

    @property
    def entry_id(self) -> str:
        return f"{self.millis}-{self.seq}"

    def just_before(self) -> StreamCursor:
        """The id XREAD must be given so that this entry itself comes next."""
        return StreamCursor(self.millis, self.seq - 1) if self.seq else StreamCursor(self.millis - 1, MAX_SEQUENCE)

    def order(self) -> tuple[int, int]:
        return self.millis, self.seq

    def text(self) -> str:
        return self.entry_id


@dataclass(frozen=True)
class PollCursor:
    """The value of the plain key handled last, as a digest: polling runs only when it changes."""

    digest: str

    @classmethod
    def of_value(cls, raw: str) -> PollCursor:
        return cls(hashlib.sha1(raw.encode("utf-8", "surrogateescape")).hexdigest())

    @property
    def entry_id(self) -> None:
        return None

    def text(self) -> str:
        return POLL_TEXT_PREFIX + self.digest


Cursor = StreamCursor | PollCursor
STREAM_START = StreamCursor(0, 0)


def parse(text: object) -> Cursor | None:
    """A cursor from the checkpoint's text; None when there is none, ValueError when it is not one."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise ValueError(f"cursor {text!r} is not text")
    if text.startswith(POLL_TEXT_PREFIX):
        return PollCursor(text.removeprefix(POLL_TEXT_PREFIX))
    return StreamCursor.of(text)
