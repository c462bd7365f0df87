"""Faults injected into a running pipeline: every sample in the stream gets exactly one output, in
order, equal to an uninterrupted run's, and the stored context.env is the one that run had there."""

import json
import random
import signal
import threading
import time
from types import SimpleNamespace

import redis

import usermodule
from runtime import envcodec, schema
from tests.conftest import REPO_DIR, kill_and_restart_at, make_samples, outputs, runtime_env, spawn, wait_for

USERMODULE = str(REPO_DIR / "usermodule.py")


def stream_samples(client) -> tuple[list[str], list[dict]]:
    entries = client.xrange("metrics:stream")
    return [i for i, _ in entries], [json.loads(f["sample"]) for _, f in entries]


def assert_exactly_once_with_the_uninterrupted_env(client) -> None:
    ids, samples = stream_samples(client)
    stored = outputs(client, "out")
    assert [i for i, _ in stored] == ids, f"{len(stored)} outputs for {len(ids)} samples, or out of order"
    state = json.loads(client.get("out:state"))
    env_at = ids.index(state.get("env_cursor") or state["cursor"])  # the env is stored at most every second
    context, stored_env = SimpleNamespace(env={}), None
    expected = []
    for index, sample in enumerate(samples):
        expected.append(usermodule.handler(sample, context))
        if index == env_at:
            stored_env = envcodec.encode(context.env)
    for index, ((_, got), want) in enumerate(zip(stored, expected)):
        if got != want:
            around = [(ids[i], samples[i]["timestamp"]) for i in range(max(0, index - 3), min(len(ids), index + 3))]
            raise AssertionError(f"output {index} differs; stream around it: {around}; got {got} want {want}; "
                                 f"samples {[samples[i]['cpu_percent-0'] for i in range(index - 12, index + 1)]}")
    assert state["env"] == stored_env


def patient_publisher(client, samples, stop_after=None, pause=0.01):
    """Publish in small transactions, retrying through outages (a chunk may land twice: fine, each
    stream entry is a sample of its own for the runtime)."""
    def run():
        for start in range(0, len(samples), 5):
            while True:
                try:
                    pipe = client.pipeline(transaction=True)
                    for sample in samples[start:start + 5]:
                        payload = schema.encode_sample(sample)
                        pipe.xadd("metrics:stream", schema.sample_entry(payload))
                        pipe.set("metrics", payload)
                    pipe.execute()
                    break
                except redis.RedisError:
                    time.sleep(0.1)
            time.sleep(pause)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_runtime_killed_at_20_random_points_of_2000_samples(client, redis_url, processes):
    env = runtime_env(redis_url, USERMODULE, BATCH_SIZE="13", LEASE_SECONDS="1")
    processes.append(spawn("runtime", env))
    feeding = patient_publisher(client, make_samples(2000), pause=0.02)
    kill_and_restart_at(client, processes, env, sorted(random.Random(20).sample(range(50, 1950), 20)))
    feeding.join()
    wait_for(lambda: len(outputs(client, "out")) >= 2000, timeout=60, what="2000 outputs")
    time.sleep(0.5)
    assert_exactly_once_with_the_uninterrupted_env(client)


def test_redis_killed_and_restarted_from_its_append_only_file(own_valkey, processes):
    server = own_valkey(appendfsync="always")  # SIGKILL loses nothing that was acknowledged
    url = server.connection_url
    client = redis.Redis.from_url(url, decode_responses=True)
    processes.append(spawn("runtime", runtime_env(url, USERMODULE, BATCH_SIZE="7")))
    feeding = patient_publisher(client, make_samples(600))
    wait_for(lambda: len(outputs(client, "out")) >= 200, timeout=30)
    server.terminate()  # SIGKILL
    time.sleep(2)
    own_valkey(appendfsync="always")
    feeding.join()
    wait_for(lambda: len(outputs(client, "out")) >= client.xlen("metrics:stream"), timeout=60,
             what="an output for every sample in the stream")
    time.sleep(0.5)
    assert client.xlen("metrics:stream") >= 600
    assert_exactly_once_with_the_uninterrupted_env(client)


def test_collector_killed_and_restarted(client, redis_url, processes):
    processes.append(spawn("runtime", runtime_env(redis_url, USERMODULE)))
    collector_env = {"REDIS_URL": redis_url, "INTERVAL": "0.5"}
    processes.append(spawn("runtime.collector", collector_env))
    wait_for(lambda: client.xlen("metrics:stream") >= 4, timeout=15)
    processes[-1].send_signal(signal.SIGKILL)
    processes[-1].wait(10)
    processes.append(spawn("runtime.collector", collector_env))
    count = client.xlen("metrics:stream")
    wait_for(lambda: client.xlen("metrics:stream") >= count + 4, timeout=15)
    processes[-1].send_signal(signal.SIGTERM)
    assert processes[-1].wait(10) == 0
    wait_for(lambda: len(outputs(client, "out")) == client.xlen("metrics:stream"), timeout=15)
    time.sleep(0.5)
    assert_exactly_once_with_the_uninterrupted_env(client)


def test_redis_unreachable_for_10_s_with_collector_and_runtime_running(own_valkey, processes):
    server = own_valkey()
    url = server.connection_url
    client = redis.Redis.from_url(url, decode_responses=True)
    processes.append(spawn("runtime", runtime_env(url, USERMODULE)))
    processes.append(spawn("runtime.collector", {"REDIS_URL": url, "INTERVAL": "0.5"}))
    wait_for(lambda: len(outputs(client, "out")) >= 4, timeout=20)
    server.stop()
    time.sleep(10)
    own_valkey()
    wait_for(lambda: client.xlen("metrics:stream") >= 30, timeout=30, what="the buffered samples")
    processes[-1].send_signal(signal.SIGTERM)
    assert processes[-1].wait(15) == 0
    wait_for(lambda: len(outputs(client, "out")) == client.xlen("metrics:stream"), timeout=30)
    time.sleep(0.5)
    _, samples = stream_samples(client)
    times = [schema.parse_timestamp(s["timestamp"]) for s in samples]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert max(gaps) < 1.5, "samples taken while Redis was away are missing"
    assert_exactly_once_with_the_uninterrupted_env(client)
