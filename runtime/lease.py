"""One active runtime per output key: a lease in Redis, renewed by a keeper thread, taken over when it lapses.

The keeper renews the lease on its own schedule, independent of the loop, so a long batch keeps it.
Each commit renews it as well (its script is fenced by the lease anyway), so while samples come more
often than the keeper's period, the keeper has nothing to do and makes no round trip.
A standby takes the lease at once when its holder is provably gone: no connection of the holder's
process is left in Redis (each connection is named after its process, see connection_name), wherever
it ran; or, beside us (same host name, same process namespace), its pid no longer exists or belongs to
a process started at another time. Otherwise it waits for the lease to lapse: a host lost with its
network. Every commit checks the holder inside the commit script, so a runtime that lost the lease
while it worked stores nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from dataclasses import dataclass

import psutil
import redis

from runtime import keytypes
from runtime.status import HEARTBEAT_SECONDS

log = logging.getLogger(__name__)

# Renew only what we hold: a lapsed lease taken by another replica must not be extended by us.
# While held, also write the heartbeat fields (ARGV[3..]) to the hash KEYS[2]: one round trip per tick.
RENEW = """
local held = 0
if redis.call('get', KEYS[1]) == ARGV[1] then
  held = redis.call('pexpire', KEYS[1], ARGV[2])
elseif redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  held = 1
end
if held == 1 and #ARGV > 2 then
  local found = redis.call('type', KEYS[2])['ok']
  if found == 'none' or found == 'hash' then redis.call('hset', KEYS[2], unpack(ARGV, 3)) end
end
return held
"""
Heartbeat = tuple[str, Mapping[str, str]]  # a hash key and the fields to write there
# Take the lease from a holder proven dead, only if it still holds it.
TAKE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
RENEWALS_PER_LEASE = 2.5  # renewals per lease period: one may fail, and the next still comes in time


class LeaseUnavailable(Exception):
    """The lease cannot be taken at all (wrong key type, Redis refusing writes): no replica can work."""


class LeaseLost(Exception):
    """Another runtime holds the lease now: what this one computed since its last commit is dropped."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: host name, pid namespace, pid and the process's start time, plus a nonce."""

    host: str
    pid: int
    started: str  # the process's start time, from /proc: tells a reused pid from the holder
    namespace: str  # the pid namespace: the same pid in another container is another process
    nonce: str

    @classmethod
    def of_this_process(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()) or "?", pid_namespace(),
                   uuid.uuid4().hex[:8])

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        parts = text.split(":")
        if len(parts) != 5 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3], parts[4])

    def text(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}:{self.namespace}:{self.nonce}"

    @property
    def process(self) -> str:
        """The holder's process, as its connections' names carry it (a name Redis accepts: see name_safe)."""
        return name_safe(f"{self.host}:{self.pid}:{self.started}")

    def gone(self, me: Holder) -> bool:
        """Provably dead: it ran beside `me` (same host and pid namespace) and its process is no more."""
        if (self.host, self.namespace) != (me.host, me.namespace) or self.nonce == me.nonce:
            return False
        return process_start(self.pid) != self.started


def name_safe(text: str) -> str:
    """`text` as CLIENT SETNAME takes it: a host name may hold a space or a letter outside ASCII, which Redis
    refuses in a client name (and then every connection fails); those are written as %XX of their UTF-8."""
    return "".join(char if "!" <= char <= "~" and char != "%" else
                   "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass")) for char in text)


def process_start(pid: int) -> str | None:
    """The process's start time as a token, None when there is no such process.

    On Linux the start in clock ticks since boot (/proc/<pid>/stat): it never changes. psutil's create_time()
    adds the boot time as /proc/stat gives it now, which moves with every step of the wall clock (NTP, a VM
    resumed): a live holder would seem to have been started at another time, hence gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        return fields[19].decode()  # field 22, starttime
    except (FileNotFoundError, ProcessLookupError):
        return None
    except (OSError, IndexError):
        pass  # no procfs here: psutil's wall-clock figure
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return "unknown"  # it exists but we may not look: not provably gone


@cache
def this_process(pid: int) -> str:
    """This process as Holder.process gives it (`pid`: os.getpid(), so a forked child is not its parent)."""
    return Holder(socket.gethostname(), pid, process_start(pid) or "?", "", "").process


def connection_name(role: str) -> str:
    """The name of every Redis connection this process makes: its role, then its process (see Holder)."""
    return f"{role}@{this_process(os.getpid())}"


def disconnected(client: redis.Redis, holders: Iterable[Holder]) -> list[Holder]:
    """The holders whose process has no connection left in Redis: gone, or cut off (fenced either way).

    Only when our own connections show under their names, so nothing between us and Redis hides them;
    none when Redis does not let us list its clients (an ACL): then only a lapsed lease tells.
    """
    holders = list(holders)
    if not holders:
        return []
    try:
        processes = {(found.get("name") or "").partition("@")[2] for found in client.client_list()}
    except redis.ResponseError:
        return []
    if this_process(os.getpid()) not in processes:
        return []
    return [holder for holder in holders if holder.process not in processes]


def pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


class Lease:
    def __init__(self, client: redis.Redis, key: str, seconds: float) -> None:
        self.client = client
        self.key = key
        self.millis = int(seconds * 1000)
        self.me = Holder.of_this_process()
        self.holder = self.me.text()
        self.held = False
        self.renewed_at = 0.0  # monotonic time at which the last renewal that held it was sent
        self._renew = client.register_script(RENEW)
        self._take = client.register_script(TAKE)
        self._release = client.register_script(RELEASE)

    def hold(self, heartbeat: Heartbeat | None = None) -> bool:
        """Take or renew the lease (at once from a dead predecessor); True while this runtime is active.

        With a heartbeat, its fields are written in the same round trip while we hold the lease.
        """
        key, fields = heartbeat or (self.key, {})
        args = [self.holder, self.millis, *(part for item in fields.items() for part in item)]
        sent = time.monotonic()
        held = bool(self._renew(keys=[self.key, key], args=args)) or self._take_from_dead()
        if held:
            self.renewed_at = sent
        if held != self.held:
            log.info("lease_%s key=%s holder=%s", "acquired" if held else "lost", self.key, self.holder)
        self.held = held
        return held

    def _take_from_dead(self) -> bool:
        current = self.client.get(self.key)
        if isinstance(current, bytes):
            current = current.decode("utf-8", "replace")
        other = Holder.parse(current) if isinstance(current, str) else None
        if other is None or other.nonce == self.me.nonce:
            return False
        if not other.gone(self.me) and not disconnected(self.client, [other]):
            return False
        taken = bool(self._take(keys=[self.key], args=[current, self.holder, self.millis]))
        if taken:
            log.info("lease_taken_over key=%s from=%s: that process is gone, or has no connection to Redis",
                     self.key, current)
        return taken

    def renewed(self, sent: float) -> None:
        """A commit sent at monotonic time `sent` renewed the lease (its script found us the holder)."""
        self.renewed_at = max(self.renewed_at, sent)

    def release(self) -> None:
        if self.held:
            self._release(keys=[self.key], args=[self.holder])
            self.held = False


class NoLease:
    """No output key, nothing stored: nothing to share, always active."""

    key = "(none)"
    holder = ""
    held = True
    millis = 3_600_000

    def hold(self, heartbeat: Heartbeat | None = None) -> bool:
        return True

    def release(self) -> None:
        pass


class LeaseKeeper(threading.Thread):
    """Renews (or, on a standby, tries to take) the lease 2.5 times per period (at least every 6 s) until `stop`;
    not while commits renew it."""

    def __init__(self, lease: Lease | NoLease, stop: threading.Event, heartbeat: Callable[[], Heartbeat | None],
                 on_problem: Callable[[str | None], None]) -> None:
        super().__init__(name=f"lease-{lease.key}", daemon=True)
        self.lease = lease
        self.stop = stop
        self.heartbeat = heartbeat  # what to write with each renewal (None: nothing, the loop is stuck)
        self.on_problem = on_problem  # told when the lease cannot be taken at all, and (None) when it can again
        self.period = min(lease.millis / 1000 / RENEWALS_PER_LEASE, HEARTBEAT_SECONDS)
        self.changed = threading.Event()  # set whenever `held` may have changed
        self.problem: str | None = None  # what keeps us from holding the lease, besides another holder
        self._ticked_at = 0.0  # monotonic time of the last tick, renewed or not

    def tick(self) -> bool:
        """Renew or try to take the lease, with the heartbeat; whether we hold it."""
        if isinstance(self.lease, NoLease):
            return True
        self._ticked_at = time.monotonic()
        try:
            held = self.lease.hold(self.heartbeat())
            self._report(None)
        except redis.ResponseError as error:  # refused: a wrong key type, out of memory, read-only
            self.lease.held = False
            self._report(self._explain(error))
            return False
        except redis.RedisError as error:  # unreachable: the loop reports it too; a missed renewal is retried
            self._report(f"the lease {self.lease.key} cannot be renewed: {error}")
            return self.lease.held
        self.changed.set()
        return held

    def _explain(self, error: redis.ResponseError) -> str:
        if keytypes.is_wrongtype(error):
            return str(keytypes.KeyTypeError(self.lease.key, self.lease.client.type(self.lease.key), "string"))
        return f"the lease {self.lease.key} cannot be taken: {error}"

    def _report(self, problem: str | None) -> None:
        """Log and tell a problem once when it appears, and once when it is gone."""
        if problem != self.problem:
            if problem:
                log.warning("lease_unavailable %s", problem)
            else:
                log.info("lease_available key=%s", self.lease.key)
            self.problem = problem
            self.on_problem(problem)

    def renewed_by_commit(self, sent: float) -> None:
        """A commit sent at monotonic time `sent` renewed the lease: a problem of an earlier tick is over."""
        self.lease.renewed(sent)
        self._report(None)

    def run(self) -> None:
        while not isinstance(self.lease, NoLease) and not self.stop.wait(self._until_due()):
            if self._until_due() <= 0:  # else a commit renewed the lease while we waited
                self.tick()

    def _until_due(self) -> float:
        """Seconds to the next tick: a period after the last one, or after the last commit that renewed the
        lease (it wrote the heartbeat too). A failed renewal is retried a period later, not at once."""
        return max(self._ticked_at, self.lease.renewed_at) + self.period - time.monotonic()
