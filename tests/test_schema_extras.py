"""The schema's extended metrics, top processes, rollup tiers, host ids and time zones."""

import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from runtime import schema
from tests.conftest import fixture_samples

EXTRA = schema.build_extra(
    load_avg=(0.5, 0.25, 0.125),
    swap={"total": 2048, "used": 1024, "free": 1024, "percent": 50.0, "sin": 7},
    cpu_times={"user": 10.0, "system": 5.0, "iowait": 1.0, "steal": 0.0, "idle": 84.0, "nice": 0.0},
    disk_io={"nvme0n1": {"read_bytes": 10, "write_bytes": 20, "read_count": 1, "write_count": 2, "busy_time": 9},
             "dm-0": {"read_bytes": 5, "write_bytes": 6, "read_count": 7, "write_count": 8}},
    disk_usage={"/": {"total": 100, "used": 40, "free": 60, "percent": 40.0},
                "/mnt/data-disk": {"total": 10, "used": 1, "free": 9, "percent": 10.0}},
    temperatures={"coretemp Package id 0": 48.0},
)


def test_build_extra_uses_the_shared_flat_names_and_types():
    assert EXTRA["load_avg-1"] == 0.5 and EXTRA["load_avg-15"] == 0.125
    assert EXTRA["swap_memory-used"] == 1024 and EXTRA["swap_memory-percent"] == 50.0
    assert "swap_memory-sin" not in EXTRA and "cpu_times_percent-nice" not in EXTRA
    assert EXTRA["cpu_times_percent-iowait"] == 1.0
    assert EXTRA["disk_io-dm-0-write_count"] == 8 and "disk_io-nvme0n1-busy_time" not in EXTRA
    assert EXTRA["disk_usage-/mnt/data-disk-percent"] == 10.0
    assert EXTRA["sensors_temperatures-coretemp Package id 0"] == 48.0
    for name, value in EXTRA.items():
        kind, unit = schema.extra_spec(name)
        assert isinstance(value, kind) and unit, name


@pytest.mark.parametrize("name, kind, unit, device", [
    ("load_avg-5", float, "processes", None),
    ("swap_memory-total", int, "bytes", None),
    ("cpu_times_percent-steal", float, "%", None),
    ("disk_io-dm-0-read_bytes", int, "bytes", "dm-0"),
    ("disk_io-sda-read_count", int, "operations", "sda"),
    ("disk_usage-/var/lib-free", int, "bytes", "/var/lib"),
    ("disk_usage-/-percent", float, "%", "/"),
    ("sensors_temperatures-acpitz", float, "°C", "acpitz"),
])
def test_every_extra_name_has_a_type_a_unit_and_a_device(name, kind, unit, device):
    assert schema.extra_spec(name) == (kind, unit)
    assert schema.extra_device(name) == device


@pytest.mark.parametrize("name", ["load_avg-2", "disk_io--read_bytes", "disk_io-sda-busy_time", "disk_usage-/",
                                  "sensors_temperatures-", "cpu_percent-0", "timestamp"])
def test_unknown_extra_names_are_not_typed(name):
    assert schema.extra_spec(name) is None


def test_a_stream_entry_carries_the_course_sample_unchanged_and_extras_beside_it():
    sample = fixture_samples()[0]
    entry = schema.sample_entry(schema.encode_sample(sample), schema.encode_extra(EXTRA))
    assert json.loads(entry["sample"]) == sample  # what a handler sees: the course's fields only
    frame, malformed = schema.entries_to_frame([("1-0", entry)])
    assert malformed == 0
    assert frame["load_avg-1"].dtype == "float64" and frame["disk_io-dm-0-read_bytes"].dtype == "Int64"
    assert frame["cpu_percent-0"].iloc[0] == sample["cpu_percent-0"]
    assert list(frame.columns[:4]) == ["cpu_percent-0", "cpu_percent-1", "cpu_percent-2", "cpu_percent-3"]


@pytest.mark.parametrize("extra, malformed_count", [
    (b"\xff\xfe{", 1), (b"not json", 1), (b"[1]", 1), (b'{"load_avg-1": "high"}', 0)])
def test_bad_extras_drop_only_the_extras(extra, malformed_count):
    sample = schema.encode_sample(fixture_samples()[0])
    frame, malformed = schema.entries_to_frame([(b"1-0", {b"sample": sample.encode(), b"extra": extra})])
    assert len(frame) == 1 and "load_avg-1" not in frame
    assert malformed == malformed_count


def test_parse_extra_keeps_known_finite_values_only():
    raw = json.dumps({"load_avg-1": 1, "load_avg-5": float("inf"), "swap_memory-used": True, "rogue": 3,
                      "disk_io-sda-read_bytes": 12.0})
    assert schema.parse_extra(raw) == {"load_avg-1": 1.0, "disk_io-sda-read_bytes": 12}


def test_non_utf8_bytes_anywhere_in_an_entry_never_crash_a_reader():
    good = schema.encode_sample(fixture_samples()[0]).encode()
    entries = [(b"1-0", {b"sample": b"\xff" + good}), (b"2-0", {b"\xfe\xff": good}),
               (b"3-0", {b"sample": good, b"count": b"\xff"}), (b"4-0", {b"sample": good})]
    frame, malformed = schema.entries_to_frame(entries)
    assert malformed == 2 and list(frame["entry_id"]) == ["3-0", "4-0"]


def test_top_processes_keep_ten_per_ranking_and_parse_into_frames():
    processes = [{"pid": i, "name": f"p{i}", "cpu_percent": float(i % 7), "memory_percent": i / 10, "rss": i * 4096,
                  "ignored": 1} for i in range(30)]
    top = schema.build_top(datetime(2026, 11, 30, 8, 0), processes)
    assert len(top["by_cpu"]) == len(top["by_memory"]) == schema.TOP_COUNT
    assert top["by_memory"][0]["pid"] == 29 and top["by_cpu"][0]["cpu_percent"] == 6.0
    assert set(top["by_cpu"][0]) == set(schema.TOP_PROCESS_FIELDS)
    parsed = schema.parse_top(json.dumps(top))
    frame = schema.top_to_frame(parsed, schema.TOP_BY_MEMORY)
    assert list(frame.columns) == list(schema.TOP_PROCESS_FIELDS) and frame["rss"].dtype == "Int64"
    for bad in (b"\xff", "[]", '{"by_cpu": [1], "by_memory": []}', '{"by_cpu": []}'):
        with pytest.raises(schema.SampleError):
            schema.parse_top(bad)


def test_rollup_keys_and_tier_frames_merge_a_bucket_written_twice():
    keys = schema.Keys().for_host("node-1")
    assert (keys.top, keys.rollup("10s"), keys.rollup("1m")) == (
        "metrics:node-1:top", "metrics:node-1:rollup:10s", "metrics:node-1:rollup:1m")
    with pytest.raises(ValueError, match="not one of 10s, 1m"):
        keys.rollup("5m")
    first, second = fixture_samples()[:2]
    second = dict(second, timestamp=first["timestamp"])
    entries = [("1-0", schema.rollup_entry(first, {"load_avg-1": 1.0}, 3)),
               ("2-0", schema.rollup_entry(second, {"load_avg-1": 2.0}, 1))]
    frame, malformed = schema.tier_to_frame(entries)
    assert malformed == 0 and len(frame) == 1 and frame["count"].iloc[0] == 4
    assert frame["load_avg-1"].iloc[0] == pytest.approx(1.25)
    expected = (first["cpu_percent-0"] * 3 + second["cpu_percent-0"]) / 4
    assert frame["cpu_percent-0"].iloc[0] == pytest.approx(expected)
    assert frame["virtual_memory-used"].dtype == "Int64" and frame["entry_id"].iloc[0] == "2-0"


# --- host ids (issue 15) ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["node-1", "ip-10-0-0-1.ec2.internal", "worker_3", "a" * 253, "Stream2"])
def test_node_name_style_host_ids_are_accepted(host):
    assert schema.Keys(output="o").for_host(host).input == f"metrics:{host}"


@pytest.mark.parametrize("host, message", [
    *[(name, "is reserved") for name in sorted(schema.RESERVED_HOST_IDS)],
    ("STATE", "is reserved"),
    ("a:b", "letters, digits"), ("a b", "letters, digits"), ("", "letters, digits"), ("a" * 254, "letters, digits"),
    ("nöde", "letters, digits"), ("a/b", "letters, digits"), (b"\xff\xfe", "not UTF-8"), (None, "letters, digits"),
])
def test_host_ids_that_could_land_on_another_key_are_refused(host, message):
    with pytest.raises(ValueError, match=message):
        schema.Keys(output="o").for_host(host)


def test_valid_host_ids_splits_a_registry_and_counts_the_rest():
    registry = {b"node-1": b"x", b"\xff": b"x", b"state": b"x", "a:b": "x", "node-2": "x", "node-1": "x"}
    assert schema.valid_host_ids(registry) == (["node-1", "node-2"], 3)


# --- time zones (issue 13) -----------------------------------------------------------------------

@pytest.mark.parametrize("text", ["2026-11-30 08:00:00.000000Z", "2026-11-30 08:00:00.000000+00:00",
                                  "2026-11-30T17:00:00+09:00"])
def test_aware_timestamps_parse_to_the_same_instant(text):
    assert schema.timestamp_instant(text) == datetime(2026, 11, 30, 8, tzinfo=timezone.utc)
    assert schema.parse_timestamp(text).tzinfo is not None


def test_a_naive_timestamp_is_local_time():
    local = datetime(2026, 11, 30, 8, 0, 0, 5)
    assert schema.timestamp_instant(schema.format_timestamp(local)) == local.astimezone().astimezone(timezone.utc)


def test_frames_line_up_naive_and_aware_timestamps_as_instants():
    base = fixture_samples()[0]
    local = datetime(2026, 11, 30, 8, 0, 0)
    aware = local.astimezone().astimezone(timezone(timedelta(hours=9)))
    samples = [dict(base, timestamp=schema.format_timestamp(local + timedelta(seconds=1))),
               dict(base, timestamp=aware.isoformat()),
               dict(base, timestamp=(local + timedelta(seconds=2)).astimezone(timezone.utc).isoformat())]
    frame = schema.samples_to_frame(samples)
    assert frame.index.tz is None
    assert list(frame.index) == [pd.Timestamp(local + timedelta(seconds=s)) for s in (0, 1, 2)]


def test_a_sample_from_year_9999_is_framed_not_crashing():
    frame, malformed = schema.entries_to_frame(
        [("1-0", {"sample": schema.encode_sample(dict(fixture_samples()[0], timestamp="9999-12-31 23:59:59.000000"))})])
    assert malformed == 0 and frame.index[0].year == 9999


def test_every_field_a_reader_meets_has_a_unit():
    names = [*schema.INT_FIELDS, *schema.FLOAT_FIELDS, "cpu_percent-7", *EXTRA]
    assert all(schema.unit_of(name) for name in names)
    assert schema.unit_of("disk_io-sda-read_count") == "operations" and schema.unit_of("rogue") is None


def test_an_integer_over_pythons_digit_limit_is_refused_and_a_huge_one_still_frames():
    with pytest.raises(schema.SampleError, match="number Python cannot read .*Exceeds the limit"):
        schema.parse_sample('{"timestamp": "2026-11-30 08:00:00.000000", "n_pids": ' + "9" * 5000 + "}")
    huge = dict(fixture_samples()[0], n_pids=10**30)
    frame, malformed = schema.entries_to_frame([("1-0", {"sample": json.dumps(huge)})])
    assert malformed == 0 and frame["n_pids"].iloc[0] == pytest.approx(1e30)
