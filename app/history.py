"""One stream's recent entries as a frame: the newest part read at once, older history in the background.

The first read of a long window takes only the newest FIRST_READ entries, so the page paints at once;
the rest of the window is read by a background thread and joined when complete. Every later refresh
reads only entries newer than the last id seen. Rows Redis has trimmed are forgotten too, so memory
stays bounded by the server's retention.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pandas as pd
import redis

from app.entries import ENTRY_MS, to_frame
from runtime import schema

log = logging.getLogger(__name__)

FIRST_READ = 5_000  # entries read before the first paint; older ones follow in the background
READ_CHUNK = 10_000  # entries per XRANGE call while catching up
# The background read waits this long before it starts: parsing a day of entries takes seconds of CPU, and
# started at once it took half the process (the GIL) from the first paint it was meant to speed up.
BACKFILL_DELAY_SECONDS = 1.0
HISTORY_SECONDS = 24 * 3600


def _empty() -> pd.DataFrame:
    return pd.DataFrame(index=pd.DatetimeIndex([], name="time"))


class StreamHistory:
    """The entries of one stream from `loaded_from_ms` (server time) to the newest."""

    def __init__(self, key: str, parse: Callable) -> None:
        self.key = key
        self.parse = parse
        self.frame = _empty()
        self.last_id: str | None = None
        self.oldest_id: str | None = None
        self.loaded_from_ms: int | None = None  # everything from here on is in the frame
        self.skipped = 0
        self.skip_reason: str | None = None
        self._lock = threading.Lock()
        self._backfill: threading.Thread | None = None

    @property
    def loading(self) -> bool:
        return self._backfill is not None and self._backfill.is_alive()

    def refresh(self, client: redis.Redis, need_from_ms: int) -> None:
        """Read what is new, start reading older history when the window needs it, forget the trimmed."""
        if self.last_id is None:
            self._first_read(client, need_from_ms)
        else:
            self._append(client)
        if self.loaded_from_ms is not None and need_from_ms < self.loaded_from_ms and not self.loading:
            self._backfill = threading.Thread(target=self._read_older, args=(client, need_from_ms),
                                              name=f"backfill {self.key}", daemon=True)
            self._backfill.start()
        if not self.frame.empty:
            self._trim(client)

    def _parsed(self, entries: list) -> pd.DataFrame:
        frame, skipped, reason = to_frame(entries, self.parse)
        self.skipped += skipped
        self.skip_reason = reason or self.skip_reason
        return frame

    def _first_read(self, client: redis.Redis, need_from_ms: int) -> None:
        entries = client.xrevrange(self.key, max="+", min=str(need_from_ms), count=FIRST_READ)
        if not entries:
            return
        entries.reverse()
        self.last_id, self.oldest_id = entries[-1][0], entries[0][0]
        with self._lock:
            self.frame = self._sorted(self._parsed(entries))
        complete = len(entries) < FIRST_READ
        self.loaded_from_ms = need_from_ms if complete else schema.stream_id_millis(self.oldest_id)

    def _append(self, client: redis.Redis) -> None:
        parts = []
        while True:
            entries = client.xrange(self.key, min=f"({self.last_id}", count=READ_CHUNK)
            if not entries:
                break
            parts.append(self._parsed(entries))
            self.last_id = entries[-1][0]
            if len(entries) < READ_CHUNK:
                break
        if parts:
            with self._lock:
                self.frame = self._sorted(pd.concat([self.frame, *parts]))

    def _read_older(self, client: redis.Redis, need_from_ms: int) -> None:
        """Background: the entries from `need_from_ms` up to the oldest one loaded, joined in one step."""
        time.sleep(BACKFILL_DELAY_SECONDS)  # after the first paint
        try:
            parts, start = [], str(need_from_ms)
            while True:
                entries = client.xrange(self.key, min=start, max=f"({self.oldest_id}", count=READ_CHUNK)
                if entries:
                    parts.append(self._parsed(entries))
                    start = f"({entries[-1][0]}"
                if len(entries) < READ_CHUNK:
                    break
            with self._lock:
                self.frame = self._sorted(pd.concat([*parts, self.frame]))
                self.loaded_from_ms = need_from_ms
        except Exception:  # the next tick starts it again; the page keeps what it has
            log.exception("reading older entries of %s failed", self.key)

    @staticmethod
    def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
        return frame if frame.index.is_monotonic_increasing else frame.sort_index(kind="stable")

    def _trim(self, client: redis.Redis) -> None:
        """Keep a day at most, and nothing Redis has trimmed away."""
        oldest = client.xrange(self.key, count=1)
        floor = schema.stream_id_millis(oldest[0][0]) if oldest else 0
        with self._lock:
            frame = self.frame
            keep = frame[ENTRY_MS].to_numpy() >= max(floor, int(frame[ENTRY_MS].max()) - HISTORY_SECONDS * 1000)
            if not keep.all():
                self.frame = frame.loc[keep]
