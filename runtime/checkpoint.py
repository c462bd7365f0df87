"""The checkpoint: the cursor of the last committed sample, `context.env` as of it, the last execution.

Stored as one JSON document in `<output>:state`. The env is spliced in as the JSON text the invoker
gave (never decoded and encoded again on its way), and decoded here only to refuse a bad one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

import redis

from runtime import cursor as cursors
from runtime import envcodec, keytypes, schema
from runtime.invoke import EMPTY_ENV

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    cursor: cursors.Cursor | None = None
    env_text: str | None = EMPTY_ENV  # envcodec JSON text; None when the env is not durable
    last_execution: datetime | None = None

    def to_json(self, env_error: str | None) -> str:
        """The stored document, with the env's JSON text spliced in as it came."""
        fields = json.dumps({"cursor": self.cursor.text() if self.cursor else None,
                             "env_durable": env_error is None, "env_error": env_error,
                             "last_execution": self.last_execution.isoformat() if self.last_execution else None})
        return f'{fields[:-1]}, "env": {self.env_text if self.env_text is not None else "null"}}}'


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
    state = json.loads(text)
    env = state.get("env")
    last = state.get("last_execution")
    if env is not None:
        envcodec.decode(env)  # refuse it here, not in the worker
    return Checkpoint(cursor=cursors.parse(state.get("cursor")), env_text=None if env is None else json.dumps(env),
                      last_execution=datetime.fromisoformat(last) if last else None)


class MemoryCheckpoints:
    """No output key: nothing is stored, so the checkpoint lives in memory only."""

    def __init__(self) -> None:
        self.latest = Checkpoint(env_text=None)

    def load(self) -> Checkpoint:
        return self.latest
