"""The commit: a batch's outputs, error records, checkpoint and status counters, all or nothing.

One server-side script, one round trip. It first checks the lease fence and the type of every key
it writes, and returns without writing anything when one is wrong; only then does it write. The
output stream is trimmed by age on the server's own clock (`TIME`), never the runtime's.
"""

from __future__ import annotations

import dataclasses
from json import dumps as json_dumps  # bound at import: out of a handler's reach
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import redis

from runtime import keytypes, schema, status
from runtime.checkpoint import ENV_SEPARATOR, Checkpoint, MemoryCheckpoints
from runtime.config import ERRORS_KEPT
from runtime.keytypes import KeyTypeError
from runtime.cursor import StreamCursor
from runtime.invoke import Outcome
from runtime.lease import LeaseLost
from runtime.reader import Sample

log = logging.getLogger(__name__)

# KEYS: lease, output, output stream, errors stream, state, status.
# ARGV: holder, retention ms, errors kept, the checkpoint up to its env, the env's JSON ('' keeps the
# stored one), latest output ('' for none), the lease's ms to renew it for ('0': leave it), then counted lists: output-stream entries and error
# entries (each a count of fields then the pairs), status fields (pairs), status counters (pairs).
COMMIT = """
local separator = '<<ENV_SEPARATOR>>'
local expected = {'string', 'string', 'stream', 'stream', 'string', 'hash'}
""" + keytypes.FENCE_LUA + """if ARGV[7] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
local now = redis.call('TIME')
local minid = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[2]))
local i = 8
local function entries(add)
  local count = tonumber(ARGV[i]); i = i + 1
  for _ = 1, count do
    local n = tonumber(ARGV[i]); i = i + 1
    add({unpack(ARGV, i, i + n - 1)}); i = i + n
  end
end
entries(function(pairs) redis.call('XADD', KEYS[3], 'MINID', '~', minid, '*', unpack(pairs)) end)
entries(function(pairs) redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', unpack(pairs)) end)
if ARGV[6] ~= '' then redis.call('SET', KEYS[2], ARGV[6]) end
local env = ARGV[5]
if env == '' then
  local stored = redis.call('GET', KEYS[5])
  local at = stored and string.find(stored, separator, 1, true)
  env = at and string.sub(stored, at + #separator, -2) or 'null'
end
redis.call('SET', KEYS[5], ARGV[4] .. separator .. env .. '}')
local count = tonumber(ARGV[i]); i = i + 1
if count > 0 then redis.call('HSET', KEYS[6], unpack(ARGV, i, i + 2 * count - 1)) end
i = i + 2 * count
count = tonumber(ARGV[i]); i = i + 1
for _ = 1, count do redis.call('HINCRBY', KEYS[6], ARGV[i], ARGV[i + 1]); i = i + 2 end
return {'ok'}
"""


@dataclass
class Effects:
    """Everything one commit writes besides the checkpoint."""

    outputs: list[dict[str, str]] = field(default_factory=list)  # output-stream entries
    errors: list[dict[str, str]] = field(default_factory=list)  # error records
    latest_output: str | None = None
    status: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


class Committer:
    """Runs the commit script for one output key, fenced by the lease `holder`."""

    def __init__(self, client: redis.Redis, keys: schema.Keys, retention_seconds: float) -> None:
        self.keys = keys
        self.retention_ms = int(retention_seconds * 1000)
        self._script = client.register_script(COMMIT.replace("<<ENV_SEPARATOR>>", ENV_SEPARATOR))

    def commit(self, holder: str, checkpoint: Checkpoint, effects: Effects, with_env: bool = True,
               renew_lease_ms: int = 0) -> None:
        """Apply every write or none; LeaseLost or KeyTypeError say why none. Without env: keep the stored one.

        With `renew_lease_ms`, the commit renews the lease it is fenced by as well: while samples come,
        the lease keeper has nothing to do.
        """
        keys = [self.keys.lease, self.keys.output, self.keys.output_stream, self.keys.errors, self.keys.state,
                self.keys.status]
        args: list[str | int] = [holder, self.retention_ms, ERRORS_KEPT, checkpoint.header(),
                                 checkpoint.env_json() if with_env else "", effects.latest_output or "", renew_lease_ms]
        for entries in (effects.outputs, effects.errors):
            args.append(len(entries))
            for entry in entries:
                args += [2 * len(entry), *_pairs(entry)]
        for mapping in (effects.status, effects.counters):
            args += [len(mapping), *_pairs(mapping)]
        reply = self._script(keys=keys, args=args)
        outcome = [part.decode() if isinstance(part, bytes) else part for part in reply]
        if outcome[0] == "wrongtype":
            raise KeyTypeError(*outcome[1:4])
        if outcome[0] == "lease":
            raise LeaseLost(f"the lease {self.keys.lease} is held by {outcome[1]!r}, not by this runtime")


def _pairs(mapping: Mapping[str, object]) -> Sequence[str]:
    return [str(part) for item in mapping.items() for part in item]


Done = list[tuple[Sample, Outcome]]  # a batch's samples and what each came to


def effects_of(done: Done, status_fields: dict[str, str]) -> Effects:
    """What a batch's commit writes besides the checkpoint: outputs, error records, status and counters."""
    effects = Effects(status=status_fields)
    for sample, outcome in done:
        if outcome.output is not None:
            effects.latest_output = outcome.output
            effects.outputs.append({schema.SAMPLE_ID_FIELD: sample.cursor.entry_id or "",
                                    schema.TIMESTAMP: outcome.timestamp or "", schema.OUTPUT_FIELD: outcome.output})
        if outcome.error is not None:
            effects.errors.append(outcome.error)
            name = status.ERRORS_PREFIX + outcome.error["fault"]
            effects.counters[name] = effects.counters.get(name, 0) + 1
    if effects.errors:
        effects.status[status.LAST_ERROR] = json_dumps(effects.errors[-1])
    effects.counters.update({status.INVOCATIONS: len(done), status.ERRORS: len(effects.errors)})
    return effects


def last_execution(done: Done, previous: datetime | None) -> datetime | None:
    for _, outcome in reversed(done):
        if outcome.last_execution:
            return datetime.fromisoformat(outcome.last_execution)
    return previous


def lag_seconds(item: tuple[Sample, Outcome]) -> float | None:
    """Sample time to output stored, as instants: a zoned timestamp, else the stream id (server clock).

    A zoned timestamp from the future (a collector's clock ahead) says nothing of our lag: the stream
    id does, or 0 where there is none.
    """
    sample, outcome = item
    from_stream = time.time() - sample.cursor.millis / 1000 if isinstance(sample.cursor, StreamCursor) else None
    try:
        moment = datetime.fromisoformat(outcome.timestamp) if outcome.timestamp else None
        if moment is None or (moment.tzinfo is None and from_stream is not None):
            return from_stream
        lag = status.seconds_since(moment.astimezone(timezone.utc))
    except (ValueError, OverflowError):  # not a time, or out of range once zoned (year 1 at +01:00)
        return from_stream
    if lag < 0:
        return from_stream if from_stream is not None else 0.0
    return lag


def oldest_lag(done: Done) -> float | None:
    """The lag of the batch's oldest sample: what the status and the metric report."""
    return max((lag for lag in map(lag_seconds, done) if lag is not None), default=None)


class MemoryCommitter:
    """No output key: the checkpoint is kept in memory (the env stays in the invoker), nothing is stored."""

    def __init__(self, checkpoints: MemoryCheckpoints) -> None:
        self.checkpoints = checkpoints

    def commit(self, holder: str, checkpoint: Checkpoint, effects: Effects, with_env: bool = True,
               renew_lease_ms: int = 0) -> None:
        self.checkpoints.latest = dataclasses.replace(checkpoint, env_text=None)
