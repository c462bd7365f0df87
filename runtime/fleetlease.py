"""Replicas share hosts: a lease per host, each replica holding up to a fair share of them.

Every replica announces itself in a sorted set (`<output>:lease:replicas`, member -> expiry on the
server's clock) each time it renews. One script, one round trip per tick, then: drops replicas whose
announcement lapsed, renews this replica's host leases, gives back the ones above its share
(ceil(hosts / live replicas), at most MAX_HOSTS) so a replica that joins gets them, and takes free
ones up to the share. Leases are the same `<output>:<host>:lease` keys the commit script checks, so a
replica that lost a host while it worked stores nothing (the commit is fenced), and the new holder
starts from the checkpoint: exactly once. A holder provably dead (same host and pid namespace, its
process gone; lease.Holder) is treated as absent at once, so a restarted runtime resumes without
waiting for its predecessor's leases to lapse; so is, for that tick, one with no connection left in
Redis (lease.disconnected): a replica that died on another node. One that reconnects is back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from runtime import schema, status
from runtime.lease import Holder, disconnected

log = logging.getLogger(__name__)

# KEYS: the replicas set, then per host its lease and its status hash.
# ARGV: holder, lease ms, max hosts, heartbeat text ('' writes none), then holders proven dead.
# Returns: the 1-based positions of the hosts held by us, those held by nobody, other holders seen, the
# fair share before the cap.
ASSIGN = """
local me, ms, cap, beat = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = {}
for i = 5, #ARGV do dead[ARGV[i]] = true; redis.call('ZREM', KEYS[1], ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ms, me)
redis.call('PEXPIRE', KEYS[1], 2 * ms)
local hosts = (#KEYS - 1) / 2
local fair = math.ceil(hosts / redis.call('ZCARD', KEYS[1]))
local share = math.min(fair, cap)
local mine, free, others, seen = {}, {}, {}, {}
for h = 1, hosts do
  local holder = redis.call('GET', KEYS[2 * h])
  if holder == me then mine[#mine + 1] = h
  elseif not holder or dead[holder] then free[#free + 1] = h
  elseif not seen[holder] then seen[holder] = true; others[#others + 1] = holder end
end
while #mine > share do redis.call('DEL', KEYS[2 * table.remove(mine)]) end
for _, h in ipairs(mine) do redis.call('PEXPIRE', KEYS[2 * h], ms) end
local unheld = {}
for _, h in ipairs(free) do
  if #mine < share then redis.call('SET', KEYS[2 * h], me, 'PX', ms); mine[#mine + 1] = h
  else unheld[#unheld + 1] = h end
end
if beat ~= '' then
  for _, h in ipairs(mine) do
    local found = redis.call('TYPE', KEYS[2 * h + 1])['ok']
    if found == 'none' or found == 'hash' then redis.call('HSET', KEYS[2 * h + 1], 'heartbeat', beat) end
  end
end
return {mine, unheld, others, fair}
"""
# KEYS: the replicas set, then leases. ARGV: holder, '1' to stay announced. Gives back the leases we hold.
RELEASE_ALL = """
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
if ARGV[2] == '0' then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
"""
# KEYS: the registry. ARGV: host, the value read with it: forget a silent host unless it spoke since.
FORGET_HOST = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


DEAD_KEPT = 64  # holders proven gone that the script is told about


@dataclass(frozen=True)
class Assignment:
    """What one tick decided: the hosts we hold, the valid hosts nobody holds, the replicas' share cap."""

    held: frozenset[str]
    unheld: tuple[str, ...]
    capped: bool  # the fair share is above MAX_HOSTS: some hosts wait for a replica


class HostLeases:
    """This replica's side of the per-host leases: announce, renew, rebalance, release."""

    def __init__(self, client: redis.Redis, keys: schema.Keys, lease_seconds: float, max_hosts: int) -> None:
        self.client = client
        self.keys = keys
        self.millis = int(lease_seconds * 1000)
        self.max_hosts = max_hosts
        self.me = Holder.of_this_process()
        self.holder = self.me.text()
        self.dead: set[str] = set()  # holders proven gone (their leases are free now)
        self._assign = client.register_script(ASSIGN)
        self._release_all = client.register_script(RELEASE_ALL)
        self._forget = client.register_script(FORGET_HOST)

    def assign(self, hosts: Sequence[str], heartbeat: bool) -> Assignment:
        """Renew, rebalance and take leases over `hosts` (valid ids); run again at once if a holder proved gone."""
        cut_off: list[str] = []
        for _ in range(2):
            keys = [self.keys.replicas]
            for host in hosts:
                host_keys = self.keys.for_host(host)
                keys += [host_keys.lease, host_keys.status]
            args = [self.holder, self.millis, self.max_hosts, status.now_text() if heartbeat else "", *self.dead,
                    *cut_off]
            mine, unheld, others, fair = self._assign(keys=keys, args=args)
            ended, cut_off = self._gone(others)
            if not ended and not cut_off:
                break
        return Assignment(frozenset(hosts[i - 1] for i in mine), tuple(hosts[i - 1] for i in unheld),
                          int(fair) > self.max_hosts)

    def _gone(self, others: Sequence[str]) -> tuple[list[str], list[str]]:
        """Holders provably gone: those whose process ended beside us (kept in `dead`: gone for good), and
        those with no connection left in Redis (for this tick only: one that reconnects is back)."""
        holders = [holder for holder in map(Holder.parse, others) if holder is not None]
        ended = [holder.text() for holder in holders if holder.gone(self.me)]
        for text in ended:
            log.info("lease_holder_gone holder=%s: its hosts are taken over at once", text)
            if len(self.dead) >= DEAD_KEPT:
                self.dead.clear()  # old ones' leases have lapsed long since
            self.dead.add(text)
        cut_off = [holder.text() for holder in disconnected(self.client, [h for h in holders if h.text() not in ended])]
        for text in cut_off:
            log.info("lease_holder_disconnected holder=%s: no connection of its process is left in Redis; its "
                     "hosts are taken over at once", text)
        return ended, cut_off

    def release_all(self, hosts: Sequence[str], announced: bool = False) -> None:
        """Give these hosts' leases back, and (not `announced`: a clean stop) this replica's place."""
        keys = [self.keys.replicas, *(self.keys.for_host(host).lease for host in hosts)]
        self._release_all(keys=keys, args=[self.holder, "1" if announced else "0"])

    def forget(self, host: str, seen: str) -> bool:
        """Remove a silent host from the registry, unless it registered again since `seen` was read."""
        return bool(self._forget(keys=[self.keys.hosts], args=[host, seen]))
