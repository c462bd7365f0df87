"""What the evaluator has seen and decided, stored all at once: transitions, states and cursors.

One MULTI/EXEC, fenced by the evaluator's lease, holds a batch's transitions (XADD), the alerts'
new states (HSET/HDEL) and the cursors of the streams read. A crash leaves all of it or none; a
replica that lost the lease cannot store anything. So each transition is stored exactly once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import redis

from runtime.alerts.config import AlertKeys
from runtime.alerts.evaluate import AlertState, Phase, Transition
from runtime.lease import Lease, LeaseLost

log = logging.getLogger(__name__)

TRANSITIONS_KEPT = 10_000  # entries of the transitions stream (a receiver further behind loses the oldest)


@dataclass(frozen=True)
class HostCursor:
    """Where the evaluator has read one host's streams to."""

    input: str | None = None  # input-stream entry id, or a digest of the plain key's value (polling)
    output: str | None = None  # output-stream entry id
    last_sample_ms: int | None = None  # server time of the newest sample seen

    def to_json(self) -> str:
        return json.dumps({"input": self.input, "output": self.output, "last_sample_ms": self.last_sample_ms})

    @classmethod
    def from_json(cls, text: str) -> HostCursor:
        data = json.loads(text)
        last = data.get("last_sample_ms")
        return cls(_text(data.get("input")), _text(data.get("output")), None if last is None else int(last))


@dataclass
class Checkpoint:
    states: dict[tuple[str, str], AlertState] = field(default_factory=dict)  # (rule, host) -> state
    cursors: dict[str, HostCursor] = field(default_factory=dict)  # host ("" the plain keys) -> cursor


@dataclass
class Batch:
    """Effects waiting to be committed together."""

    transitions: list[Transition] = field(default_factory=list)
    states: dict[tuple[str, str], AlertState] = field(default_factory=dict)
    cursors: dict[str, HostCursor] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.transitions or self.states or self.cursors)


def state_field(rule: str, host: str) -> str:
    """`<rule>@<host>`: neither a rule name nor a host id can contain '@'."""
    return f"{rule}@{host}"


class AlertStore:
    def __init__(self, client: redis.Redis, keys: AlertKeys, lease: Lease) -> None:
        self.client = client
        self.keys = keys
        self.lease = lease

    def load(self) -> Checkpoint:
        """The stored states and cursors; an unreadable entry is logged and left out."""
        checkpoint = Checkpoint()
        for name, text in self.client.hgetall(self.keys.states).items():
            rule, _, host = name.partition("@")
            try:
                checkpoint.states[(rule, host)] = AlertState.from_json(text)
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                log.error("alert_state_unreadable key=%s field=%r error=%s; starting it inactive",
                          self.keys.states, name, error)
        for host, text in self.client.hgetall(self.keys.cursors).items():
            try:
                checkpoint.cursors[host] = HostCursor.from_json(text)
            except (ValueError, TypeError, AttributeError) as error:
                log.error("alert_cursor_unreadable key=%s host=%r error=%s; reading from the newest sample",
                          self.keys.cursors, host, error)
        return checkpoint

    def commit(self, batch: Batch) -> list[str]:
        """Store the batch in one fenced transaction; the transitions' stream ids. Raises LeaseLost."""
        pipe = self.client.pipeline(transaction=True)
        self._fence(pipe)
        for transition in batch.transitions:
            pipe.xadd(self.keys.transitions, transition.fields(), maxlen=TRANSITIONS_KEPT, approximate=True)
        stored = {state_field(*key): s.to_json() for key, s in batch.states.items() if s.phase != Phase.INACTIVE}
        cleared = [state_field(*key) for key, s in batch.states.items() if s.phase == Phase.INACTIVE]
        if stored:
            pipe.hset(self.keys.states, mapping=stored)
        if cleared:
            pipe.hdel(self.keys.states, *cleared)
        if batch.cursors:
            pipe.hset(self.keys.cursors, mapping={host: c.to_json() for host, c in batch.cursors.items()})
        replies = pipe.execute()
        return [str(reply) for reply in replies[:len(batch.transitions)]]

    def _fence(self, pipe: redis.client.Pipeline) -> None:
        """Start a transaction that executes only while we hold the lease (WATCH it, check it, MULTI)."""
        pipe.watch(self.lease.key)
        if pipe.get(self.lease.key) != self.lease.holder:
            pipe.reset()
            self.lease.held = False
            raise LeaseLost(f"the lease {self.lease.key} is held by another evaluator")
        pipe.multi()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
