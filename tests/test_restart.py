"""Back at once: a restart on the same host takes its dead predecessor's lease, long batches keep theirs."""

import json
import os
import signal
import threading
import time
import urllib.request

from runtime.config import DEFAULT_LEASE_SECONDS
from runtime.lease import Holder, pid_namespace, process_start
from tests.conftest import (free_port, make_samples, outputs, publish, running_runtime, runtime_env, spawn, wait_for,
                            write_function)

ECHO = "def handler(input, context):\n    return {'ts': input['timestamp']}\n"


def handled_timestamps(client) -> set[str]:
    return {output["ts"] for _, output in outputs(client, "out")}


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class Feeder(threading.Thread):
    """SETs a new sample on the plain key every 0.25 s, as the course's collector does (no stream)."""

    def __init__(self, client) -> None:
        super().__init__(daemon=True)
        self.client, self.stop, self.published = client, threading.Event(), []

    def run(self) -> None:
        for sample in make_samples(10_000, step_seconds=0.25):
            if self.stop.wait(0.25):
                return
            self.client.set("metrics", json.dumps(sample))
            self.published.append((time.monotonic(), sample["timestamp"]))


def test_kill_9_then_restart_takes_the_lease_at_once_and_polling_loses_nothing(client, redis_url, tmp_path,
                                                                               processes):
    path = write_function(tmp_path, ECHO)
    port = free_port()
    env = runtime_env(redis_url, path, INTERVAL="0.05", LEASE_SECONDS="30", HTTP_PORT=str(port))
    feeder = Feeder(client)
    feeder.start()
    try:
        restart_while_feeding(client, env, port, feeder, processes)
    finally:
        feeder.stop.set()
        feeder.join()


def restart_while_feeding(client, env, port, feeder, processes):
    processes.append(spawn("runtime", env))
    wait_for(lambda: len(outputs(client, "out")) >= 4, timeout=30)
    processes[-1].send_signal(signal.SIGKILL)
    processes[-1].wait(10)
    restarted = time.monotonic()
    processes.append(spawn("runtime", env))
    wait_for(lambda: ready(port), timeout=20, what="the restarted runtime to be ready")
    ready_at = time.monotonic()
    first = handled_timestamps(client)
    wait_for(lambda: handled_timestamps(client) - first, timeout=10,
             what="an output from the restarted runtime (a lease of 30 s must not be waited out)")
    assert time.monotonic() - restarted < 15
    time.sleep(2)  # eight more samples
    feeder.stop.set()
    feeder.join()
    last = feeder.published[-1][1]
    wait_for(lambda: last in handled_timestamps(client), timeout=10)
    handled = [output["ts"] for _, output in outputs(client, "out")]
    after = [ts for moment, ts in feeder.published if moment > ready_at]
    assert [ts for ts in after if ts not in handled] == [], "samples published after the restart were lost"
    assert len(handled) == len(set(handled)), "a sample was handled twice"


def test_a_handler_longer_than_the_default_lease_commits(client, redis_url, tmp_path):
    path = write_function(tmp_path, f"import time\n\ndef handler(input, context):\n"
                                    f"    time.sleep({DEFAULT_LEASE_SECONDS + 1})\n    return {{'ts': input['timestamp']}}\n")
    ids = publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, path, LEASE_SECONDS="")) as runtime:
        assert runtime.config.lease_seconds == DEFAULT_LEASE_SECONDS
        wait_for(lambda: outputs(client, "out"), timeout=DEFAULT_LEASE_SECONDS + 30, what="the long invocation to commit")
    assert [i for i, _ in outputs(client, "out")] == ids


def test_a_stream_created_after_the_start_is_noticed_within_a_second(client, redis_url, tmp_path):
    path = write_function(tmp_path, ECHO)
    with running_runtime(runtime_env(redis_url, path, INTERVAL="30")) as runtime:
        wait_for(lambda: runtime.ready)
        ids = publish(client, make_samples(1))
        wait_for(lambda: outputs(client, "out"), timeout=5, what="the stream to be noticed (INTERVAL is 30 s)")
    assert [i for i, _ in outputs(client, "out")] == ids


def test_a_stop_wakes_the_blocking_read(client, redis_url, tmp_path):
    path = write_function(tmp_path, ECHO)
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, path, BLOCK_SECONDS="5")) as runtime:
        wait_for(lambda: outputs(client, "out"))
        time.sleep(0.2)  # now blocked in XREAD for up to 5 s
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 4, "the stop waited for the read's block to end"
    assert runtime.reader.block_ms == 5000


def test_a_holder_is_gone_only_when_its_process_provably_is():
    me = Holder.of_this_process()
    same_place = dict(host=me.host, namespace=me.namespace, nonce="other")
    assert Holder(pid=me.pid, started="1.00", **same_place).gone(me)  # this very pid, another start: a restart
    assert not Holder(pid=os.getppid(), started=process_start(os.getppid()), **same_place).gone(me)  # alive
    dead = spawn("runtime", {"HELP": "1", "REDIS_URL": "bad"})
    dead.wait(30)
    assert Holder(pid=dead.pid, started="2.00", **same_place).gone(me)
    assert not Holder(me.host + "-elsewhere", dead.pid, "2.00", me.namespace, "x").gone(me)  # another machine
    assert not Holder(me.host, me.pid, me.started, me.namespace, me.nonce).gone(me)  # ourselves
    assert Holder.parse(me.text()) == me and Holder.parse("garbage") is None


COUNTER = ("def handler(input, context):\n    context.env['n'] = context.env.get('n', 0) + 1\n"
           "    return {'n': context.env['n']}\n")


def test_an_env_stored_less_often_is_rebuilt_by_replaying_after_kill_9(client, redis_url, tmp_path, processes):
    path = write_function(tmp_path, COUNTER)
    env = runtime_env(redis_url, path, ENV_CHECKPOINT_SECONDS="3600", BATCH_SIZE="1")
    publish(client, make_samples(1))
    processes.append(spawn("runtime", env))
    wait_for(lambda: len(outputs(client, "out")) == 1)
    publish(client, make_samples(5)[1:])
    wait_for(lambda: len(outputs(client, "out")) == 5)
    state = json.loads(client.get("out:state"))
    assert state["env"] == {"n": 1} and state["env_cursor"] != state["cursor"]  # stored with the first commit only
    processes[-1].send_signal(signal.SIGKILL)
    processes[-1].wait(10)
    log = open(tmp_path / "restart.log", "w")
    processes.append(spawn("runtime", env, stderr=log))
    publish(client, make_samples(7)[5:])
    wait_for(lambda: len(outputs(client, "out")) == 7, timeout=30)
    assert [output["n"] for _, output in outputs(client, "out")] == [1, 2, 3, 4, 5, 6, 7]
    assert "replayed samples=4" in (tmp_path / "restart.log").read_text()


def test_a_sample_lost_to_the_timeout_is_not_replayed_after_kill_9(client, redis_url, tmp_path, processes):
    """The lost sample's commit stores the env: a restart's replay starts after it, never runs it again."""
    marker = tmp_path / "hang-now"  # the sample hangs the first time only, as a worker killed from outside
    marker.touch()
    path = write_function(tmp_path, "import os, time\n\ndef handler(input, context):\n"
                                    f"    if input.get('hang') and os.path.exists({str(marker)!r}):\n"
                                    "        time.sleep(3)\n"
                                    "    context.env['n'] = context.env.get('n', 0) + 1\n"
                                    "    return {'n': context.env['n']}\n")
    env = runtime_env(redis_url, path, ENV_CHECKPOINT_SECONDS="3600", BATCH_SIZE="1", HANDLER_TIMEOUT="1")
    samples = make_samples(5)
    samples[2]["hang"] = True
    publish(client, samples[:4])
    processes.append(spawn("runtime", env))
    wait_for(lambda: len(outputs(client, "out")) == 3, timeout=30, what="the outputs around the lost sample")
    marker.unlink()
    processes[-1].send_signal(signal.SIGKILL)
    processes[-1].wait(10)
    processes.append(spawn("runtime", env))
    publish(client, samples[4:])
    wait_for(lambda: len(outputs(client, "out")) == 4, timeout=30, what="the output after the restart")
    assert [output["n"] for _, output in outputs(client, "out")] == [1, 2, 3, 4]
    assert [e["fault"] for _, e in client.xrange("out:errors")] == ["timeout"]  # recorded once, run once


def test_a_clock_step_does_not_make_a_live_holder_look_gone(monkeypatch):
    """A process's start token must not follow the wall clock: psutil adds the boot time, which /proc/stat
    gives anew after every clock step (NTP, a VM resumed), so a standby beside a live holder would find
    another start time and take its lease (a fleet replica would count it dead for good)."""
    from psutil import _pslinux
    parent = os.getppid()
    holder = Holder(Holder.of_this_process().host, parent, process_start(parent), pid_namespace(), "holder")
    stepped = _pslinux.boot_time() + 7  # the clock was set 7 s forward since the holder started
    monkeypatch.setattr(_pslinux, "boot_time", lambda: stepped)
    assert process_start(parent) == holder.started
    assert not holder.gone(Holder.of_this_process())
