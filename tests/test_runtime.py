"""The course's runtime contract, point by point, against a real Valkey server."""

import json
import re
import time
from datetime import datetime

import pytest

from runtime.status import Mode

from tests.conftest import (fixture_path, make_samples, outputs, publish, running_runtime, runtime_env, wait_for, write_function)

CONTEXT_PROBE = '''
import datetime

def handler(input, context):
    calls = context.env.get("calls", 0) + 1
    context.env["calls"] = calls
    context.env.setdefault("ids", []).append(id(context))
    return {
        "host": context.host, "port": context.port,
        "input_key": context.input_key, "output_key": context.output_key,
        "function_getmtime": context.function_getmtime,
        "last_execution": None if context.last_execution is None else context.last_execution.isoformat(),
        "last_execution_is_datetime": isinstance(context.last_execution, datetime.datetime),
        "env_is_dict": isinstance(context.env, dict),
        "same_context": len(set(context.env["ids"])) == 1,
        "env_via_item": context["env"]["calls"],
        "calls": calls,
        "timestamp": input["timestamp"],
    }
'''


def test_context_has_the_course_fields_and_types(client, redis_url, tmp_path):
    path = write_function(tmp_path, CONTEXT_PROBE)
    publish(client, make_samples(3))
    with running_runtime(runtime_env(redis_url, path)):
        results = wait_for(lambda: len(outputs(client, "out")) == 3 and outputs(client, "out"))
    first, second, third = (output for _, output in results)
    port = int(redis_url.rsplit(":", 1)[1])
    assert (first["host"], first["port"], first["input_key"], first["output_key"]) == ("127.0.0.1", port, "metrics", "out")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", first["function_getmtime"])
    assert first["function_getmtime"] == datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
    assert first["last_execution"] is None and not first["last_execution_is_datetime"]
    assert second["last_execution_is_datetime"] and third["last_execution"] >= second["last_execution"]
    assert all(o["env_is_dict"] and o["same_context"] for o in (first, second, third))
    assert [o["calls"] for o in (first, second, third)] == [1, 2, 3]
    assert third["env_via_item"] == 3
    assert json.loads(client.get("out")) == third  # the latest output, with SET, as JSON


def test_reassigned_env_persists_to_the_next_call(client, redis_url, tmp_path):
    path = write_function(tmp_path, '''
def handler(input, context):
    previous = context.env.get("n", 0)
    context.env = {"n": previous + 1}
    return {"n": context.env["n"]}
''')
    publish(client, make_samples(4))
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: len(outputs(client, "out")) == 4)
    assert [o["n"] for _, o in outputs(client, "out")] == [1, 2, 3, 4]


def test_falsy_output_stores_nothing_but_advances(client, redis_url, tmp_path):
    path = write_function(tmp_path, '''
def handler(input, context):
    context.env["seen"] = context.env.get("seen", 0) + 1
    return {} if context.env["seen"] < 3 else {"seen": context.env["seen"]}
''')
    ids = publish(client, make_samples(3))
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: client.get("out"))
    assert outputs(client, "out") == [(ids[2], {"seen": 3})]
    assert json.loads(client.get("out:state"))["cursor"] == ids[2]


def test_every_stream_sample_is_handled_once_in_order(client, redis_url):
    ids = publish(client, make_samples(50))
    with running_runtime(runtime_env(redis_url, "usermodule.py")):
        wait_for(lambda: len(outputs(client, "out")) == 50)
        ids += publish(client, make_samples(10))
        wait_for(lambda: len(outputs(client, "out")) == 60)
    assert [sample_id for sample_id, _ in outputs(client, "out")] == ids
    entry = client.xrange("out:stream", count=1)[0][1]
    assert entry["timestamp"] == make_samples(1)[0]["timestamp"]


def test_without_a_checkpoint_it_starts_at_the_newest_sample(client, redis_url):
    ids = publish(client, make_samples(5))
    env = runtime_env(redis_url, "usermodule.py", START_FROM="latest")
    with running_runtime(env):
        wait_for(lambda: outputs(client, "out"))
        time.sleep(0.3)
    assert [i for i, _ in outputs(client, "out")] == [ids[-1]]


def test_poll_mode_runs_only_when_the_value_changes(client, redis_url, tmp_path):
    """The course's collector writes only the key: poll it, and never re-run a stale sample."""
    path = write_function(tmp_path, '''
def handler(input, context):
    context.env["n"] = context.env.get("n", 0) + 1
    return {"n": context.env["n"], "ts": input["timestamp"]}
''')
    samples = make_samples(2)
    client.set("metrics", json.dumps(samples[0]))
    with running_runtime(runtime_env(redis_url, path, INTERVAL="0.05")) as runtime:
        wait_for(lambda: client.get("out"))
        time.sleep(0.5)  # ten polls of an unchanged value
        assert json.loads(client.get("out")) == {"n": 1, "ts": samples[0]["timestamp"]}
        client.set("metrics", json.dumps(samples[1]))
        wait_for(lambda: json.loads(client.get("out"))["n"] == 2)
        assert runtime.reader.mode is Mode.POLL
    assert client.hget("out:status", "mode") == "poll"


def test_poll_mode_survives_a_restart_without_rerunning(client, redis_url, tmp_path):
    path = write_function(tmp_path, 'def handler(input, context):\n    return {"ts": input["timestamp"]}\n')
    client.set("metrics", json.dumps(make_samples(1)[0]))
    env = runtime_env(redis_url, path, INTERVAL="0.05")
    with running_runtime(env):
        wait_for(lambda: client.get("out"))
    with running_runtime(env):
        time.sleep(0.4)
    assert client.hget("out:status", "invocations") == "1"


def test_host_and_port_variables_work_like_the_course(client, redis_url, tmp_path):
    path = write_function(tmp_path, 'def handler(input, context):\n    return {"port": context.port}\n')
    port = redis_url.rsplit(":", 1)[1]
    env = runtime_env(redis_url, path, REDIS_HOST="127.0.0.1", REDIS_PORT=port)
    del env["REDIS_URL"]
    publish(client, make_samples(1))
    with running_runtime(env):
        wait_for(lambda: client.get("out"))
    assert json.loads(client.get("out")) == {"port": int(port)}


def test_another_entry_point_by_name(client, redis_url, tmp_path):
    path = write_function(tmp_path, 'def insights(input, context):\n    return {"ok": 1}\n')
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, path, FUNCTION_HANDLER="insights")):
        wait_for(lambda: client.get("out"))


def test_no_output_key_runs_the_handler_and_stores_nothing(client, redis_url, tmp_path, caplog):
    marker = tmp_path / "called"
    path = write_function(tmp_path, f'''
def handler(input, context):
    open({str(marker)!r}, "a").write("x")
    return {{"stored": "nowhere"}}
''')
    publish(client, make_samples(2))
    env = runtime_env(redis_url, path)
    del env["REDIS_OUTPUT_KEY"]
    with running_runtime(env):
        wait_for(lambda: marker.exists() and len(marker.read_text()) == 2)
    assert sorted(client.keys("*")) == ["metrics", "metrics:stream"]
    assert "nothing is stored" in caplog.text


def test_numpy_results_and_assignment_field_names(client, redis_url, tmp_path):
    path = write_function(tmp_path, '''
import numpy as np

def handler(input, context):
    sent = input["net_io_counters_eth0-bytes_sent1"]
    return {"sent": np.int64(sent), "mean": np.float64(1.5), "arr": np.array([1, 2])}
''')
    sample = json.loads(fixture_path("metrics-course-8cpu.json").read_text())
    publish(client, [sample])
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: client.get("out"))
    assert json.loads(client.get("out")) == {"sent": sample["net_io_counters_eth0-bytes_sent"], "mean": 1.5, "arr": [1, 2]}


def test_status_says_what_happened(client, redis_url):
    ids = publish(client, make_samples(3))
    with running_runtime(runtime_env(redis_url, "usermodule.py")):
        wait_for(lambda: client.hget("out:status", "invocations") == "3")
        status = client.hgetall("out:status")
    assert status["state"] == "running" and status["mode"] == "stream"
    assert status["last_sample_id"] == ids[-1]
    assert status["last_sample_timestamp"] == make_samples(3)[-1]["timestamp"]
    assert status["errors"] == "0" and status["env_durable"] == "1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d sha256:[0-9a-f]{12}", status["function_version"])
    assert float(status["lag_seconds"]) > 0
    datetime.fromisoformat(status["last_execution"])
    assert client.hget("out:status", "state") == "stopped"


STUDENT_HANDLERS = {
    "tuples_and_strptime": '''
from datetime import datetime, timedelta

def handler(input, context):
    now = datetime.strptime(input["timestamp"], "%Y-%m-%d %H:%M:%S.%f")
    history = context.env.setdefault("history", [])
    history.append((now, input["cpu_percent-0"]))
    context.env["history"] = [(t, v) for t, v in history if now - t < timedelta(seconds=60)]
    return {"avg": sum(v for _, v in context.env["history"]) / len(context.env["history"])}
''',
    "deque_maxlen": '''
from collections import deque

def handler(input, context):
    window = context.env.setdefault("w", deque(maxlen=12))
    window.append(input["cpu_percent-1"])
    return {"avg": sum(window) / len(window), "maxlen": window.maxlen}
''',
    "queue_and_int_keys": '''
import queue

def handler(input, context):
    env = context["env"]
    q = env.setdefault("q", queue.Queue(maxsize=3))
    if q.full():
        q.get()
    q.put(input["cpu_percent-2"])
    counts = env.setdefault("counts", {})
    counts[len(counts)] = 1
    return {"avg": sum(q.queue) / q.qsize(), "keys": len(counts)}
''',
    "running_average_reassigned": '''
def handler(input, context):
    n = context.env.get("n", 0) + 1
    mean = context.env.get("mean", 0.0)
    mean += (input["cpu_percent-3"] - mean) / n
    context.env = {"n": n, "mean": mean}
    return {"avg": mean}
''',
}


@pytest.mark.parametrize("name", sorted(STUDENT_HANDLERS))
def test_student_handlers_run_unchanged_and_their_env_survives_a_restart(client, redis_url, tmp_path, name):
    """Half the samples, restart, the other half: the same outputs as one uninterrupted run."""
    path = write_function(tmp_path, STUDENT_HANDLERS[name])
    samples = make_samples(30, step_seconds=5)
    publish(client, samples[:15])
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: len(outputs(client, "out")) == 15)
    publish(client, samples[15:])
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: len(outputs(client, "out")) == 30)
    assert client.hget("out:status", "env_durable") == "1"
    with running_runtime(runtime_env(redis_url, path, REDIS_OUTPUT_KEY="uninterrupted")):
        wait_for(lambda: len(outputs(client, "uninterrupted")) == 30)
    assert [o for _, o in outputs(client, "out")] == [o for _, o in outputs(client, "uninterrupted")]


def test_switching_from_polling_to_the_stream_skips_nothing_and_repeats_nothing(client, redis_url, tmp_path):
    path = write_function(tmp_path, 'def handler(input, context):\n    return {"ts": input["timestamp"]}\n')
    first, second, third, fourth = make_samples(4)
    client.set("metrics", json.dumps(first))
    env = runtime_env(redis_url, path, INTERVAL="0.3", START_FROM="latest")
    with running_runtime(env):
        wait_for(lambda: client.get("out"))
        # The collector starts publishing the stream while the runtime sleeps between polls.
        publish(client, [json.dumps(first), second, third])
        wait_for(lambda: client.hget("out:status", "invocations") == "3")
        ids = publish(client, [fourth])
        wait_for(lambda: client.hget("out:status", "invocations") == "4")
        time.sleep(0.2)
    timestamps = [o["ts"] for _, o in outputs(client, "out")]
    assert timestamps == [s["timestamp"] for s in (first, second, third, fourth)]
    assert json.loads(client.get("out:state"))["cursor"] == ids[0]


def test_a_runtime_started_before_the_collector_handles_every_sample(client, redis_url, tmp_path):
    path = write_function(tmp_path, 'def handler(input, context):\n    return {"ts": input["timestamp"]}\n')
    env = runtime_env(redis_url, path, INTERVAL="1", START_FROM="latest")
    with running_runtime(env):
        time.sleep(0.3)  # the runtime is up (polling: no key, no stream yet)
        ids = publish(client, make_samples(5))  # the collector's first samples, faster than one poll
        wait_for(lambda: client.hget("out:status", "invocations") == "5", timeout=10)
    assert [i for i, _ in outputs(client, "out")] == ids
