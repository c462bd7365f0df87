"""The checkpoint: the cursor of the last committed sample, `context.env` as of it, the last execution.

Stored as one JSON document in `<output>:state`. The env is spliced in as the JSON text the invoker
gave (never decoded and encoded again on its way), and decoded here only to refuse a bad one.
"""

from __future__ import annotations

from json import dumps as json_dumps, loads as json_loads  # bound at import: out of a handler's reach
import logging
from dataclasses import dataclass
from datetime import datetime

import redis

from runtime import cursor as cursors
from runtime import envcodec, keytypes, schema
from runtime.invoke import EMPTY_ENV

log = logging.getLogger(__name__)


ENV_SEPARATOR = ', "env": '  # the env comes last in the document, after this (the commit script splices there)


@dataclass(frozen=True)
class Checkpoint:
    """Where the loop is, and the env as of `env_cursor` (at or before `cursor`: replay the samples between)."""

    cursor: cursors.Cursor | None = None
    env_text: str | None = EMPTY_ENV  # envcodec JSON text; None when the env is not durable
    last_execution: datetime | None = None
    env_cursor: cursors.Cursor | None = None  # the cursor the env was taken at, when not `cursor`
    env_error: str | None = None  # why the env is not durable (env_text None)

    def header(self) -> str:
        """The document up to the env: everything but the env itself, which may be kept from the stored one."""
        env_cursor = self.env_cursor or self.cursor
        return json_dumps({"cursor": self.cursor.text() if self.cursor else None,
                           "env_cursor": env_cursor.text() if env_cursor else None,
                           "env_durable": self.env_error is None, "env_error": self.env_error,
                           "last_execution": self.last_execution.isoformat() if self.last_execution else None})[:-1]

    def env_json(self) -> str:
        return self.env_text if self.env_text is not None else "null"

    def to_json(self) -> str:
        """The stored document, with the env's JSON text spliced in as it came."""
        return f"{self.header()}{ENV_SEPARATOR}{self.env_json()}}}"

    def replay_from(self) -> cursors.StreamCursor | None:
        """The cursor after which samples must run again to bring the env up to `cursor`; None if none."""
        env_cursor = self.env_cursor or self.cursor
        if isinstance(env_cursor, cursors.StreamCursor) and isinstance(self.cursor, cursors.StreamCursor):
            return env_cursor if env_cursor.order() < self.cursor.order() else None
        return None


class CheckpointStore:
    """Reads the stored checkpoint; the Committer writes it, in the same script as the outputs."""

    def __init__(self, client: redis.Redis, keys: schema.Keys) -> None:
        self.client = client
        self.key = keys.state

    def load(self) -> Checkpoint:
        """The stored checkpoint; an empty one when there is none or it cannot be read (logged)."""
        keytypes.check(self.client, self.key, "string")
        text = self.client.get(self.key)
        if text is None:
            return Checkpoint()
        try:
            return parse(text)
        except (ValueError, TypeError, AttributeError, RecursionError) as error:
            log.error("checkpoint_unreadable key=%s error=%s; starting without it", self.key, error)
            return Checkpoint()


def parse(text: str) -> Checkpoint:
    """A checkpoint from its stored JSON; ValueError/TypeError when it is not one."""
    state = json_loads(text)
    env = state.get("env")
    last = state.get("last_execution")
    if env is not None:
        envcodec.decode(env)  # refuse it here, not in the worker
    cursor = cursors.parse(state.get("cursor"))
    return Checkpoint(cursor=cursor, env_text=None if env is None else json_dumps(env),
                      last_execution=datetime.fromisoformat(last) if last else None,
                      env_cursor=_other_than(cursors.parse(state.get("env_cursor")), cursor),
                      env_error=state.get("env_error") if isinstance(state.get("env_error"), str) else None)


def _other_than(env_cursor: cursors.Cursor | None, cursor: cursors.Cursor | None) -> cursors.Cursor | None:
    return None if env_cursor == cursor else env_cursor


class MemoryCheckpoints:
    """No output key: nothing is stored, so the checkpoint lives in memory only."""

    def __init__(self) -> None:
        self.latest = Checkpoint(env_text=None)

    def load(self) -> Checkpoint:
        return self.latest
