"""The bad-input classes the other suites do not already cover; docs/bad-input.md lists them all."""

import json
import time

import redis

from tests.conftest import (REPO_DIR, errors, make_samples, outputs, publish, running_runtime, runtime_env, spawn,
                            wait_for, write_function)

USERMODULE = REPO_DIR / "usermodule.py"


def run_usermodule_on(client, redis_url, payloads):
    ids = publish(client, payloads)
    with running_runtime(runtime_env(redis_url, USERMODULE)):
        wait_for(lambda: client.hget("out:status", "invocations") == str(len(payloads)))
    return ids


def test_a_sample_without_timestamp_is_an_error_record_for_a_handler_that_needs_it(client, redis_url):
    sample = make_samples(1)[0]
    del sample["timestamp"]
    ids = run_usermodule_on(client, redis_url, [sample] + make_samples(1))
    (record,) = errors(client, "out")
    assert record["message"] == "KeyError: 'timestamp'" and record["sample_id"] == ids[0]
    assert [i for i, _ in outputs(client, "out")] == [ids[1]]


def test_an_unparsable_timestamp_is_an_error_record(client, redis_url):
    ids = run_usermodule_on(client, redis_url, [dict(make_samples(1)[0], timestamp="yesterday")] + make_samples(1))
    (record,) = errors(client, "out")
    assert record["fault"] == "handler_error" and "Invalid isoformat string: 'yesterday'" in record["message"]
    assert record["sample_id"] == ids[0]


def test_a_non_numeric_field_is_skipped_by_the_example_function(client, redis_url):
    run_usermodule_on(client, redis_url, [dict(make_samples(1)[0], **{"cpu_percent-0": "high"})])
    (_, output), = outputs(client, "out")
    assert "avg-util-cpu0-60sec" not in output and "avg-util-cpu1-60sec" in output and not errors(client, "out")


def test_nan_and_infinity_in_the_input_are_skipped_by_the_example_function(client, redis_url):
    text = json.dumps(make_samples(1)[0]).replace('"cpu_percent-0": 7.8', '"cpu_percent-0": NaN')
    text = text.replace('"cpu_percent-1": 23.3', '"cpu_percent-1": Infinity')
    run_usermodule_on(client, redis_url, [text])
    (_, output), = outputs(client, "out")
    assert not {"avg-util-cpu0-60sec", "avg-util-cpu1-60sec"} & set(output) and "avg-util-cpu2-60sec" in output
    assert not errors(client, "out")


def test_a_10_mb_sample_is_handled(client, redis_url):
    big = dict(make_samples(1)[0], padding="x" * (10 * 1024 * 1024))
    run_usermodule_on(client, redis_url, [big] + make_samples(1))
    assert len(outputs(client, "out")) == 2 and not errors(client, "out")


def test_deeply_nested_input_is_refused_as_not_json(client, redis_url):
    ids = run_usermodule_on(client, redis_url, ["[" * 100_000 + "]" * 100_000] + make_samples(1))
    (record,) = errors(client, "out")
    assert record["fault"] == "input_invalid" and "payload is not JSON" in record["message"]
    assert record["sample_id"] == ids[0]


def test_cpu_count_changing_between_samples(client, redis_url):
    two = {k: v for k, v in make_samples(1)[0].items() if k not in ("cpu_percent-2", "cpu_percent-3")}
    four = make_samples(2)[1]
    run_usermodule_on(client, redis_url, [two, four])
    first, second = (o for _, o in outputs(client, "out"))
    assert "avg-util-cpu3-60sec" not in first and second["avg-util-cpu3-60sec"] == four["cpu_percent-3"]
    assert second["avg-util-cpu0-60sec"] == (two["cpu_percent-0"] + four["cpu_percent-0"]) / 2


def test_a_handler_returning_a_list_stores_it_as_the_reference_does(client, redis_url, tmp_path):
    path = write_function(tmp_path, "def handler(input, context):\n    return [1, 2.5, 'three']\n")
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: client.get("out"))
    assert json.loads(client.get("out")) == [1, 2.5, "three"]


def test_a_malformed_handler_name_is_a_load_error(client, redis_url):
    with running_runtime(runtime_env(redis_url, USERMODULE, FUNCTION_HANDLER="not a name")):
        wait_for(lambda: errors(client, "out"))
    assert "FUNCTION_HANDLER='not a name' is not `function`, `module:function`" in errors(client, "out")[0]["message"]


def test_redis_out_of_memory_is_waited_out_with_nothing_lost(own_valkey, processes, tmp_path):
    server = own_valkey()
    client = redis.Redis.from_url(server.connection_url, decode_responses=True)
    ids = publish(client, make_samples(5))
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory", str(used + 1024))  # full: every write refused (noeviction)
    client.config_set("maxmemory-policy", "noeviction")
    log = open(tmp_path / "runtime.log", "w")
    processes.append(spawn("runtime", runtime_env(server.connection_url, str(USERMODULE)), stderr=log))
    time.sleep(3)
    assert processes[0].poll() is None and not outputs(client, "out")
    assert "command not allowed when used memory > 'maxmemory'" in (tmp_path / "runtime.log").read_text()
    client.config_set("maxmemory", "0")
    wait_for(lambda: len(outputs(client, "out")) == 5, timeout=30)
    assert [i for i, _ in outputs(client, "out")] == ids
