"""Hard timeouts and process isolation: hanging or exiting handlers cost one error record."""

import time

import pytest

from tests.conftest import errors, make_samples, outputs, publish, running_runtime, runtime_env, wait_for, write_function

HANGING = '''
import os
import sys
import time

def handler(input, context):
    context.env["n"] = context.env.get("n", 0) + 1
    kind = input.get("fault")
    if kind == "spin":
        while True:
            pass
    if kind == "sleep":
        time.sleep(1000)
    if kind == "os_exit":
        os._exit(7)
    if kind == "sys_exit":
        sys.exit(0)
    return {"n": context.env["n"]}
'''


@pytest.mark.parametrize("fault, kind, message", [
    ("spin", "timeout", "ran past HANDLER_TIMEOUT=1s"),
    ("sleep", "timeout", "ran past HANDLER_TIMEOUT=1s"),
    ("os_exit", "worker_died", "exit code 7"),
    ("sys_exit", "handler_error", "SystemExit: 0"),
], ids=['busy-loop', 'sleep-forever', 'os-exit', 'sys-exit'])
def test_the_next_sample_runs_within_timeout_plus_2_s_with_the_committed_env(
        client, redis_url, tmp_path, fault, kind, message):
    path = write_function(tmp_path, HANGING)
    samples = make_samples(4)
    samples[2] = dict(samples[2], fault=fault)
    ids = publish(client, samples[:2])
    with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT="1")):
        wait_for(lambda: len(outputs(client, "out")) == 2)
        started = time.monotonic()
        ids += publish(client, samples[2:])
        wait_for(lambda: len(outputs(client, "out")) == 3, timeout=10)
        assert time.monotonic() - started < 1 + 2
    (record,) = errors(client, "out")
    assert record["fault"] == kind and message in record["message"]
    assert record["sample_id"] == ids[2] and record["sample_timestamp"] == samples[2]["timestamp"]
    # env: 2 committed calls, then the faulty one; for a killed worker its increment is gone.
    expected = 3 if kind == "timeout" or kind == "worker_died" else 4
    assert outputs(client, "out")[-1] == (ids[3], {"n": expected})
    assert client.hget("out:status", f"errors_{kind}") == "1"


def test_a_hung_handler_mid_batch_loses_nothing_and_repeats_nothing(client, redis_url, tmp_path):
    path = write_function(tmp_path, HANGING)
    samples = make_samples(40)
    samples[17] = dict(samples[17], fault="sleep")
    ids = publish(client, samples)
    with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT="1")):
        wait_for(lambda: len(outputs(client, "out")) == 39, timeout=15)
    stored = outputs(client, "out")
    assert [i for i, _ in stored] == ids[:17] + ids[18:]
    assert [o["n"] for _, o in stored] == list(range(1, 40))  # the hung call's env change is not kept
    assert [e["sample_id"] for e in errors(client, "out")] == [ids[17]]


@pytest.mark.parametrize("crash_at", [3, 40], ids=["sample-3-of-6", "sample-40-of-50"])
def test_a_crash_mid_batch_costs_that_sample_alone(client, redis_url, tmp_path, crash_at):
    """The calls before it in the same batch ran and their replies waited in the worker's buffer when it
    ended: they run again from the checkpoint and are stored; only the sample that ended the worker is
    recorded (the earlier ones were charged one by one before, each a lost output)."""
    path = write_function(tmp_path, HANGING)
    samples = make_samples(6 if crash_at == 3 else 50)
    samples[crash_at] = dict(samples[crash_at], fault="os_exit")
    ids = publish(client, samples)
    with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT="5")):
        wait_for(lambda: len(outputs(client, "out")) + len(errors(client, "out")) >= len(samples), timeout=40)
    assert [e["sample_id"] for e in errors(client, "out")] == [ids[crash_at]]
    assert [i for i, _ in outputs(client, "out")] == ids[:crash_at] + ids[crash_at + 1:]
    assert [o["n"] for _, o in outputs(client, "out")] == list(range(1, len(samples)))


def test_in_process_mode_catches_sys_exit_too(client, redis_url, tmp_path):
    path = write_function(tmp_path, HANGING)
    ids = publish(client, [dict(make_samples(1)[0], fault="sys_exit")] + make_samples(1))
    with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT="0")):
        wait_for(lambda: outputs(client, "out"))
    assert errors(client, "out")[0]["sample_id"] == ids[0]


def test_a_handler_allocating_without_bound_hits_the_memory_limit(client, redis_url, tmp_path):
    path = write_function(tmp_path, '''
def handler(input, context):
    if input.get("fault"):
        hoard = []
        while True:
            hoard.append(bytearray(10 * 1024 * 1024))
    return {"ok": input["timestamp"]}
''')
    samples = make_samples(3)
    ids = publish(client, [samples[0], dict(samples[1], fault=True), samples[2]])
    with running_runtime(runtime_env(redis_url, path, HANDLER_MEMORY_MB="300")):
        wait_for(lambda: len(outputs(client, "out")) == 2, timeout=30)
    (record,) = errors(client, "out")
    assert record["sample_id"] == ids[1] and "MemoryError" in record["message"]
    assert [i for i, _ in outputs(client, "out")] == [ids[0], ids[2]]
