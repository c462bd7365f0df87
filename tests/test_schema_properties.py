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
