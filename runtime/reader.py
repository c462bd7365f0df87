"""Reading samples: block on the input stream, or poll the plain key when there is no stream.

The blocking read runs on a connection of its own, so a stop can wake it at once (CLIENT UNBLOCK)
instead of waiting for its block to end. Entries are checked here: one that is not text, or has no
sample, becomes a Sample with a `problem` (an input_invalid record), never an exception.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis

from runtime import keytypes, schema
from runtime.cursor import STREAM_START, Cursor, PollCursor, StreamCursor
from runtime.invoke import Request
from runtime.status import Mode

log = logging.getLogger(__name__)

POLL_HANDOVER_SEARCH = 1000  # newest stream entries searched for the value polled last
STREAM_NOTICE_SECONDS = 1.0  # while polling, how soon a new input stream is noticed


@dataclass(frozen=True)
class Sample:
    cursor: Cursor
    raw: str | None  # the JSON text; None when the entry is unusable
    problem: str | None = None  # why the entry is unusable, when raw is None

    def request(self) -> Request:
        return Request(self.cursor.entry_id, self.raw, self.problem)


class Reader:
    def __init__(self, client: redis.Redis, keys: schema.Keys, stop: threading.Event, interval: float,
                 batch_size: int, block_seconds: float, start_from_earliest: bool) -> None:
        self.client = client
        self.keys = keys
        self.stop = stop
        self.interval, self.batch_size, self.block_ms = interval, batch_size, int(block_seconds * 1000)
        self.start_from_earliest = start_from_earliest
        self.mode = Mode.POLL
        self.started_ms: int | None = None  # the server's clock when this runtime first read
        self._blocking: redis.Redis | None = None  # a connection of its own, made at the first read
        self._blocking_id: int | None = None
        self._next_poll = 0.0

    def mark_start(self) -> None:
        """Note when this runtime started, on the server's clock (stream ids come from it), once."""
        if self.started_ms is None:
            seconds, micros = self.client.time()
            self.started_ms = seconds * 1000 + micros // 1000

    def next_batch(self, after: Cursor | None) -> list[Sample]:
        """The samples after `after`, waiting for some a while; [] when none came."""
        self.mark_start()
        if self.mode is Mode.STREAM or self._stream_exists():
            if self.mode is not Mode.STREAM:
                log.info("mode=stream key=%s", self.keys.input_stream)
            self.mode = Mode.STREAM
            return self._read_stream(after)
        return self._poll(after)

    def wake(self) -> None:
        """End a blocking read now (from another thread): the loop then sees its stop flag."""
        unblock(self.client, self._blocking_id)

    def close(self) -> None:
        if self._blocking is not None:
            self._blocking.close()

    def trimmed_after(self, cursor: Cursor | None) -> str | None:
        """Which samples retention trimmed before this runtime read them (logged), None when none were."""
        if not isinstance(cursor, StreamCursor) or not self._stream_exists():
            return None
        oldest = self.client.xrange(self.keys.input_stream, count=1)
        if not oldest or StreamCursor.of(oldest[0][0]).order() <= cursor.order():
            return None
        log.error("samples_skipped after=%s before=%s: the stream was trimmed past the checkpoint while the "
                  "runtime was away; raise RETENTION_SECONDS or keep the runtime running", cursor.text(), oldest[0][0])
        return f"after {cursor.text()}, before {oldest[0][0]}"

    def _stream_exists(self) -> bool:
        keytypes.check(self.client, self.keys.input_stream, "stream")
        return bool(self.client.exists(self.keys.input_stream))

    def _read_stream(self, after: Cursor | None) -> list[Sample]:
        start = after if isinstance(after, StreamCursor) else self._start_cursor(after)
        if self._blocking is None:
            self._blocking = redis.Redis(connection_pool=self.client.connection_pool, single_connection_client=True)
        if self._blocking_id is None:
            self._blocking_id = self._blocking.client_id()
        try:
            reply = self._blocking.xread({self.keys.input_stream: start.entry_id}, count=self.batch_size,
                                         block=self.block_ms)
        except redis.ResponseError as error:
            if keytypes.is_wrongtype(error):
                keytypes.check(self.client, self.keys.input_stream, "stream")
            raise
        except redis.ConnectionError:
            self._blocking_id = None  # a new connection has another id
            raise
        if not reply:
            if not self.stop.is_set() and not self.client.exists(self.keys.input_stream):
                self.mode = Mode.POLL
                log.info("mode=poll key=%s (the stream is gone)", self.keys.input)
            return []
        return [entry_sample(entry_id, fields) for entry_id, fields in reply[0][1]]

    def _start_cursor(self, polled: PollCursor | None) -> StreamCursor:
        """Where reading the stream starts without a stream checkpoint.

        After polling: right after the entry holding the value handled last, so nothing published
        while we waited is skipped. Else the first entry, or (START_FROM=latest) the newest one, or
        every sample published since this runtime started if that is more.
        """
        if self.start_from_earliest:
            return STREAM_START
        recent = self.client.xrevrange(self.keys.input_stream, count=POLL_HANDOVER_SEARCH)
        for entry_id, fields in recent if polled else ():
            try:
                if PollCursor.of_value(text_of(schema.entry_payload(fields))) == polled:
                    return StreamCursor.of(entry_id)
            except (schema.SampleError, UnicodeError):
                continue
        if not recent:
            return STREAM_START
        newest = StreamCursor.of(recent[0][0]).just_before()
        since_start = StreamCursor(self.started_ms - 1, 2**64 - 1)
        return min(newest, since_start, key=StreamCursor.order)

    def _poll(self, after: Cursor | None) -> list[Sample]:
        """The course's trigger: GET the key every INTERVAL, but run only when the value changed."""
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + self.interval
            keytypes.check(self.client, self.keys.input, "string")
            raw = self.client.get(self.keys.input)
            if raw is not None:
                sample = polled_sample(raw)
                if sample.cursor != after and not self.client.exists(self.keys.input_stream):
                    return [sample]  # (when the stream began meanwhile, the sample is taken from there, in order)
        self.stop.wait(min(self._next_poll - time.monotonic(), STREAM_NOTICE_SECONDS))
        return []


def unblock(client: redis.Redis, client_id: int | None) -> None:
    """End the blocking command of connection `client_id` now (CLIENT UNBLOCK), if there is one."""
    if client_id is not None:
        try:
            client.client_unblock(client_id)
        except redis.RedisError:
            pass


def text_of(value: str | bytes) -> str:
    """Text read from Redis; UnicodeError when it held bytes that are not UTF-8."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    value.encode("utf-8")  # a client decoding with surrogateescape leaves lone surrogates for bad bytes
    return value


def entry_sample(entry_id: str, fields: dict) -> Sample:
    cursor = StreamCursor.of(entry_id)
    try:
        return Sample(cursor, text_of(schema.entry_payload(fields)))
    except schema.SampleError as error:
        return Sample(cursor, None, str(error))
    except UnicodeError:
        return Sample(cursor, None, "the sample is not UTF-8 text; the collector writes JSON text")


def polled_sample(raw: str) -> Sample:
    cursor = PollCursor.of_value(raw)
    try:
        return Sample(cursor, text_of(raw))
    except UnicodeError:
        return Sample(cursor, None, "the sample is not UTF-8 text; the collector writes JSON text")
