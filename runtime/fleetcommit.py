"""The hosts' commits of one round in one pipeline: one round trip to Redis for every host read together.

Each host's commit.Committer runs its usual fenced script; during a round the call is queued in the
round's pipeline instead of sent at once, and its reply is checked when the round is sent. A commit
that the script refused (lease taken by another replica, a key of the wrong type) leaves that host's
runtime ahead of what is stored: the host is then told to re-read its checkpoint before its next batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis

from runtime.keytypes import KeyTypeError
from runtime.lease import LeaseLost

log = logging.getLogger(__name__)

OK = ["ok"]


class CommitRound:
    """The commits queued since `open()`; `send()` applies them in one round trip and checks each reply."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.pipe: redis.client.Pipeline | None = None
        self.queued: list[Any] = []  # who each queued commit is for

    def open(self) -> None:
        self.pipe, self.queued = self.client.pipeline(transaction=False), []

    def script(self, script: Callable[..., Any], owner: Any) -> Callable[..., Any]:
        """The committer's script, queued while a round is open, else run at once."""

        def run(keys: list[str], args: list[Any]) -> Any:
            if self.pipe is None:
                return script(keys=keys, args=args)
            script(keys=keys, args=args, client=self.pipe)
            self.queued.append(owner)
            return OK  # checked when the round is sent

        return run

    def send(self) -> list[tuple[Any, Exception]]:
        """Apply the queued commits; the owners whose commit stored nothing, with why."""
        pipe, queued = self.pipe, self.queued
        self.pipe, self.queued = None, []
        if pipe is None or not queued:
            return []
        replies = pipe.execute(raise_on_error=False)
        failed = []
        for owner, reply in zip(queued, replies):
            problem = refusal(reply)
            if problem is not None:
                failed.append((owner, problem))
        return failed

    def abandon(self) -> None:
        if self.pipe is not None:
            self.pipe.reset()
        self.pipe, self.queued = None, []


def refusal(reply: Any) -> Exception | None:
    """Why the commit script stored nothing (the same replies Committer.commit checks), None when it did."""
    if isinstance(reply, (redis.ConnectionError, redis.TimeoutError)):
        raise reply
    if isinstance(reply, Exception):
        return reply
    outcome = [part.decode() if isinstance(part, bytes) else part for part in reply]
    if outcome[0] == "wrongtype":
        return KeyTypeError(*outcome[1:4])
    if outcome[0] == "lease":
        return LeaseLost(f"the lease is held by {outcome[1]!r}, not by this runtime")
    return None
