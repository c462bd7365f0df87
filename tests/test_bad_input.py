"""The bad-input classes the other suites do not already cover; docs/bad-input.md lists them all."""

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis

from runtime import schema
from runtime.config import RuntimeConfig, connect
from runtime.loop import Runtime, make_invoker
from tests.conftest import (REPO_DIR, errors, free_port, make_samples, outputs, publish, running_runtime, runtime_env,
                            spawn, wait_for, write_function)
from tests.test_operations import http_get

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
    wait_for(lambda: "command not allowed when used memory > 'maxmemory'" in (tmp_path / "runtime.log").read_text())
    assert processes[0].poll() is None and not outputs(client, "out")
    client.config_set("maxmemory", "0")
    wait_for(lambda: len(outputs(client, "out")) == 5, timeout=30)
    assert [i for i, _ in outputs(client, "out")] == ids


# --- keys of the wrong type: a problem in the status naming the key, never a half-applied commit -----

def problem(client) -> str:
    return client.hget("out:status", "problem") or ""


def test_an_output_stream_of_the_wrong_type_commits_nothing_at_all(client, redis_url):
    ids = publish(client, make_samples(2))
    with running_runtime(runtime_env(redis_url, USERMODULE)) as runtime:
        wait_for(lambda: len(outputs(client, "out")) == 2)
        state, latest = client.get("out:state"), client.get("out")
        client.delete("out:stream")
        client.set("out:stream", "not a stream")  # someone writes a string where the outputs go
        ids += publish(client, make_samples(5)[2:])
        wait_for(lambda: "'out:stream' is a string, the runtime needs a stream" in problem(client))
        assert client.hget("out:status", "state") == "stalled"
        wait_for(lambda: not runtime.health.alive, timeout=15, what="/healthz to fail while samples wait")
        assert (client.get("out:state"), client.get("out")) == (state, latest), "a half-applied commit"
        assert client.hget("out:status", "invocations") == "2"
        client.delete("out:stream")
        wait_for(lambda: len(outputs(client, "out")) == 3)
        wait_for(lambda: runtime.health.alive and client.hget("out:status", "state") == "running")
    assert [i for i, _ in outputs(client, "out")] == ids[2:] and problem(client) == ""


def test_a_checkpoint_of_the_wrong_type_at_start_is_a_problem_naming_it(client, redis_url, caplog):
    client.hset("out:state", "cursor", "0-0")
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, USERMODULE)) as runtime:
        wait_for(lambda: "'out:state' is a hash, the runtime needs a string" in problem(client))
        assert not runtime.ready and "'out:state' is a hash" in runtime.describe()
    assert not client.exists("out:stream") and not client.exists("out")
    assert "stalled problem=key 'out:state' is a hash" in caplog.text


def test_an_input_stream_of_the_wrong_type_is_a_problem_naming_it(client, redis_url):
    client.set("metrics:stream", "a string")
    with running_runtime(runtime_env(redis_url, USERMODULE)):
        wait_for(lambda: "'metrics:stream' is a string, the runtime needs a stream" in problem(client))
        client.delete("metrics:stream")
        publish(client, make_samples(1))
        wait_for(lambda: len(outputs(client, "out")) == 1)


def test_a_lease_of_the_wrong_type_is_a_problem_naming_it(client, redis_url):
    client.rpush("out:lease", "x")
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, USERMODULE)):
        wait_for(lambda: "'out:lease' is a list, the runtime needs a string" in problem(client))
        assert not outputs(client, "out")
        client.delete("out:lease")
        wait_for(lambda: len(outputs(client, "out")) == 1)


# --- bytes that are not UTF-8, zoned times, a failing step ------------------------------------------

def test_bytes_that_are_not_utf8_in_a_stream_entry_cost_only_that_entry(client, redis_url):
    raw = redis.Redis.from_url(redis_url)  # no decoding: write the bytes as they are
    good = make_samples(3)
    bad_value = raw.xadd("metrics:stream", {"sample": b'{"timestamp": "\xff\xfe"}'})
    bad_name = raw.xadd("metrics:stream", {b"\xff\xfe": b"x", "sample": json.dumps(good[1]).encode()})
    last = publish(client, [good[2]])[0]
    with running_runtime(runtime_env(redis_url, USERMODULE)):
        wait_for(lambda: client.hget("out:status", "invocations") == "3")
    assert [i for i, _ in outputs(client, "out")] == [bad_name.decode(), last]
    [error] = errors(client, "out")
    assert (error["fault"], error["sample_id"]) == ("input_invalid", bad_value.decode())
    assert "not UTF-8" in error["message"]


def test_a_host_id_that_is_not_utf8_is_skipped_and_counted(client, redis_url, processes, tmp_path):
    redis.Redis.from_url(redis_url).hset("metrics:hosts", mapping={b"bad-\xff": b"1", b"good": b"1"})
    log = open(tmp_path / "runtime.log", "w")
    port = free_port()
    processes.append(spawn("runtime", runtime_env(redis_url, USERMODULE, HTTP_PORT=str(port)), stderr=log))
    publish(client, make_samples(1), schema.Keys().for_host("good"))
    wait_for(lambda: len(outputs(client, "out:good")) == 1, timeout=30)
    assert processes[0].poll() is None
    assert "host_ignored host='bad-\\udcff'" in (tmp_path / "runtime.log").read_text()
    status, metrics = http_get(port, "/metrics")
    assert status == 200 and "runtime_hosts_skipped_total 1.0" in metrics


def test_zoned_timestamps_give_the_true_lag_in_any_time_zone(client, redis_url, processes):
    now = datetime.now(timezone.utc)
    samples = make_samples(2)
    samples[0]["timestamp"] = (now - timedelta(seconds=100)).isoformat()  # +00:00
    samples[1]["timestamp"] = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    publish(client, samples)
    processes.append(spawn("runtime", runtime_env(redis_url, "usermodule.py", TZ="Asia/Tokyo")))
    wait_for(lambda: client.hget("out:status", "invocations") == "2", timeout=30)
    assert 100 <= float(client.hget("out:status", "lag_seconds")) < 160  # the oldest sample's, not 32,400 s


@pytest.mark.parametrize("ahead", [timedelta(hours=1), timedelta(days=3650)], ids=["hour", "decade"])
def test_a_zoned_timestamp_from_the_future_reports_the_streams_lag_never_a_negative_one(client, redis_url, processes,
                                                                                      ahead):
    """A collector whose clock runs ahead: the lag is measured by the server's clock (the stream id)."""
    sample = make_samples(1)[0]
    sample["timestamp"] = (datetime.now(timezone.utc) + ahead).isoformat()
    publish(client, [sample])
    processes.append(spawn("runtime", runtime_env(redis_url, "usermodule.py")))
    wait_for(lambda: client.hget("out:status", "invocations") == "1", timeout=30)
    assert 0 <= float(client.hget("out:status", "lag_seconds")) < 60


def test_a_password_with_a_slash_in_the_url_is_a_clear_configuration_error(redis_url):
    result = subprocess.run([sys.executable, "-m", "runtime"], cwd=REPO_DIR, capture_output=True, text=True,
                            timeout=30, env={**os.environ, "REDIS_URL": "redis://:pa/ss#w?rd@127.0.0.1:6379"})
    assert result.returncode == 2
    assert "percent-encode them in the URL (/ as %2F, # as %23, ? as %3F)" in result.stderr
    assert "pa/ss" not in result.stderr + result.stdout and "rd@" not in result.stderr + result.stdout


class FailingOnce:
    """An invoker whose runtime side fails once at one sample, as a bug of ours would."""

    def __init__(self, inner, at: int) -> None:
        self.inner, self.at, self.calls = inner, at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def invoke_batch(self, requests, with_env=True):
        for outcome in self.inner.invoke_batch(requests, with_env):
            self.calls += 1
            if self.calls == self.at:
                raise RuntimeError("a bug on the runtime's side")
            yield outcome


def test_a_step_that_fails_unexpectedly_costs_one_sample_and_the_loop_goes_on(client, redis_url, caplog):
    config = RuntimeConfig.from_env(runtime_env(redis_url, USERMODULE, HANDLER_TIMEOUT="0", BATCH_SIZE="1"))
    stop = threading.Event()
    runtime = Runtime(config, connect(config.redis, client_name="test"), stop, FailingOnce(make_invoker(config), 2))
    ids = publish(client, make_samples(4))
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: client.hget("out:status", "invocations") == "4")
    finally:
        stop.set()
        thread.join(10)
    assert [i for i, _ in outputs(client, "out")] == [ids[0], ids[2], ids[3]]
    [error] = errors(client, "out")
    assert error["sample_id"] == ids[1] and "RuntimeError: a bug on the runtime's side" in error["message"]
    assert "step_failed error=RuntimeError" in caplog.text and "Traceback" in caplog.text
    assert runtime.metrics.loop_errors._value.get() == 1


def test_a_runtime_clock_25_h_ahead_does_not_trim_the_outputs(client, redis_url, monkeypatch):
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 25 * 3600)  # retention is measured on Redis's clock
    ids = publish(client, make_samples(3))
    with running_runtime(runtime_env(redis_url, USERMODULE, RETENTION_SECONDS="3600", HANDLER_TIMEOUT="0")):
        wait_for(lambda: client.hget("out:status", "invocations") == "3")
    assert [i for i, _ in outputs(client, "out")] == ids


ECHO_TIMESTAMP = 'def handler(input, context):\n    return {"ts": str(input["timestamp"])}\n'


def test_a_timestamp_out_of_range_once_zoned_or_not_utf8_costs_nothing_at_commit(client, redis_url, tmp_path):
    """Odd timestamps reach the commit (lag, the output entry): each sample is stored, none stalls the runtime."""
    path = write_function(tmp_path, ECHO_TIMESTAMP)
    odd = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59+00:00", "2026-11-30 10:00:00.\ud800"]
    payloads = [json.dumps(dict(make_samples(1)[0], timestamp=ts)) for ts in odd] + make_samples(2)
    ids = publish(client, payloads)
    with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT="0")):
        wait_for(lambda: len(outputs(client, "out")) == len(ids), timeout=15, what="every sample's output")
        assert client.hget("out:status", "state") == "running"
    assert [i for i, _ in outputs(client, "out")] == ids and not errors(client, "out")


def test_readers_skip_a_timestamp_no_local_time_holds(client):
    good = make_samples(1)[0]
    entries = [("1-0", {"sample": json.dumps(good)})] + [
        (f"{i}-0", {"sample": json.dumps(dict(good, timestamp=ts))})
        for i, ts in enumerate(["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-05:00"], start=2)]
    frame, malformed = schema.entries_to_frame(entries)
    assert len(frame) == 1 and malformed == 2
    from app import entries as page_entries
    frame, skipped, reason = page_entries.to_frame(entries, page_entries.sample_row)
    assert len(frame) == 1 and skipped == 2 and "out of the range of local times" in reason


def test_a_handler_in_process_that_replaces_json_dumps_cannot_corrupt_a_commit(client, redis_url, tmp_path):
    path = write_function(tmp_path, '''
import json

def handler(input, context):
    context.env["n"] = context.env.get("n", 0) + 1
    json.dumps = lambda *args, **kwargs: "not json"
    return {"n": context.env["n"]}
''')
    ids = publish(client, make_samples(4))
    dumps = json.dumps  # in-process: the handler replaces it in this very process
    try:
        with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT="0", ENV_CHECKPOINT_SECONDS="0")):
            wait_for(lambda: len(outputs(client, "out")) == 4, timeout=15, what="four outputs")
    finally:
        json.dumps = dumps
    assert [o["n"] for _, o in outputs(client, "out")] == [1, 2, 3, 4] and [i for i, _ in outputs(client, "out")] == ids
    assert json.loads(client.get("out:state"))["env"] == {"n": 4}


def test_the_loop_lives_when_even_its_error_record_cannot_be_stored(client, redis_url, tmp_path):
    """A worker that dies idle while `out:errors` is of the wrong type: the record fails; the loop goes on."""
    path = write_function(tmp_path, 'import os\n\ndef handler(input, context):\n'
                                    '    context.env["pid"] = os.getpid()\n    return {"ok": 1}\n')
    samples = make_samples(6)
    publish(client, samples[:3])
    with running_runtime(runtime_env(redis_url, path)) as runtime:
        wait_for(lambda: len(outputs(client, "out")) == 3)
        client.set("out:errors", "not a stream")
        os.kill(json.loads(client.get("out:state"))["env"]["pid"], 9)
        publish(client, samples[3:])
        time.sleep(1.0)  # the runtime meets the dead worker and fails to record it
        client.delete("out:errors")
        wait_for(lambda: len(outputs(client, "out")) == 6, timeout=20, what="the samples after the failure")
        assert runtime.health.alive
    assert [o for _, o in outputs(client, "out")] == [{"ok": 1}] * 6


COUNTING = 'def handler(input, context):\n    context.env["n"] = context.env.get("n", 0) + 1\n    return {"n": context.env["n"]}\n'


def test_a_stream_turned_string_mid_run_is_named_and_deleting_a_bad_checkpoint_duplicates_nothing(
        client, redis_url, tmp_path):
    path = write_function(tmp_path, COUNTING)
    samples = make_samples(9)
    publish(client, samples[:3])
    with running_runtime(runtime_env(redis_url, path, START_FROM="earliest")):
        wait_for(lambda: len(outputs(client, "out")) == 3)
        kept = client.xrange("metrics:stream")
        client.delete("metrics:stream")
        client.set("metrics:stream", "not a stream")
        wait_for(lambda: "metrics:stream" in (client.hget("out:status", "problem") or ""), timeout=15,
                 what="the status to name the input stream")
        assert client.hget("out:status", "state") == "stalled"
        client.delete("metrics:stream")
        for entry_id, fields in kept:  # the stream as it was, then new samples
            client.xadd("metrics:stream", fields, id=entry_id)
        publish(client, samples[3:6])
        wait_for(lambda: len(outputs(client, "out")) == 6, timeout=15, what="the samples after the fix")
        client.delete("out:state")
        client.hset("out:state", "wrong", "type")
        publish(client, samples[6:7])
        wait_for(lambda: "out:state" in (client.hget("out:status", "problem") or ""), timeout=15)
        client.delete("out:state")  # as the status advises
        publish(client, samples[7:])
        wait_for(lambda: len(outputs(client, "out")) == 9, timeout=15, what="the samples after the fix")
        time.sleep(0.5)
    assert [o["n"] for _, o in outputs(client, "out")] == list(range(1, 10))  # once each, the env continuous


def test_a_load_error_is_recorded_once_even_while_the_status_key_has_the_wrong_type(client, redis_url, tmp_path):
    client.set("out:status", "not a hash")
    with running_runtime(runtime_env(redis_url, tmp_path / "missing.py")):
        time.sleep(3)  # the runtime meets the missing function again and again while the key is wrong
        assert not client.exists("out:errors")  # nothing half-stored: no record without its counters
        client.delete("out:status")
        wait_for(lambda: client.hget("out:status", "errors") == "1", timeout=15, what="the load error's record")
        time.sleep(1)
    assert [e["fault"] for e in errors(client, "out")] == ["function_load"]
