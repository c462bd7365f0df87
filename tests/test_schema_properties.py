"""Property-based: the sample parser accepts every valid sample and rejects everything else with
SampleError, never another exception."""

import json
import math
from datetime import datetime

import pytest
from hypothesis import given, strategies as st

from runtime import schema

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
counters = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def samples(draw):
    moment = draw(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9999, 1, 1)))
    return schema.build_sample(
        moment,
        cpu_percents=draw(st.lists(st.floats(0, 100), min_size=1, max_size=16)),
        cpu_freq_mhz=draw(st.none() | finite),
        cpu_stats=draw(st.fixed_dictionaries({name: counters for name in schema.CPU_STATS})),
        memory={**draw(st.fixed_dictionaries({name: counters for name in schema.MEMORY_BYTES})),
                "percent": draw(st.floats(0, 100))},
        n_pids=draw(counters),
        net=draw(st.fixed_dictionaries({name: counters for name in schema.NET_COUNTERS})),
    )


@given(samples())
def test_every_valid_sample_round_trips(sample):
    assert schema.parse_sample(schema.encode_sample(sample)) == sample
    assert schema.parse_sample(schema.encode_sample(sample).encode()) == sample
    frame = schema.samples_to_frame([sample])
    assert schema.frame_to_samples(frame) == [sample]


not_a_number = st.one_of(st.text(max_size=5), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
                         st.just(float("nan")), st.just(float("inf")))


@given(samples(), st.data())
def test_a_known_field_that_is_not_a_finite_number_is_refused(sample, data):
    field = data.draw(st.sampled_from(sorted(f for f in sample if schema.field_kind(f))))
    sample[field] = data.draw(not_a_number)
    with pytest.raises(schema.SampleError, match=field):
        schema.parse_sample(json.dumps(sample))


@given(st.one_of(st.binary(max_size=200), st.text(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                              lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4)).map(json.dumps)))
def test_anything_else_is_refused_with_sample_error_only(payload):
    try:
        sample = schema.parse_sample(payload)
    except schema.SampleError:
        return
    assert isinstance(sample, dict) and isinstance(sample["timestamp"], str)  # it was a valid sample after all
    for field, value in sample.items():
        if schema.field_kind(field):
            assert not isinstance(value, bool) and math.isfinite(value)


def test_deep_nesting_is_refused_not_crashing():
    with pytest.raises(schema.SampleError, match="not JSON"):
        schema.parse_sample("[" * 100_000 + "]" * 100_000)


# --- readers of stream entries, host ids (issues 13 and 15) ------------------------------------------

raw_values = st.one_of(st.binary(max_size=60), st.text(max_size=60), samples().map(schema.encode_sample))
entry_fields = st.dictionaries(st.sampled_from([b"sample", b"extra", b"count", b"\xff", "sample", "extra"]),
                               raw_values, max_size=4)


@given(st.lists(st.tuples(st.integers(1, 10**6).map(lambda n: f"{n}-0".encode()), entry_fields), max_size=8))
def test_stream_readers_never_raise_whatever_the_entries_hold(entries):
    for read in (schema.entries_to_frame, schema.tier_to_frame):
        frame, malformed = read(entries)
        assert len(frame) + malformed >= sum(1 for _, fields in entries if fields) - len(entries)
        assert malformed <= len(entries)


@given(st.text(max_size=300) | st.binary(max_size=80))
def test_a_host_id_either_is_refused_or_derives_keys_no_other_id_can_reach(host):
    keys = schema.Keys(output="out")
    try:
        derived = keys.for_host(host)
    except ValueError:
        return
    own = {derived.input, derived.input_stream, derived.top, derived.output, derived.state, derived.status,
           derived.errors, derived.lease, derived.output_stream, *(derived.rollup(t) for t in schema.ROLLUP_TIERS)}
    shared = {keys.input, keys.input_stream, keys.hosts, keys.top, keys.output, keys.state, keys.status, keys.errors,
              keys.lease, keys.output_stream, *(keys.rollup(t) for t in schema.ROLLUP_TIERS)}
    assert not own & shared
    assert all(key.count(":") == base.count(":") + 1 for key, base in ((derived.input, keys.input),
                                                                     (derived.output, keys.output)))
