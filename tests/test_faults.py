"""Every fault becomes an error record and the runtime goes on with the next sample."""

import json

import pytest

from tests.conftest import errors, make_samples, outputs, publish, running_runtime, runtime_env, wait_for, write_function

FAULTY = '''
import sys

def handler(input, context):
    kind = input.get("fault")
    if kind == "raise":
        return {"x": 1 / 0}
    if kind == "exit":
        sys.exit(3)
    if kind == "set":
        return {"values": {1, 2}}
    if kind == "huge":
        return {"blob": "x" * 2_000_000}
    return {"ok": input["timestamp"]}
'''


@pytest.mark.parametrize("fault, kind, message", [
    ("raise", "handler_error", "ZeroDivisionError: division by zero"),
    ("exit", "handler_error", "SystemExit: 3"),
    ("set", "output_not_json", "cannot be stored as JSON"),
    ("huge", "output_too_large", "over OUTPUT_MAX_BYTES=1,048,576"),
], ids=['raises', 'sys-exit', 'returns-a-set', 'huge-output'])
def test_a_faulty_invocation_is_recorded_and_the_next_sample_runs(client, redis_url, tmp_path, fault, kind, message):
    path = write_function(tmp_path, FAULTY)
    good, bad, after = make_samples(3)
    ids = publish(client, [good, dict(bad, fault=fault), after])
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: len(outputs(client, "out")) == 2)
    assert [i for i, _ in outputs(client, "out")] == [ids[0], ids[2]]
    (record,) = errors(client, "out")
    assert record["fault"] == kind and message in record["message"]
    assert record["sample_id"] == ids[1] and record["sample_timestamp"] == bad["timestamp"]
    status = client.hgetall("out:status")
    assert status["errors"] == "1" and status[f"errors_{kind}"] == "1" and status["invocations"] == "3"
    assert json.loads(status["last_error"])["sample_id"] == ids[1]


def test_the_traceback_shows_only_the_users_frames(client, redis_url, tmp_path):
    path = write_function(tmp_path, FAULTY)
    publish(client, [dict(make_samples(1)[0], fault="raise")])
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: errors(client, "out"))
    trace = errors(client, "out")[0]["traceback"]
    assert str(path) in trace and 'return {"x": 1 / 0}' in trace
    assert "runtime/loop.py" not in trace and trace.rstrip().endswith("ZeroDivisionError: division by zero")


def test_a_zero_counter_division_in_a_student_handler_does_not_stop_the_runtime(client, redis_url, tmp_path):
    path = write_function(tmp_path, '''
def handler(input, context):
    sent = input["net_io_counters_eth0-bytes_sent"]
    return {"share": sent / (sent + input["net_io_counters_eth0-bytes_recv"])}
''')
    zero = dict(make_samples(1)[0], **{"net_io_counters_eth0-bytes_sent": 0, "net_io_counters_eth0-bytes_recv": 0})
    publish(client, [zero] + make_samples(1))
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: outputs(client, "out"))
    assert errors(client, "out")[0]["message"] == "ZeroDivisionError: division by zero"


@pytest.mark.parametrize("payload, message", [
    ("not json at all", "payload is not JSON"),
    ("[1, 2, 3]", "JSON but a list, not an object"),
    ('"text"', "JSON but a str"),
], ids=['not-json', 'json-list', 'json-string'])
def test_input_that_is_not_a_json_object_is_an_error_record(client, redis_url, tmp_path, payload, message):
    ids = publish(client, [payload] + make_samples(1))
    with running_runtime(runtime_env(redis_url, "usermodule.py")):
        wait_for(lambda: outputs(client, "out"))
    (record,) = errors(client, "out")
    assert record["fault"] == "input_invalid" and message in record["message"] and record["sample_id"] == ids[0]
    assert [i for i, _ in outputs(client, "out")] == [ids[1]]


def test_a_stream_entry_without_a_sample_is_an_error_record(client, redis_url):
    bad = client.xadd("metrics:stream", {"wrong": "field"})
    ids = publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, "usermodule.py")):
        wait_for(lambda: outputs(client, "out"))
    assert errors(client, "out")[0]["sample_id"] == bad and "no 'sample' field" in errors(client, "out")[0]["message"]
    assert outputs(client, "out")[0][0] == ids[0]


def test_poll_mode_reports_a_malformed_value(client, redis_url):
    client.set("metrics", "{broken")
    with running_runtime(runtime_env(redis_url, "usermodule.py")):
        wait_for(lambda: errors(client, "out"))
        client.set("metrics", json.dumps(make_samples(1)[0]))
        wait_for(lambda: client.get("out"))


@pytest.mark.parametrize("source, message", [
    ("def handler(input, context)\n    return {}\n", r"usermodule.py, line 1: SyntaxError"),
    ("import no_such_package_here\n", r"usermodule.py, line 1: ModuleNotFoundError: No module named 'no_such_package_here'"),
    ("x = 1\n\nraise RuntimeError('config missing')\n", r"usermodule.py, line 3: RuntimeError: config missing"),
    ("def main(input, context):\n    return {}\n", r"defines no 'handler' \(functions found: main\)"),
    ("handler = 42\n", r"'handler' is a int, not a function"),
    ("def handler(input):\n    return {}\n", r"handler\(input\) must accept two arguments"),
], ids=['syntax-error', 'missing-import', 'raises-at-import', 'no-entry-point', 'entry-point-not-a-function', 'wrong-signature'])
def test_a_broken_module_is_reported_and_retried_until_fixed(client, redis_url, tmp_path, source, message):
    path = write_function(tmp_path, source)
    publish(client, make_samples(2))
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: errors(client, "out"), what="a function_load error")
        record = errors(client, "out")[0]
        assert record["fault"] == "function_load"
        assert __import__("re").search(message, record["message"]), record["message"]
        assert client.hget("out:status", "state") == "function_error"
        assert not client.exists("out")  # samples wait in the stream; none is lost
        write_function(tmp_path, "def handler(input, context):\n    return {'fixed': True}\n")
        wait_for(lambda: len(outputs(client, "out")) == 2, what="both samples after the fix")
    assert client.hget("out:status", "function_error") == ""


def test_a_missing_module_names_the_path_and_the_fix(client, redis_url, tmp_path):
    with running_runtime(runtime_env(redis_url, tmp_path / "absent.py")):
        wait_for(lambda: errors(client, "out"))
    assert "absent.py: no such file; mount the function there or set FUNCTION_PATH" in errors(client, "out")[0]["message"]


def test_an_env_that_cannot_be_stored_keeps_working_and_is_reported(client, redis_url, tmp_path):
    path = write_function(tmp_path, '''
import threading

def handler(input, context):
    context.env.setdefault("lock", threading.Lock())
    context.env["n"] = context.env.get("n", 0) + 1
    return {"n": context.env["n"]}
''')
    publish(client, make_samples(3))
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: len(outputs(client, "out")) == 3)
    assert [o["n"] for _, o in outputs(client, "out")] == [1, 2, 3]
    status = client.hgetall("out:status")
    assert status["env_durable"] == "0" and "env['lock']" in status["env_error"] and "lock" in status["env_error"]
    state = json.loads(client.get("out:state"))
    assert state["env"] is None and state["env_durable"] is False


def test_a_malformed_checkpoint_starts_with_an_empty_env(client, redis_url, tmp_path, caplog):
    path = write_function(tmp_path, 'def handler(input, context):\n    return {"env": len(context.env)}\n')
    client.set("out:state", "{not json")
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: client.get("out"))
    assert "checkpoint" in caplog.text
