import json
import math
from datetime import datetime

import pandas as pd
import pytest

from runtime import schema
from tests.conftest import fixture_path, fixture_samples


def test_fixture_samples_round_trip_through_a_typed_frame():
    samples = fixture_samples()
    frame = schema.samples_to_frame(samples)
    assert frame.shape == (120, 29)
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.is_monotonic_increasing
    assert frame["cpu_percent-3"].dtype == "float64"
    assert frame["virtual_memory-total"].dtype == "Int64"
    assert frame["virtual_memory-percent"].dtype == "float64"
    back = schema.frame_to_samples(frame)
    assert back == samples
    assert [list(s) for s in back] == [list(s) for s in samples]  # the course's field order too


def test_frame_sorts_by_time_and_keeps_unknown_fields_last():
    first, second = fixture_samples()[:2]
    frame = schema.samples_to_frame([dict(second, extra="x"), first])
    assert list(frame.index) == sorted(frame.index)
    assert frame.columns[-1] == "extra"


def test_empty_frame_has_a_time_index():
    frame = schema.samples_to_frame([])
    assert frame.empty and isinstance(frame.index, pd.DatetimeIndex)


def test_build_sample_has_the_course_fields_in_order_with_microseconds():
    sample = schema.build_sample(
        datetime(2026, 11, 29, 1, 46, 25),  # no microseconds: str() would drop them
        cpu_percents=[1.0, 2.5], cpu_freq_mhz=2400, cpu_stats={name: 1 for name in schema.CPU_STATS},
        memory={**{name: 10 for name in schema.MEMORY_BYTES}, "percent": 12.5}, n_pids=99,
        net={name: 7 for name in schema.NET_COUNTERS},
    )
    reference = json.loads(fixture_path("metrics-course-8cpu.json").read_text())
    expected_order = [f for f in reference if not f.startswith("cpu_percent-")]
    assert [f for f in sample if not f.startswith("cpu_percent-")] == expected_order
    assert sample["timestamp"] == "2026-11-29 01:46:25.000000"
    datetime.strptime(sample["timestamp"], "%Y-%m-%d %H:%M:%S.%f")
    assert sample["cpu_percent-1"] == 2.5 and isinstance(sample["cpu_freq_current"], float)
    assert isinstance(sample["n_pids"], int)


def test_build_sample_leaves_out_only_a_failed_source():
    sample = schema.build_sample(datetime.now(), cpu_percents=[1.0], cpu_freq_mhz=None, n_pids=3)
    assert "cpu_freq_current" not in sample and sample["n_pids"] == 3


@pytest.mark.parametrize("raw, message", [
    ("not json", "not JSON"),
    ("[1, 2]", "a list, not an object"),
    (b"\xff\xfe", "not UTF-8"),
    ('{"cpu_percent-0": 1}', "'timestamp' must be a string"),
    ('{"timestamp": "yesterday"}', "is not a time"),
    ('{"timestamp": "2026-11-29 01:00:00.000000", "n_pids": "many"}', "'n_pids' must be a number"),
    ('{"timestamp": "2026-11-29 01:00:00.000000", "cpu_percent-0": true}', "must be a number"),
    ('{"timestamp": "2026-11-29 01:00:00.000000", "cpu_percent-0": NaN}', "must be finite"),
])
def test_parse_sample_rejects_malformed_input_with_a_clear_error(raw, message):
    with pytest.raises(schema.SampleError, match=message):
        schema.parse_sample(raw)


def test_parse_sample_accepts_fixtures():
    for name in ("metrics-course-8cpu.json", "metrics-assignment-names-2cpu.json"):
        assert schema.parse_sample(fixture_path(name).read_text())["timestamp"]


def test_aliases_serve_both_network_names():
    course = json.loads(fixture_path("metrics-course-8cpu.json").read_text())
    aliased = schema.with_aliases(course)
    assert aliased["net_io_counters_eth0-bytes_sent1"] == course["net_io_counters_eth0-bytes_sent"]
    assignment = json.loads(fixture_path("metrics-assignment-names-2cpu.json").read_text())
    aliased = schema.with_aliases(assignment)
    assert aliased["net_io_counters_eth0-bytes_recv"] == assignment["net_io_counters_eth0-bytes_recv1"]


def test_keys_derive_from_input_and_output():
    keys = schema.Keys(input="metrics", output="s1-proj3-output")
    assert keys.input_stream == "metrics:stream"
    assert (keys.output_stream, keys.state, keys.status, keys.errors) == (
        "s1-proj3-output:stream", "s1-proj3-output:state", "s1-proj3-output:status", "s1-proj3-output:errors")
    with pytest.raises(ValueError, match="no output key"):
        schema.Keys().state


def test_stream_entries_to_frame_counts_malformed_entries():
    good = schema.encode_sample(fixture_samples()[0])
    entries = [("1-0", {"sample": good}), ("2-0", {"sample": "{"}), ("3-0", {"other": "x"})]
    frame, malformed = schema.entries_to_frame(entries)
    assert len(frame) == 1 and malformed == 2 and frame["entry_id"].iloc[0] == "1-0"


def test_units_cover_every_known_numeric_field():
    assert all(field in schema.UNITS for field in schema.INT_FIELDS | schema.FLOAT_FIELDS)
    assert not math.isnan(schema.stream_id_millis("1732800000000-3"))
