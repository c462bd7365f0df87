"""A safe, exact encoding of `context.env` for the checkpoint: tagged JSON, never pickle.

Decoding only builds values of a fixed list of types from data; nothing read from Redis is executed
or imported. A value of any other type raises NotDurable naming where it sits, so the runtime can
keep it in memory and report the env as not durable.

Tagged values are JSON objects {"$t": <tag>, ...}; a plain dict that itself has a "$t" key, or any
non-string key, is written as {"$t": "dict", "v": [[key, value], ...]} so nothing is ambiguous.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import decimal
from json import dumps as json_dumps, loads as json_loads  # bound at import: out of a handler's reach
import math
import queue
from typing import Any

TAG = "$t"
MAX_DEPTH = 200
# defaultdict factories that are plain types, so they are named, not executed.
FACTORIES = {"list": list, "dict": dict, "int": int, "float": float, "set": set, "str": str}
QUEUES = {"Queue": queue.Queue, "LifoQueue": queue.LifoQueue, "PriorityQueue": queue.PriorityQueue}
NUMPY_KINDS = "biuf"  # bool, int, unsigned, float


class NotDurable(TypeError):
    """A value in the env that this codec cannot store; the message says where and what it is."""


def encode(env: Any) -> Any:
    """The env as plain JSON data (dicts, lists, str, numbers, None), or NotDurable."""
    return _encode(env, "env", set(), 0)


def decode(data: Any) -> Any:
    """The env from what encode() returned; ValueError for anything that is not such an encoding."""
    try:
        return _decode(data, 0)
    except (KeyError, TypeError, IndexError, AttributeError, OverflowError) as error:
        raise ValueError(f"stored env is malformed: {error!r}") from None


def dumps(env: Any) -> str:
    """The env as a JSON string, or NotDurable."""
    return json_dumps(encode(env), allow_nan=False, separators=(",", ":"))


def loads(text: str) -> Any:
    """The env stored by dumps(); ValueError for anything that is not such an encoding."""
    return decode(json_loads(text))


# A value's place in the env, spelled out only for an error: the root's name, or (parent, format, step).
Place = str | tuple
NONE = type(None)


def _plain_kind(kind: type) -> bool:
    """None, bool, int or str: stored as they are, at any depth. By identity: a type's == can lie."""
    return kind is str or kind is int or kind is bool or kind is NONE


def where(path: Place) -> str:
    """The text of a place: env['cpu'][3], env['a'] key 2."""
    steps = []
    while isinstance(path, tuple):
        path, form, step = path
        steps.append(form % (step,))
    return path + "".join(reversed(steps))


def _plain(value: Any) -> bool:
    kind = type(value)
    return kind is float and math.isfinite(value) or kind is int or kind is str or kind is bool or kind is NONE


def _encode(value: Any, path: Place, active: set[int], depth: int) -> Any:
    kind = type(value)
    if _plain_kind(kind):
        return value
    if kind is float:
        return value if math.isfinite(value) else {TAG: "float", "v": repr(value)}
    if depth > MAX_DEPTH:
        raise NotDurable(f"{where(path)}: nested deeper than {MAX_DEPTH} levels")
    simple = _encode_scalar(value, kind)
    if simple is not None:
        return simple
    if id(value) in active:
        raise NotDurable(f"{where(path)}: refers to itself (a cycle)")
    active.add(id(value))
    try:
        return _encode_container(value, kind, path, active, depth + 1)
    finally:
        active.discard(id(value))


def _encode_scalar(value: Any, kind: type) -> dict | None:
    if kind is dt.datetime:
        return {TAG: "datetime", "v": value.isoformat()}
    if kind is dt.date:
        return {TAG: "date", "v": value.isoformat()}
    if kind is dt.time:
        return {TAG: "time", "v": value.isoformat()}
    if kind is dt.timedelta:
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if kind is decimal.Decimal:
        return {TAG: "decimal", "v": str(value)}
    if kind is bytes:
        return {TAG: "bytes", "v": base64.b64encode(value).decode()}
    if kind.__module__ == "numpy" and getattr(value, "dtype", None) is not None:
        if value.dtype.kind not in NUMPY_KINDS:
            return None
        if getattr(value, "ndim", 0) == 0 and kind.__name__ != "ndarray":
            return {TAG: "numpy", "dtype": value.dtype.str, "v": _encode(value.item(), "", set(), 0)}
    return None


def _encode_container(value: Any, kind: type, path: Place, active: set[int], depth: int) -> Any:
    # Plain items (most of an env: numbers and strings) are taken as they are, without a call each, and
    # so are tuples of them (a window's (time, value) pairs), as _encode would write them.
    def each(items):
        encoded = []
        for i, item in enumerate(items):
            kind = type(item)
            if kind is float and math.isfinite(item) or kind is int or kind is str or kind is bool or kind is NONE:
                encoded.append(item)
            elif kind is tuple and depth < MAX_DEPTH and all(_plain(part) for part in item):
                encoded.append({TAG: "tuple", "v": list(item)})
            else:
                encoded.append(_encode(item, (path, "[%d]", i), active, depth))
        return encoded

    def pairs(mapping):  # a loop, no helper per item: a level costs as few frames as a list's
        encoded = []
        for k, v in mapping.items():
            encoded.append([k if _plain(k) else _encode(k, (path, " key %r", k), active, depth),
                            v if _plain(v) else _encode(v, (path, "[%r]", k), active, depth)])
        return encoded

    if kind is list:
        return each(value)
    if kind is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: v if _plain(v) else _encode(v, (path, "[%r]", k), active, depth) for k, v in value.items()}
        return {TAG: "dict", "v": pairs(value)}
    if kind is tuple or kind is set or kind is frozenset:
        return {TAG: kind.__name__, "v": each(value)}
    if kind is collections.deque:
        return {TAG: "deque", "v": each(value), "maxlen": value.maxlen}
    if kind is collections.OrderedDict or kind is collections.Counter:
        return {TAG: kind.__name__, "v": pairs(value)}
    if kind is collections.defaultdict:
        factory = getattr(value.default_factory, "__name__", None)
        if value.default_factory is not None and FACTORIES.get(factory) is not value.default_factory:
            raise NotDurable(f"{where(path)}: a defaultdict whose factory {value.default_factory!r} is not a "
                             "plain type")
        return {TAG: "defaultdict", "factory": factory, "v": pairs(value)}
    if kind.__name__ in QUEUES and QUEUES[kind.__name__] is kind:
        with value.mutex:
            items = list(value.queue)
        return {TAG: kind.__name__, "v": each(items), "maxsize": value.maxsize}
    if kind.__module__ == "numpy" and kind.__name__ == "ndarray" and value.dtype.kind in NUMPY_KINDS:
        return {TAG: "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                "v": each(value.ravel().tolist())}
    raise NotDurable(f"{where(path)}: a {kind.__module__}.{kind.__qualname__} object cannot be stored "
                     "(durable types: numbers, str, bytes, None, list, tuple, dict, set, deque, Queue, "
                     "datetime/date/time/timedelta, Decimal, numpy numbers and arrays)")


def _decode(data: Any, depth: int) -> Any:
    if depth > MAX_DEPTH + 2:
        raise ValueError("stored env is nested too deeply")
    if isinstance(data, list):
        return [_decode(item, depth + 1) for item in data]
    if not isinstance(data, dict):
        return data
    if TAG not in data:
        return {k: _decode(v, depth + 1) for k, v in data.items()}
    tag, raw = data[TAG], data.get("v")

    def items():
        return [_decode(item, depth + 1) for item in raw]

    def pairs():
        return [(_decode(k, depth + 1), _decode(v, depth + 1)) for k, v in raw]

    match tag:
        case "float":
            if raw not in ("nan", "inf", "-inf"):
                raise ValueError(f"stored env has a bad float {raw!r}")
            return float(raw)
        case "datetime":
            return dt.datetime.fromisoformat(raw)
        case "date":
            return dt.date.fromisoformat(raw)
        case "time":
            return dt.time.fromisoformat(raw)
        case "timedelta":
            return dt.timedelta(days=raw[0], seconds=raw[1], microseconds=raw[2])
        case "decimal":
            return decimal.Decimal(raw)
        case "bytes":
            return base64.b64decode(raw, validate=True)
        case "tuple":
            return tuple(items())
        case "set":
            return set(items())
        case "frozenset":
            return frozenset(items())
        case "deque":
            return collections.deque(items(), maxlen=data["maxlen"])
        case "dict":
            return dict(pairs())
        case "OrderedDict":
            return collections.OrderedDict(pairs())
        case "Counter":
            return collections.Counter(dict(pairs()))
        case "defaultdict":
            return collections.defaultdict(FACTORIES[data["factory"]], pairs())
        case "Queue" | "LifoQueue" | "PriorityQueue":
            restored = QUEUES[tag](maxsize=data["maxsize"])
            with restored.mutex:
                restored.queue.extend(items())  # a PriorityQueue's list was stored in heap order
                restored.unfinished_tasks = len(restored.queue)
                restored.not_empty.notify_all()
            return restored
        case "numpy":
            return _numpy_dtype(data["dtype"]).type(_decode(raw, depth + 1))
        case "ndarray":
            import numpy

            return numpy.array(items(), dtype=_numpy_dtype(data["dtype"])).reshape(data["shape"])
    raise ValueError(f"stored env has an unknown tag {tag!r}")


def _numpy_dtype(name: str):
    import numpy

    dtype = numpy.dtype(name)
    if dtype.kind not in NUMPY_KINDS:
        raise ValueError(f"stored env has a numpy dtype {name!r} outside {NUMPY_KINDS!r}")
    return dtype
