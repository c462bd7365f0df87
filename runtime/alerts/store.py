"""What the evaluator has seen and decided, stored all at once: transitions, states and cursors.

One server-side script holds a batch's transitions (XADD), the alerts' new states (HSET/HDEL) and
the cursors of the streams read. It first checks the lease and the type of every key it writes
(Redis would apply the rest of a MULTI/EXEC in which one command fails), then writes. A crash
leaves all of it or none; a replica that lost the lease stores nothing. So each transition is
stored exactly once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import redis

from runtime.alerts.evaluate import AlertState, Phase, Transition
from runtime import keytypes, schema
from runtime.keytypes import KeyTypeError
from runtime.lease import Lease, LeaseLost

log = logging.getLogger(__name__)

TRANSITIONS_KEPT = 10_000  # entries of the transitions stream (a receiver further behind loses the oldest)

# KEYS: lease, transitions, states, cursors. ARGV: holder, entries kept, then counted lists: the
# transitions (each a count of fields then the pairs), states to set (pairs), states to clear,
# cursors (pairs). Replies {'ok', id...}, or why nothing was written.
COMMIT = """
local expected = {'string', 'stream', 'hash', 'hash'}
""" + keytypes.FENCE_LUA + """local reply, i = {'ok'}, 4
for _ = 1, tonumber(ARGV[3]) do
  local n = tonumber(ARGV[i]); i = i + 1
  reply[#reply + 1] = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, i, i + n - 1))
  i = i + n
end
local function pairs_into(key)  -- one HSET per pair: no unpack limit on thousands of alerts
  local n = tonumber(ARGV[i]); i = i + 1
  for j = i, i + 2 * n - 1, 2 do redis.call('HSET', key, ARGV[j], ARGV[j + 1]) end
  i = i + 2 * n
end
pairs_into(KEYS[3])
local cleared = tonumber(ARGV[i]); i = i + 1
for j = i, i + cleared - 1 do redis.call('HDEL', KEYS[3], ARGV[j]) end
i = i + cleared
pairs_into(KEYS[4])
return reply
"""


@dataclass(frozen=True)
class HostCursor:
    """Where the evaluator has read one host's streams to."""

    input: str | None = None  # input-stream entry id, or a digest of the plain key's value (polling)
    output: str | None = None  # output-stream entry id
    last_sample_ms: int | None = None  # server time of the newest sample seen

    def to_json(self) -> str:
        """As stored in the cursors hash."""
        return json.dumps({"input": self.input, "output": self.output, "last_sample_ms": self.last_sample_ms})

    @classmethod
    def from_json(cls, text: str) -> HostCursor:
        """Raises ValueError (or TypeError) for anything but a stored cursor."""
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
    def __init__(self, client: redis.Redis, keys: schema.AlertKeys, lease: Lease) -> None:
        self.client = client
        self.keys = keys
        self.lease = lease
        self._commit = client.register_script(COMMIT)

    def load(self) -> Checkpoint:
        """The stored states and cursors; an unreadable entry is logged and left out (KeyTypeError for a
        key of another type)."""
        keytypes.check(self.client, self.keys.states, "hash")
        keytypes.check(self.client, self.keys.cursors, "hash")
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
        """Store the batch all at once; the transitions' stream ids. LeaseLost or KeyTypeError: nothing stored."""
        stored = {state_field(*key): s.to_json() for key, s in batch.states.items() if s.phase != Phase.INACTIVE}
        cleared = [state_field(*key) for key, s in batch.states.items() if s.phase == Phase.INACTIVE]
        cursors = {host: cursor.to_json() for host, cursor in batch.cursors.items()}
        args: list[str | int] = [self.lease.holder, TRANSITIONS_KEPT, len(batch.transitions)]
        for transition in batch.transitions:
            fields = transition.fields()
            args += [2 * len(fields), *_pairs(fields)]
        args += [len(stored), *_pairs(stored), len(cleared), *cleared, len(cursors), *_pairs(cursors)]
        keys = [self.lease.key, self.keys.transitions, self.keys.states, self.keys.cursors]
        reply = [part.decode() if isinstance(part, bytes) else part for part in self._commit(keys=keys, args=args)]
        if reply[0] == "wrongtype":
            raise KeyTypeError(*reply[1:4])
        if reply[0] == "lease":
            self.lease.held = False
            raise LeaseLost(f"the lease {self.lease.key} is held by {reply[1]!r}, not by this evaluator")
        return reply[1:]


def _pairs(mapping: dict[str, str]) -> list[str]:
    return [part for item in mapping.items() for part in item]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
