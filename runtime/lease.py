"""One active runtime per output key: a lease in Redis, held by renewing it, taken over when it lapses.

A standby replica keeps trying to take the lease; the active one renews it on every turn of its loop.
Every commit is fenced by the lease (WATCH it, check we hold it, then MULTI/EXEC), so a runtime that
lost the lease while it worked — paused, partitioned — cannot store anything after the new holder
took over.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

import redis

log = logging.getLogger("runtime.lease")

# Renew only what we hold: a lapsed lease taken by another replica must not be extended by us.
RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LeaseLost(Exception):
    """Another runtime holds the lease now: what this one computed since its last commit is dropped."""


class Lease:
    def __init__(self, client: redis.Redis, key: str, seconds: float) -> None:
        self.client = client
        self.key = key
        self.millis = int(seconds * 1000)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = False
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)

    def hold(self) -> bool:
        """Take or renew the lease; True while this runtime is the active one."""
        held = bool(self._renew(keys=[self.key], args=[self.holder, self.millis]))
        if held != self.held:
            log.info("lease_%s key=%s holder=%s", "acquired" if held else "lost", self.key, self.holder)
            if not held:
                log.info("standby active=%s", self.client.get(self.key))
        self.held = held
        return held

    def fence(self, pipe: redis.client.Pipeline) -> None:
        """Start a transaction that only executes while we hold the lease (WATCH, check, MULTI)."""
        pipe.watch(self.key)
        if pipe.get(self.key) != self.holder:
            pipe.reset()
            self.held = False
            raise LeaseLost(f"the lease {self.key} is held by another runtime")
        pipe.multi()

    def release(self) -> None:
        if self.held:
            self._release(keys=[self.key], args=[self.holder])
            self.held = False
