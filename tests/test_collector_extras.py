"""The collector's extended metrics, top processes, rollup tiers, server-clock trimming and host ids."""

import json
import os
from collections import namedtuple
import subprocess
import sys
import time
from datetime import datetime, timedelta

import psutil
import pytest

from runtime import collector, extras, schema
from runtime.collector import Publisher
from runtime.config import RedisSettings, connect
from runtime.rollup import Rollups
from tests.conftest import REPO_DIR, make_samples


def test_extras_have_every_host_wide_source_and_real_mounts_only():
    extra = extras.ExtraSampler().read()
    expected = {*schema.LOAD_AVG, *schema.SWAP_FIELDS, schema.SWAP_PERCENT, *schema.CPU_TIMES_FIELDS}
    assert expected <= set(extra)
    assert all(schema.extra_spec(name) is not None for name in extra)
    assert 0 <= extra["cpu_times_percent-idle"] <= 100
    mounts = {schema.extra_device(name) for name in extra if name.startswith(schema.DISK_USAGE_PREFIX)}
    assert not mounts & {"/proc", "/sys", "/dev", "/dev/shm", "/run"}  # pseudo file systems stay out
    for mount in mounts:
        assert extra[schema.disk_usage_field(mount, "total")] == psutil.disk_usage(mount).total
    disks = {schema.extra_device(name) for name in extra if name.startswith(schema.DISK_IO_PREFIX)}
    assert not any(disk.startswith("loop") for disk in disks)


def test_one_failing_source_drops_only_its_own_values(monkeypatch):
    sampler = extras.ExtraSampler()
    sampler._refresh_devices()
    sampler._mounts = ["/no/such/mount", *sampler._mounts]

    def unavailable():
        raise OSError("no load average here")

    monkeypatch.setattr(psutil, "getloadavg", unavailable)
    extra = sampler.read()
    assert not any(name.startswith("load_avg-") for name in extra)
    assert schema.SWAP_PERCENT in extra and "disk_usage-/no/such/mount-total" not in extra


def test_top_processes_rank_a_busy_process_first_with_primed_cpu():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        top = extras.TopProcesses(period=0)  # primes every process's cpu_percent
        time.sleep(1.0)
        reading = top.due()
    finally:
        busy.kill()
        busy.wait()
    assert len(reading["by_cpu"]) == schema.TOP_COUNT == len(reading["by_memory"])
    # Other work may share the 2 cores: the busy loop is among the top 10, with CPU measured (primed, not 0.0).
    assert busy.pid in [p["pid"] for p in reading["by_cpu"]]
    assert next(p for p in reading["by_cpu"] if p["pid"] == busy.pid)["cpu_percent"] > 5
    rss = [p["rss"] or 0 for p in reading["by_memory"]]
    assert rss == sorted(rss, reverse=True) and rss[0] > 0
    schema.parse_top(json.dumps(reading))


def test_top_processes_wait_for_their_period():
    top = extras.TopProcesses(period=3600)
    assert top.due() is None


def test_the_course_value_stays_the_course_fields_and_extras_ride_beside_it(client, redis_url):
    publisher = Publisher(connect(RedisSettings(redis_url), "test"), schema.Keys(), 3600, 10)
    sample = collector.Sampler().sample()
    extra = extras.ExtraSampler().read()
    top = extras.TopProcesses.read()
    assert publisher.publish(sample, extra, top=top)
    assert json.loads(client.get("metrics")) == sample
    (_, fields), = client.xrange("metrics:stream")
    assert fields["sample"] == client.get("metrics") and json.loads(fields["extra"]) == extra
    assert schema.parse_top(client.get("metrics:top"))["by_cpu"]
    frame, malformed = schema.entries_to_frame(client.xrange("metrics:stream"))
    assert malformed == 0 and frame["load_avg-1"].iloc[0] == extra["load_avg-1"]


def test_rollups_close_a_bucket_when_a_later_one_starts():
    start = datetime(2026, 11, 30, 8, 0, 0)
    samples = make_samples(25, start=start)
    rollups, closed = Rollups(), []
    for i, sample in enumerate(samples):
        closed += rollups.add(sample, {"load_avg-1": float(i), "disk_io-sda-read_bytes": i})
    ten = [fields for tier, fields in closed if tier == "10s"]
    assert len(ten) == 2 and not [1 for tier, _ in closed if tier == "1m"]
    first = json.loads(ten[0]["sample"])
    assert first["timestamp"] == "2026-11-30 08:00:00.000000" and ten[0]["count"] == "10"
    assert first["cpu_percent-0"] == pytest.approx(sum(s["cpu_percent-0"] for s in samples[:10]) / 10)
    assert isinstance(first["virtual_memory-used"], int)
    assert json.loads(ten[1]["extra"]) == {"load_avg-1": 14.5, "disk_io-sda-read_bytes": 14}
    rest = dict(rollups.close_all())
    assert rest["10s"]["count"] == "5" and rest["1m"]["count"] == "25"
    schema.parse_sample(rest["1m"]["sample"])


def test_rollup_entries_go_to_their_tier_streams(client, redis_url):
    publisher = Publisher(connect(RedisSettings(redis_url), "test"), schema.Keys(), 3600, 10, host="node-1")
    rollups = Rollups()
    for sample in make_samples(12):
        publisher.publish(sample, {}, rollups.add(sample, {}))
    publisher.rollups.extend(rollups.close_all())
    assert publisher.flush()
    tier, malformed = schema.tier_to_frame(client.xrange("metrics:node-1:rollup:10s"))
    assert malformed == 0 and tier["count"].sum() == 12
    assert client.xlen("metrics:node-1:rollup:1m") == 1


def test_a_collector_clock_25_h_ahead_trims_nothing(client, redis_url, monkeypatch):
    ahead = time.time() + 25 * 3600
    monkeypatch.setattr(collector.time, "time", lambda: ahead)
    monkeypatch.setattr(collector, "datetime", type("Ahead", (), {"now": staticmethod(
        lambda: datetime.now() + timedelta(hours=25))}))
    publisher = Publisher(connect(RedisSettings(redis_url), "test"), schema.Keys(), 24 * 3600, 1000)
    for sample in make_samples(250):  # several stream nodes: approximate trimming drops whole nodes
        assert publisher.publish(sample)
    assert client.xlen("metrics:stream") == 250


def test_trimming_drops_entries_older_than_retention_on_the_servers_clock(client, redis_url):
    old_ms = int(client.time()[0] * 1000) - 2 * 3600 * 1000
    for i in range(300):
        client.xadd("metrics:stream", {"sample": "{}"}, id=f"{old_ms + i}-0")
    publisher = Publisher(connect(RedisSettings(redis_url), "test"), schema.Keys(), 3600, 10)
    for sample in make_samples(2):
        assert publisher.publish(sample)
    assert client.xlen("metrics:stream") < 300


@pytest.mark.parametrize("host, message", [
    ("state", "is reserved"), ("lease", "is reserved"), ("stream", "is reserved"), ("hosts", "is reserved"),
    ("a:b", "letters, digits"), (b"n\xffde", "letters, digits"), ("x" * 254, "letters, digits"),
], ids=["state", "lease", "stream", "hosts", "colon", "non-utf8", "too-long"])
def test_a_bad_host_id_is_refused_at_start(redis_url, host, message):
    env = {**{k.encode(): v.encode() for k, v in os.environ.items()}, b"REDIS_URL": redis_url.encode(),
           b"HOST_ID": host if isinstance(host, bytes) else host.encode()}
    result = subprocess.run([sys.executable, "-m", "runtime.collector"], cwd=REPO_DIR, capture_output=True,
                            text=True, env=env, timeout=30)
    assert result.returncode == 2 and "collector: HOST_ID: host id" in result.stderr and message in result.stderr


def test_a_key_of_the_wrong_type_is_named_and_samples_wait_until_it_is_fixed(client, redis_url, caplog):
    client.set("metrics:stream", "not a stream")
    publisher = Publisher(connect(RedisSettings(redis_url), "test"), schema.Keys(), 3600, 10)
    samples = make_samples(2)
    with caplog.at_level("ERROR"):
        assert not publisher.publish(samples[0])
    assert "wrong_key_type key=metrics:stream type=string expected=stream" in caplog.text
    client.delete("metrics:stream")
    publisher._next_attempt = 0.0  # skip the back-off wait
    assert publisher.publish(samples[1])
    assert [json.loads(f["sample"]) for _, f in client.xrange("metrics:stream")] == samples


def test_temperatures_are_labelled_by_chip_and_sensor_and_a_nan_reading_is_left_out(monkeypatch):
    Temp = namedtuple("shwtemp", "label current high critical")  # psutil's reading of one sensor
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {
        "coretemp": [Temp("Package id 0", 51.0, 80.0, 100.0), Temp("Core 0", 49.0, 80.0, 100.0),
                     Temp("Core 0", 48.0, 80.0, 100.0)],
        "acpitz": [Temp("", 40.0, None, None)], "nvme": [Temp("Composite", float("nan"), None, None)]})
    extra = extras.ExtraSampler().read()
    temperatures = {schema.extra_device(n): v for n, v in extra.items() if n.startswith(schema.TEMPERATURE_PREFIX)}
    assert temperatures == {"coretemp Package id 0": 51.0, "coretemp Core 0": 49.0, "coretemp Core 0 2": 48.0,
                            "acpitz": 40.0}
