"""Each sample exactly once: bursts, kill -9 at any point, warm stop on SIGTERM."""

import json
import os
import signal
import sys
import subprocess
import threading
import time
from types import SimpleNamespace

import usermodule
from tests.conftest import (REPO_DIR, kill_and_restart_at, make_samples, outputs, publish, running_runtime, runtime_env, spawn, wait_for,
                            write_function)

USERMODULE = REPO_DIR / "usermodule.py"


def uninterrupted(samples):
    context = SimpleNamespace(env={})
    return [usermodule.handler(sample, context) for sample in samples]


def test_a_burst_of_1000_samples_gives_1000_outputs_in_order(client, redis_url):
    samples = make_samples(1000)
    ids = publish(client, samples)
    with running_runtime(runtime_env(redis_url, USERMODULE)):
        wait_for(lambda: client.hget("out:status", "invocations") == "1000", timeout=60)
    stored = outputs(client, "out")
    assert [i for i, _ in stored] == ids  # every id once, in order
    assert [o for _, o in stored] == uninterrupted(samples)


def test_kill_9_mid_stream_then_restart_gives_exactly_one_output_per_sample(client, redis_url, processes):
    samples = make_samples(1000)
    ids: list[str] = []

    def publisher():
        for start in range(0, len(samples), 10):
            ids.extend(publish(client, samples[start:start + 10]))
            time.sleep(0.01)

    feeding = threading.Thread(target=publisher)
    env = runtime_env(redis_url, str(USERMODULE), BATCH_SIZE="7")
    processes.append(spawn("runtime", env))
    feeding.start()
    kill_and_restart_at(client, processes, env, [150, 400, 650])
    feeding.join()
    wait_for(lambda: len(outputs(client, "out")) >= 1000, timeout=60, what="1000 outputs")
    time.sleep(0.5)
    stored = outputs(client, "out")
    assert [i for i, _ in stored] == ids, "a sample was lost or handled twice"
    assert [o for _, o in stored] == uninterrupted(samples)  # moving averages as in one uninterrupted run


def test_sigterm_finishes_the_current_invocation_commits_and_exits_0(client, redis_url, tmp_path, processes):
    started = tmp_path / "started"
    path = write_function(tmp_path, f'''
import time

def handler(input, context):
    open({str(started)!r}, "w").close()
    time.sleep(1.0)
    return {{"done": input["timestamp"]}}
''')
    sample = make_samples(1)[0]
    ids = publish(client, [sample])
    process = spawn("runtime", runtime_env(redis_url, str(path)))
    processes.append(process)
    wait_for(started.exists, what="the handler to start")
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert outputs(client, "out") == [(ids[0], {"done": sample["timestamp"]})]
    assert json.loads(client.get("out:state"))["cursor"] == ids[0]
    assert client.hget("out:status", "state") == "stopped"


def test_bad_configuration_is_a_clear_startup_error(redis_url):
    result = subprocess.run([sys.executable, "-m", "runtime"], cwd=REPO_DIR, capture_output=True, text=True,
                            timeout=30, env={**os.environ, "REDIS_URL": redis_url, "INTERVAL": "soon"})
    assert result.returncode == 2
    assert "INTERVAL='soon' is not a number" in result.stderr
