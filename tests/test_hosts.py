"""Many hosts: collectors with HOST_ID publish per host; the runtime follows every host on its own."""

import json
import time
from types import SimpleNamespace

import pytest

import usermodule
from runtime import schema
from runtime.config import CollectorConfig, ConfigError
from tests.conftest import REPO_DIR, outputs, runtime_env, spawn, wait_for

USERMODULE = str(REPO_DIR / "usermodule.py")


def host_outputs(client, host):
    return outputs(client, f"out:{host}")


def assert_like_a_single_host_run(client, host):
    keys = schema.Keys(input="metrics").for_host(host)
    entries = client.xrange(keys.input_stream)
    samples = [json.loads(f["sample"]) for _, f in entries]
    stored = host_outputs(client, host)
    assert [i for i, _ in stored] == [i for i, _ in entries][:len(stored)]
    context = SimpleNamespace(env={})
    expected = [usermodule.handler(s, context) for s in samples][:len(stored)]
    assert [o for _, o in stored] == expected


def test_keys_of_a_host():
    keys = schema.Keys(input="metrics", output="s1-proj3-output").for_host("node-1.example")
    assert (keys.input, keys.input_stream, keys.output, keys.state) == (
        "metrics:node-1.example", "metrics:node-1.example:stream", "s1-proj3-output:node-1.example",
        "s1-proj3-output:node-1.example:state")
    assert schema.Keys().hosts == "metrics:hosts"
    with pytest.raises(ConfigError, match="HOST_ID: host id 'a:b' must be 1 to 253 letters, digits"):
        CollectorConfig.from_env({"HOST_ID": "a:b"})


def test_three_hosts_get_three_independent_outputs_and_a_new_host_is_picked_up(client, redis_url, processes):
    processes.append(spawn("runtime", runtime_env(redis_url, USERMODULE)))
    for host in ("alpha", "beta", "gamma"):
        processes.append(spawn("runtime.collector", {"REDIS_URL": redis_url, "INTERVAL": "0.5", "HOST_ID": host}))
    for host in ("alpha", "beta", "gamma"):
        wait_for(lambda: len(host_outputs(client, host)) >= 4, timeout=30, what=f"outputs of {host}")
    assert set(client.hkeys("metrics:hosts")) == {"alpha", "beta", "gamma"}
    assert not client.exists("metrics") and not client.exists("out")  # the plain keys stay untouched
    processes.append(spawn("runtime.collector", {"REDIS_URL": redis_url, "INTERVAL": "0.5", "HOST_ID": "delta"}))
    wait_for(lambda: len(host_outputs(client, "delta")) >= 2, timeout=20, what="the new host to be followed")
    for process in processes[1:]:
        process.terminate()
        process.wait(10)
    time.sleep(1)
    for host in ("alpha", "beta", "gamma", "delta"):
        assert_like_a_single_host_run(client, host)
        assert client.hget(f"out:{host}:status", "state") == "running"
