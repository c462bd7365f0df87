"""Keys of the wrong type: found before anything is written, reported with the key and the type expected."""

from __future__ import annotations

import redis

FIX = "delete it (redis-cli DEL) or point the runtime at other keys"

# Lua that opens every fenced commit script, before it writes anything: a key of another type than
# the script's `expected[i]` for KEYS[i], or a lease (KEYS[1]) not held by ARGV[1], and it returns why.
FENCE_LUA = """
for i, key in ipairs(KEYS) do
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= expected[i] then return {'wrongtype', key, found, expected[i]} end
end
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[1] then return {'lease', tostring(holder)} end
"""


class KeyTypeError(Exception):
    """A key the runtime reads or writes holds another type; nothing was written because of it."""

    def __init__(self, key: str, found: str, expected: str) -> None:
        super().__init__(f"key {key!r} is a {found}, the runtime needs a {expected} there: {FIX}")
        self.key, self.found, self.expected = key, found, expected


def check(client: redis.Redis, key: str, expected: str) -> None:
    """Raise KeyTypeError when `key` exists with a type other than `expected`."""
    found = client.type(key)
    if isinstance(found, bytes):
        found = found.decode()
    if found not in ("none", expected):
        raise KeyTypeError(key, found, expected)


def is_wrongtype(error: redis.ResponseError) -> bool:
    return str(error).startswith("WRONGTYPE")
