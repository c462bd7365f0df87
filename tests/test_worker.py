"""Handlers cannot break the runtime through its worker: protocol, output, processes, credentials, reloads."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import redis

from runtime.faults import FunctionLoadError
from runtime.function import FunctionSource
from runtime.invoke import FunctionSettings, InvocationLost, Request
from runtime.status import ERROR_MESSAGE_MAX, ERROR_OUTPUT_MAX, ERROR_TRACEBACK_MAX
from runtime.worker import Worker
from tests.conftest import (REPO_DIR, errors, make_samples, outputs, publish, running_runtime, runtime_env, spawn,
                            wait_for, write_function)

COUNTING = '''
def handler(input, context):
    context.env["n"] = context.env.get("n", 0) + 1
    return {"ts": input["timestamp"], "n": context.env["n"]}
'''


def alive(pid: int) -> bool:
    """Whether any thread of a process still runs (a dead leader waits as a zombie for its other threads)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for task in tasks:
        try:
            if Path(f"/proc/{pid}/task/{task}/stat").read_text().split(") ")[1][0] not in "ZX":
                return True
        except (FileNotFoundError, IndexError):
            continue
    return False


def counted_in_order(client, samples):
    return [(o["ts"], o["n"]) for _, o in outputs(client, "out")] == [
        (s["timestamp"], n) for n, s in enumerate(samples, 1)]


@pytest.mark.parametrize("sabotage", [
    'json.dumps = lambda *a, **k: "{}"',
    'json.loads = lambda *a, **k: {"id": -1}',
    'sys.modules["json"] = None',
    'socket.socket.sendall = lambda *a: None',
], ids=["json-dumps", "json-loads", "sys-modules-json", "socket-sendall"])
def test_a_handler_replacing_what_the_protocol_uses_does_not_desynchronise_replies(
        client, redis_url, tmp_path, sabotage):
    path = write_function(tmp_path, f'''
import json, socket, sys

def handler(input, context):
    context.env["n"] = context.env.get("n", 0) + 1
    result = {{"ts": input["timestamp"], "n": context.env["n"]}}
    {sabotage}
    return result
''')
    samples = make_samples(20)
    publish(client, samples[:5])
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: len(outputs(client, "out")) == 5)
        publish(client, samples[5:])
        wait_for(lambda: len(outputs(client, "out")) == 20)
    assert counted_in_order(client, samples) and not errors(client, "out")


def test_a_handler_that_forks_does_not_shift_outputs(client, redis_url, tmp_path):
    path = write_function(tmp_path, '''
import os

def handler(input, context):
    context.env["n"] = context.env.get("n", 0) + 1
    os.fork()  # both copies return; only the worker itself may answer
    return {"ts": input["timestamp"], "n": context.env["n"]}
''')
    samples = make_samples(10)
    publish(client, samples)
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: len(outputs(client, "out")) == 10)
        time.sleep(0.5)  # a stray reply would land now
    assert counted_in_order(client, samples) and not errors(client, "out")


PRINTING = '''
import sys

def handler(input, context):
    chunk = "spam " * 20_000 + "\\n"
    for _ in range(1000):  # 100 MB
        sys.stdout.write(chunk)
    print("the last words", file=sys.stderr)
    if input.get("fail"):
        raise ValueError("after printing")
    return {"ok": 1}
'''


def test_prints_are_captured_per_invocation_capped_and_never_reach_the_runtime_log(client, redis_url, tmp_path,
                                                                                    processes):
    path = write_function(tmp_path, PRINTING)
    samples = make_samples(3)
    samples[1]["fail"] = True
    ids = publish(client, samples)
    log = tmp_path / "runtime.log"
    with open(log, "w") as sink:
        processes.append(spawn("runtime", runtime_env(redis_url, path), stdout=sink, stderr=sink))
        wait_for(lambda: client.hget("out:status", "invocations") == "3", timeout=60)
    (record,) = errors(client, "out")
    assert record["sample_id"] == ids[1] and record["message"] == "ValueError: after printing"
    assert record["output"].endswith("the last words\n") and len(record["output"]) <= ERROR_OUTPUT_MAX
    assert "earlier characters not kept" in record["output"]
    assert log.stat().st_size < 100_000 and "spam" not in log.read_text()


def test_with_log_level_debug_each_calls_prints_are_one_log_line(client, redis_url, tmp_path, processes):
    path = write_function(tmp_path, 'def handler(input, context):\n    print("hello from", input["timestamp"])\n'
                                    '    return {"ok": 1}\n')
    samples = make_samples(2)
    publish(client, samples)
    log = tmp_path / "runtime.log"
    with open(log, "w") as sink:
        processes.append(spawn("runtime", runtime_env(redis_url, path, LOG_LEVEL="DEBUG"), stderr=sink))
        wait_for(lambda: len(outputs(client, "out")) == 2, timeout=30)
    lines = [line for line in log.read_text().splitlines() if "handler_output" in line]
    assert len(lines) == 2 and f"hello from {samples[1]['timestamp']}" in lines[1], lines


HANGING_WITH_CHILDREN = '''
import os, subprocess, sys, time

def handler(input, context):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    with open(os.path.join(os.path.dirname(__file__), "pids"), "a") as pids:
        pids.write(f"{os.getpid()} {child.pid}\\n")
    if input.get("hang"):
        time.sleep(1000)
    return {"ok": 1}
'''


def read_pids(directory: Path) -> list[int]:
    return [int(p) for p in (directory / "pids").read_text().split()] if (directory / "pids").exists() else []


def test_a_timeout_kills_the_handlers_whole_process_group(client, redis_url, tmp_path):
    path = write_function(tmp_path, HANGING_WITH_CHILDREN)
    publish(client, [dict(make_samples(1)[0], hang=True)] + make_samples(1))
    with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT="1")):
        wait_for(lambda: outputs(client, "out"), timeout=20)
        hung_worker, hung_child = read_pids(tmp_path)[:2]
        wait_for(lambda: not alive(hung_worker) and not alive(hung_child), timeout=10, what="the hung group gone")
    assert errors(client, "out")[0]["fault"] == "timeout"
    wait_for(lambda: not any(alive(pid) for pid in read_pids(tmp_path)), timeout=10, what="every child gone at stop")


def test_the_worker_and_its_children_die_with_the_runtime(client, redis_url, tmp_path, processes):
    path = write_function(tmp_path, HANGING_WITH_CHILDREN)
    publish(client, make_samples(1))
    processes.append(spawn("runtime", runtime_env(redis_url, path)))
    wait_for(lambda: outputs(client, "out"), timeout=30)
    worker, child = read_pids(tmp_path)
    processes[0].send_signal(signal.SIGKILL)
    processes[0].wait(10)
    wait_for(lambda: not alive(worker) and not alive(child), timeout=10, what="the worker and its child to die")


ESCAPING_CHILDREN = '''
import os, subprocess, sys, time

def handler(input, context):
    """Start a child in a session of its own, and an orphan by double fork; then maybe hang."""
    record = os.path.join(os.path.dirname(__file__), "pids")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"], start_new_session=True)
    with open(record, "a") as pids:
        pids.write(f"{child.pid}\\n")
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:
            os.setsid()
            with open(record, "a") as pids:
                pids.write(f"{os.getpid()}\\n")
            time.sleep(1000)
        os._exit(0)
    os.waitpid(middle, 0)
    while len(open(record).read().split()) < 2:
        time.sleep(0.01)
    if input.get("hang"):
        time.sleep(1000)
    return {"ok": 1}
'''


def kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("how", ["runtime-killed", "handler-timeout", "runtime-stopped"])
def test_processes_a_handler_starts_outside_its_group_die_too(client, redis_url, tmp_path, processes, how):
    """setsid and double-forked orphans leave the worker's process group: they go when the worker goes."""
    path = write_function(tmp_path, ESCAPING_CHILDREN)
    publish(client, [dict(make_samples(1)[0], hang=how == "handler-timeout")])
    processes.append(spawn("runtime", runtime_env(redis_url, path, HANDLER_TIMEOUT="3")))
    try:
        wait_for(lambda: len(read_pids(tmp_path)) == 2, timeout=30, what="both escapees started")
        escapees = read_pids(tmp_path)
        if how == "runtime-killed":
            processes[0].send_signal(signal.SIGKILL)
        elif how == "runtime-stopped":
            processes[0].send_signal(signal.SIGTERM)
        else:
            wait_for(lambda: errors(client, "out"), timeout=20, what="the timeout's record")
        wait_for(lambda: not any(alive(pid) for pid in escapees), timeout=10, what="every escapee gone")
    finally:
        kill_leftovers(read_pids(tmp_path))


WARDEN_ATTACK = '''
import ctypes, os, signal, subprocess, sys, time

def note(pid):
    with open(os.path.join(os.path.dirname(__file__), "pids"), "a") as pids:
        pids.write(f"{pid}\\n")

def handler(input, context):
    how = input.get("how")
    if not how:
        return {"ok": 1}
    warden = os.getppid()
    if how == "outlive":  # the worker itself leaves: no parent-death signal, a session of its own
        ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)
        os.setsid()
        note(os.getpid())
        os.kill(warden, signal.SIGKILL)
        time.sleep(1000)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"], start_new_session=True)
    note(child.pid)
    os.kill(warden, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    time.sleep(1000)
'''


@pytest.mark.parametrize("how", ["kill", "stop", "outlive"])
def test_a_handler_that_kills_or_stops_its_warden_leaves_nothing_behind(client, redis_url, tmp_path, processes,
                                                                      how):
    """The runtime (`python -m runtime`) adopts what a dead warden leaves and kills it; a stopped warden
    is continued before it is asked to stop."""
    path = write_function(tmp_path, WARDEN_ATTACK)
    ids = publish(client, [dict(make_samples(1)[0], how=how)] + make_samples(2)[1:])
    processes.append(spawn("runtime", runtime_env(redis_url, path, HANDLER_TIMEOUT="2")))
    try:
        wait_for(lambda: outputs(client, "out"), timeout=40, what="the next sample's output")
        assert [r["sample_id"] for r in errors(client, "out")] == [ids[0]]
        wait_for(lambda: not any(alive(pid) for pid in read_pids(tmp_path)), timeout=10, what="nothing left")
    finally:
        kill_leftovers(read_pids(tmp_path))


FORK_CHAIN = '''
import os, time

def handler(input, context):
    """A process that keeps moving: it forks a copy and ends, again and again, each in a new session."""
    record = os.path.join(os.path.dirname(__file__), "chain")
    if os.fork() == 0:
        os.setsid()
        for _ in range(100_000):
            if os.fork():
                os._exit(0)
            os.setsid()
            with open(record + ".new", "w") as latest:
                latest.write(str(os.getpid()))
            os.replace(record + ".new", record)
            time.sleep(0.002)
        os._exit(0)
    time.sleep(1000)
'''


def test_a_process_that_keeps_forking_away_is_caught_at_the_timeout(client, redis_url, tmp_path):
    path = write_function(tmp_path, FORK_CHAIN)
    publish(client, make_samples(1))
    chain = tmp_path / "chain"
    try:
        with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT="2")):
            wait_for(lambda: errors(client, "out"), timeout=30, what="the timeout's record")
            time.sleep(0.5)
            latest = int(chain.read_text())
            time.sleep(0.5)
            assert int(chain.read_text()) == latest and not alive(latest), "the chain still moves"
    finally:
        subprocess.run(["pkill", "-KILL", "-f", str(path)], check=False)


def test_a_worker_that_dies_while_idle_is_recorded_and_its_env_rewound_to_the_checkpoint(client, redis_url, tmp_path):
    path = write_function(tmp_path, COUNTING.replace('    return', '    context.env["pid"] = __import__("os").getpid()\n'
                                                     '    return'))
    samples = make_samples(6)
    publish(client, samples[:3])
    with running_runtime(runtime_env(redis_url, path)) as runtime:
        wait_for(lambda: len(outputs(client, "out")) == 3)
        pid = json.loads(client.get("out:state"))["env"]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid))
        publish(client, samples[3:])
        wait_for(lambda: len(outputs(client, "out")) == 6)
    incidents = errors(client, "out")
    assert counted_in_order(client, samples)
    assert [i["fault"] for i in incidents] == ["worker_died"] and "while idle" in incidents[0]["message"]
    assert incidents[0]["sample_id"] == ""  # no sample is charged with it


def make_worker(tmp_path, source=COUNTING, timeout=5.0):
    path = write_function(tmp_path, source)
    settings = FunctionSettings(path=path, handler="handler", unpack_dir=tmp_path / "unpacked", output_max_bytes=10**6,
                                context_fields={"host": "localhost", "port": 6379, "input_key": "metrics",
                                                "output_key": "out"})
    worker = Worker(settings, timeout)
    worker.refresh()
    return worker


def run_until_lost(worker, requests):
    """The outcomes before the batch's InvocationLost, and its error record."""
    done = []
    with pytest.raises(InvocationLost) as lost:
        for outcome in worker.invoke_batch(requests):
            done.append(outcome)
    return done, lost.value.error


def test_every_request_to_a_dead_worker_raises_invocation_lost_never_oserror(tmp_path):
    worker = make_worker(tmp_path)
    raw = json.dumps(make_samples(1)[0])
    try:
        assert next(iter(worker.invoke_batch([Request("1-1", raw)]))).output
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(InvocationLost, match="process ended"):
            worker.env_data()  # the env fetched for a commit
        worker.refresh()
        os.kill(worker.pid, signal.SIGKILL)
        time.sleep(0.2)
        worker.restore('{"n": 41}', None)  # no error: the next start uses it
        worker.refresh()
        (outcome,) = worker.invoke_batch([Request("1-2", raw)])
        assert json.loads(outcome.output)["n"] == 42
    finally:
        worker.close()


def test_samples_as_bytes_reach_the_handler_as_text_and_non_utf8_bytes_are_an_input_invalid_record(tmp_path):
    worker = make_worker(tmp_path)
    good = json.dumps(make_samples(1)[0]).encode()
    try:
        first, second, third = worker.invoke_batch([Request("1-1", good), Request("1-2", b'{"timestamp": "\xff"}'),
                                                    Request("1-3", bytearray(good))])
    finally:
        worker.close()
    assert json.loads(first.output)["n"] == 1 and json.loads(third.output)["n"] == 2
    assert second.error["fault"] == "input_invalid" and "not UTF-8" in second.error["message"]


def test_a_batch_abandoned_part_way_leaves_no_trace_in_the_env(tmp_path):
    worker = make_worker(tmp_path)
    requests = [Request(f"1-{i}", json.dumps(s)) for i, s in enumerate(make_samples(6))]
    try:
        assert [json.loads(o.output)["n"] for o in worker.invoke_batch(requests[:2])] == [1, 2]
        batch = worker.invoke_batch(requests[2:])
        assert json.loads(next(batch).output)["n"] == 3
        batch.close()  # the caller stops reading: the worker must not go on counting unrecorded calls
        worker.refresh()
        assert [json.loads(o.output)["n"] for o in worker.invoke_batch(requests[2:4])] == [3, 4]
    finally:
        worker.close()


def test_a_timeout_mid_batch_costs_only_that_invocation_and_each_has_its_own_deadline(tmp_path):
    worker = make_worker(tmp_path, '''
import time

def handler(input, context):
    time.sleep(float(input.get("sleep", 0)))
    return {"slept": input.get("sleep", 0)}
''', timeout=1.0)
    samples = [dict(s, sleep=0.6) for s in make_samples(4)]  # 2.4 s in all, each under its own 1 s
    samples[2]["sleep"] = 100
    requests = [Request(f"1-{i}", json.dumps(s)) for i, s in enumerate(samples)]
    try:
        done, error = run_until_lost(worker, requests)
        assert len(done) == 2 and error["fault"] == "timeout" and error["sample_id"] == "1-2"
        worker.refresh()
        assert [o.output for o in worker.invoke_batch(requests[3:])] == ['{"slept": 0.6}']
    finally:
        worker.close()


def test_replies_buffered_behind_a_hung_call_still_reach_the_runtime_so_the_right_sample_is_blamed(tmp_path):
    worker = make_worker(tmp_path, '''
import time

def handler(input, context):
    if input.get("hang"):
        time.sleep(100)
    return {"ok": input["timestamp"]}
''', timeout=1.0)
    samples = make_samples(60)
    samples[50]["hang"] = True
    try:
        done, error = run_until_lost(worker, [Request(f"1-{i}", json.dumps(s)) for i, s in enumerate(samples)])
    finally:
        worker.close()
    assert len(done) == 50 and error["sample_id"] == "1-50"


def test_error_records_are_capped_and_say_so(client, redis_url, tmp_path):
    path = write_function(tmp_path, '''
def handler(input, context):
    raise ValueError("x" * 5_000_000)
''')
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: errors(client, "out"))
    (record,) = errors(client, "out")
    assert len(record["message"]) <= ERROR_MESSAGE_MAX + 40 and "characters cut]" in record["message"]
    assert len(record["traceback"]) <= ERROR_TRACEBACK_MAX + 40 and record["traceback"].startswith("[")
    assert len(json.dumps(json.loads(client.hget("out:status", "last_error")))) < 30_000


CREDENTIALS = '''
import os

def handler(input, context):
    return {name: os.environ.get(name) for name in ("REDIS_PASSWORD", "REDIS_URL", "REDISCLI_AUTH")} | {
        "host": context.host, "port": context.port}
'''


@pytest.mark.parametrize("style", ["url", "password-variable"])
def test_the_worker_holds_no_redis_credentials(own_valkey, tmp_path, style):
    server = own_valkey()
    redis.Redis(port=server.port).config_set("requirepass", "s3cret-pw")
    path = write_function(tmp_path, CREDENTIALS)
    if style == "url":
        env = runtime_env(f"redis://:s3cret-pw@127.0.0.1:{server.port}/0", path)
    else:
        env = runtime_env("", path, REDIS_HOST="127.0.0.1", REDIS_PORT=str(server.port), REDIS_PASSWORD="s3cret-pw")
        del env["REDIS_URL"]
    client = redis.Redis(port=server.port, password="s3cret-pw", decode_responses=True)
    publish(client, make_samples(1))
    os.environ["REDISCLI_AUTH"] = "s3cret-pw"
    try:
        with running_runtime(env):
            wait_for(lambda: outputs(client, "out"))
    finally:
        del os.environ["REDISCLI_AUTH"]
    (_, output), = outputs(client, "out")
    assert "s3cret" not in json.dumps(output)
    assert output["host"] == "127.0.0.1" and output["port"] == server.port
    assert output["REDIS_URL"] in (None, f"redis://127.0.0.1:{server.port}/0")


@pytest.mark.parametrize("timeout", ["5", "0"], ids=["worker", "in-process"])
def test_a_handler_changing_the_working_directory_does_not_break_hot_reload(client, redis_url, tmp_path, processes,
                                                                            timeout):
    source = '''
import os

def handler(input, context):
    os.chdir("/")
    return {"version": 1}
'''
    path = write_function(tmp_path, source)
    env = runtime_env(redis_url, Path("usermodule.py"), HANDLER_TIMEOUT=timeout)
    processes.append(subprocess.Popen([sys.executable, "-m", "runtime"], cwd=tmp_path,
                                      env={**os.environ, "PYTHONPATH": str(REPO_DIR), **env}))
    publish(client, make_samples(1))
    wait_for(lambda: outputs(client, "out"), timeout=30)
    path.write_text(source.replace('"version": 1', '"version": 2'))
    os.utime(path, (time.time() + 5, time.time() + 5))
    publish(client, make_samples(1))
    wait_for(lambda: len(outputs(client, "out")) == 2, timeout=30)
    assert [o["version"] for _, o in outputs(client, "out")] == [1, 2]
    assert client.hget("out:status", "function_error") in (None, "")


def test_many_processes_unpacking_one_zip_at_once_all_load_it(tmp_path):
    archive = tmp_path / "function.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("usermodule.py", "def handler(input, context):\n    return {'v': 1}\n")
        for i in range(200):
            zipped.writestr(f"data/file{i}.txt", "x" * 10_000)
    script = ("import sys, time; from pathlib import Path; from runtime.function import load_function\n"
              "time.sleep(max(0, float(sys.argv[1]) - time.time()))\n"
              "print(load_function(Path(sys.argv[2]), 'handler', Path(sys.argv[3])).version)\n")
    start = str(time.time() + 3)  # all at once, after the imports
    runs = [subprocess.Popen([sys.executable, "-c", script, start, str(archive), str(tmp_path / "unpacked")],
                             cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(12)]
    results = [run.communicate(timeout=60) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in results if err]
    assert len({out for out, _ in results}) == 1
    left = [p.name for p in (tmp_path / "unpacked").iterdir()]
    assert len(left) == 1 and left[0].startswith("zip-"), left  # one copy, no staging directory left behind


def test_a_failed_reload_is_retried_without_a_file_change(tmp_path, monkeypatch):
    monkeypatch.setattr("runtime.function.RETRY_FIRST", 0.1)
    archive = tmp_path / "function.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("usermodule.py", "def handler(input, context):\n    return {'v': 1}\n")
    blocker = tmp_path / "unpacked"
    blocker.write_text("a file where the unpack directory should be")  # unpacking fails, as on a full disk
    source = FunctionSource(archive, "handler", blocker)
    assert not source.refresh() and "cannot be read" in source.error
    blocker.unlink()
    wait_for(lambda: source.refresh(), timeout=5, what="the retry to load it")
    assert source.error is None and source.current.handler({}, None) == {"v": 1}


def test_integers_beyond_the_digit_limit_are_an_input_invalid_record(client, redis_url, tmp_path):
    path = write_function(tmp_path, COUNTING)
    sample = make_samples(1)[0]
    huge = json.dumps(sample)[:-1] + ', "big": 1' + "0" * 5000 + "}"
    ids = publish(client, [huge] + make_samples(2)[1:])
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: len(outputs(client, "out")) == 1)
    (record,) = errors(client, "out")
    assert record["fault"] == "input_invalid" and "number Python cannot read" in record["message"]
    assert record["sample_id"] == ids[0] and outputs(client, "out")[0][1]["n"] == 1


def test_the_worker_logs_like_the_runtime_one_line_per_event(client, redis_url, tmp_path, processes):
    path = write_function(tmp_path, "def handler(input, context)\n    return {}\n")  # a syntax error
    log = tmp_path / "runtime.log"
    with open(log, "w") as sink:
        processes.append(spawn("runtime", runtime_env(redis_url, path), stderr=sink))
        wait_for(lambda: client.hget("out:status", "state") == "function_error", timeout=30)
        write_function(tmp_path, COUNTING)
        publish(client, make_samples(1))
        wait_for(lambda: outputs(client, "out"), timeout=30)
    lines = log.read_text().splitlines()
    assert len([line for line in lines if "SyntaxError" in line]) == 1, lines
    (loaded,) = [line for line in lines if "function_loaded" in line]
    assert " INFO runtime.function function_loaded " in loaded


def test_a_worker_that_ends_while_a_process_it_started_holds_its_socket_is_a_worker_death(client, redis_url, tmp_path):
    """A handler forks a new session that keeps the worker's socket, then ends the worker: not a timeout,
    and the new session is killed with it."""
    pid_file = tmp_path / "grandchild.pid"
    path = write_function(tmp_path, f'''
import os, time

def handler(input, context):
    if input.get("escape"):
        if os.fork() == 0:
            os.setsid()
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(20)
            os._exit(0)
        time.sleep(0.2)
        os._exit(3)
    return {{"ok": 1}}
''')
    samples = make_samples(2)
    samples[0]["escape"] = True
    ids = publish(client, samples)
    try:
        with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT="15")):
            wait_for(lambda: len(outputs(client, "out")) == 1, timeout=10, what="the next sample's output")
        (record,) = errors(client, "out")
        assert record["fault"] == "worker_died" and record["sample_id"] == ids[0]
        assert "exit code 3" in record["message"]
        wait_for(lambda: not alive(int(pid_file.read_text())), timeout=10, what="the socket's holder killed")
    finally:
        if pid_file.exists():
            kill_leftovers([int(pid_file.read_text())])
