"""context.env survives restarts through a tagged JSON codec that never executes what it reads."""

import collections
import datetime as dt
import decimal
import json
import math
import queue

import numpy as np
import pytest
from hypothesis import given, strategies as st

from runtime import envcodec
from runtime.invoke import decode_env, encode_env


def round_trip(value):
    return envcodec.loads(envcodec.dumps(value))


def test_student_env_shapes_round_trip_exactly():
    now = dt.datetime(2026, 11, 29, 1, 46, 25, 123456)
    env = {
        "floats": [1.5, 2.25],
        "pairs": [(12.5, now), (now, 3.0)],
        "window": collections.deque([(now, 1.0)], maxlen=12),
        "by_cpu": {0: [1.0], 1: [2.0]},
        "seen": {1, 2, 3},
        "frozen": frozenset({"a"}),
        "dates": [now.date(), now.time(), dt.timedelta(seconds=90)],
        "aware": now.replace(tzinfo=dt.timezone(dt.timedelta(hours=1))),
        "counts": collections.Counter("aab"),
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        "groups": collections.defaultdict(list, {"x": [1]}),
        "money": decimal.Decimal("1.10"),
        "raw": b"\x00\xff",
        "nan": float("nan"),
        "inf": float("-inf"),
        "tagged": {"$t": "tuple", "v": []},  # a plain dict that looks like a tag stays a dict
        "mixed": {1: "a", "1": "b", (1, 2): "c"},
    }
    back = round_trip(env)
    assert back["window"] == env["window"] and back["window"].maxlen == 12
    assert type(back["pairs"][0]) is tuple and back["pairs"] == env["pairs"]
    assert back["by_cpu"] == env["by_cpu"] and back["mixed"] == env["mixed"]
    assert back["tagged"] == {"$t": "tuple", "v": []}
    assert back["aware"] == env["aware"] and back["aware"].utcoffset() == dt.timedelta(hours=1)
    assert type(back["groups"]) is collections.defaultdict and back["groups"]["new"] == []
    assert type(back["counts"]) is collections.Counter and type(back["ordered"]) is collections.OrderedDict
    assert math.isnan(back["nan"]) and back["inf"] == float("-inf")
    for key in ("seen", "frozen", "dates", "money", "raw", "ordered", "counts"):
        assert back[key] == env[key] and type(back[key]) is type(env[key]), key


def test_queues_keep_their_items_and_bounds():
    for kind in (queue.Queue, queue.LifoQueue, queue.PriorityQueue):
        original = kind(maxsize=5)
        for item in (3, 1, 2):
            original.put(item)
        back = round_trip(original)
        assert type(back) is kind and back.maxsize == 5 and back.qsize() == 3
        assert [back.get_nowait() for _ in range(3)] == [original.get_nowait() for _ in range(3)]


def test_numpy_scalars_and_arrays_keep_their_dtype():
    env = {"f32": np.float32(1.5), "i64": np.int64(-3), "b": np.bool_(True), "arr": np.arange(6.0).reshape(2, 3)}
    back = round_trip(env)
    for key in ("f32", "i64", "b"):
        assert type(back[key]) is type(env[key]) and back[key] == env[key]
    assert back["arr"].dtype == env["arr"].dtype and (back["arr"] == env["arr"]).all()


@pytest.mark.parametrize("value, where", [
    ({"handle": open}, "env['handle']"),
    ({"deep": [object()]}, "env['deep'][0]"),
    ({"window": collections.deque([(1.0, 2.0), (object(), 3.0)])}, "env['window'][1][0]"),
    ({1: {"a": (1, [2, object()])}}, "env[1]['a'][1][1]"),
    ({"f": collections.defaultdict(lambda: 0)}, "factory"),
    ({"gen": (i for i in range(3))}, "generator"),
])
def test_other_values_are_reported_as_not_durable(value, where):
    with pytest.raises(envcodec.NotDurable, match=where.replace("[", r"\[").replace("]", r"\]")):
        envcodec.dumps(value)


def test_cycles_are_not_durable():
    env = {"a": []}
    env["a"].append(env)
    with pytest.raises(envcodec.NotDurable, match="cycle"):
        envcodec.dumps(env)


@pytest.mark.parametrize("blob", [
    {"$t": "defaultdict", "factory": "os.system", "v": []},
    {"$t": "numpy", "dtype": "O", "v": "__import__('os').system('touch /tmp/pwned')"},
    {"$t": "ndarray", "dtype": "O", "shape": [1], "v": ["x"]},
    {"$t": "pickle", "v": "gASVAAAAAAAAAAA="},
    {"$t": "float", "v": "__import__('os')"},
])
def test_crafted_state_is_refused_without_running_anything(blob, tmp_path):
    with pytest.raises(ValueError):
        envcodec.loads(json.dumps(blob))


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
hashables = json_scalars | st.tuples(st.integers(), st.text())
values = st.recursive(
    json_scalars | st.datetimes() | st.timedeltas() | st.binary(max_size=20),
    lambda inner: (st.lists(inner, max_size=5) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=5), inner, max_size=5)
                   | st.dictionaries(hashables, inner, max_size=5)
                   | st.sets(hashables, max_size=5)
                   | st.lists(inner, max_size=5).map(lambda items: collections.deque(items, maxlen=7))),
    max_leaves=20,
)


@given(values)
def test_every_supported_value_round_trips(value):
    back = round_trip(value)
    assert back == value and type(back) is type(value)


def nested_map(depth):
    env = {}
    for _ in range(depth):
        env = {1: env}  # an int key: written as key/value pairs, the deepest path through the codec
    return env


@pytest.mark.parametrize("depth", [150, 199, 205, 400])
def test_deep_maps_are_stored_or_reported_never_a_crash(depth):
    """A depth within MAX_DEPTH is stored; beyond it the env is reported as not durable. Before, maps of
    non-str keys hit Python's recursion limit first: the worker died, and the host stalled for good."""
    text, problem = encode_env({"deep": nested_map(depth)})
    if depth < envcodec.MAX_DEPTH:
        assert problem is None and decode_env(text) == {"deep": nested_map(depth)}
    else:
        assert text is None and "deeper than" in problem


def test_an_int_past_the_json_digit_limit_is_not_durable_rather_than_a_crash():
    text, problem = encode_env({"big": 10 ** 5000})
    assert text is None and "digits" in problem


class EqualsEverything(type):
    def __eq__(cls, other):
        return True

    __hash__ = type.__hash__


def test_a_type_that_claims_to_equal_every_type_is_not_taken_for_one():
    """Types are compared by identity: such a list subclass is refused, never written with a tag nobody reads."""
    sneaky = EqualsEverything("Sneaky", (list,), {})
    text, problem = encode_env({"a": sneaky([1])})
    assert text is None and "Sneaky" in problem
