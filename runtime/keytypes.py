"""Keys of the wrong type: found before anything is written, reported with the key and the type expected."""

from __future__ import annotations

import redis

FIX = "delete it (redis-cli DEL) or point the runtime at other keys"


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
