"""A standby runtime: never two at work on one output key, takeover within seconds, exactly once."""

import signal
import threading
import time
from datetime import datetime
from types import SimpleNamespace

import usermodule
from runtime.config import RedisSettings, RuntimeConfig, connect
from runtime.loop import Runtime
from runtime.status import HEARTBEAT_SECONDS
from tests.conftest import (REPO_DIR, make_samples, outputs, publish, running_runtime, runtime_env, spawn,
                            wait_for, write_function)

USERMODULE = str(REPO_DIR / "usermodule.py")


def active_pid(client) -> int | None:
    holder = client.get("out:lease")
    return int(holder.split(":")[1]) if holder else None


def uninterrupted(samples):
    context = SimpleNamespace(env={})
    return [usermodule.handler(sample, context) for sample in samples]


def test_the_standby_takes_over_from_a_killed_runtime_exactly_once(client, redis_url, processes):
    env = runtime_env(redis_url, USERMODULE, BATCH_SIZE="5")
    first, second = spawn("runtime", env), spawn("runtime", env)
    processes += [first, second]
    samples = make_samples(600)
    ids: list[str] = []
    feeding = threading.Thread(target=lambda: [ids.extend(publish(client, samples[i:i + 5])) or time.sleep(0.01)
                                               for i in range(0, len(samples), 5)])
    wait_for(lambda: active_pid(client), what="one runtime to take the lease")
    feeding.start()
    wait_for(lambda: len(outputs(client, "out")) >= 200, timeout=30)
    active = next(p for p in (first, second) if p.pid == active_pid(client))
    standby = second if active is first else first
    active.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: active_pid(client) == standby.pid, timeout=10, what="the standby to take the lease")
    assert time.monotonic() - killed_at < 2 + 1.5  # LEASE_SECONDS=2, renewed every turn
    feeding.join()
    wait_for(lambda: len(outputs(client, "out")) >= 600, timeout=60, what="all 600 outputs")
    time.sleep(0.5)
    stored = outputs(client, "out")
    assert [i for i, _ in stored] == ids, "a sample was lost or handled twice across the takeover"
    assert [o for _, o in stored] == uninterrupted(samples)


def test_a_clean_stop_hands_over_at_once(client, redis_url, processes):
    env = runtime_env(redis_url, USERMODULE)
    first, second = spawn("runtime", env), spawn("runtime", env)
    processes += [first, second]
    wait_for(lambda: active_pid(client), what="one runtime to take the lease")
    active = next(p for p in (first, second) if p.pid == active_pid(client))
    standby = second if active is first else first
    publish(client, make_samples(3))
    wait_for(lambda: len(outputs(client, "out")) == 3)
    active.send_signal(signal.SIGTERM)
    assert active.wait(10) == 0
    stopped_at = time.monotonic()
    wait_for(lambda: active_pid(client) == standby.pid, timeout=5)
    assert time.monotonic() - stopped_at < 1.5
    publish(client, make_samples(2))
    wait_for(lambda: len(outputs(client, "out")) == 5)


def test_a_standby_on_another_node_takes_over_once_the_holders_connections_are_gone(client, redis_url, processes):
    """No pid to check across nodes: the holder's process has no connection left in Redis, so the standby
    takes over at its next tick, not when the 30 s lease lapses. A holder still connected keeps it."""
    env = runtime_env(redis_url, USERMODULE, LEASE_SECONDS="30")
    active = spawn("runtime", env, host="elsewhere")
    processes.append(active)
    wait_for(lambda: (client.get("out:lease") or "").startswith("elsewhere:"), what="the other node's runtime")
    standby = spawn("runtime", env)
    processes.append(standby)
    publish(client, make_samples(3))
    wait_for(lambda: len(outputs(client, "out")) == 3)
    time.sleep(HEARTBEAT_SECONDS + 1)  # the standby's ticks find its holder connected: it waits
    assert client.get("out:lease").startswith("elsewhere:")
    active.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: active_pid(client) == standby.pid, timeout=20, what="the standby to take the lease")
    assert time.monotonic() - killed_at < HEARTBEAT_SECONDS + 2  # one tick, far from the lease's 30 s
    publish(client, make_samples(2, start=datetime(2026, 11, 28, 15)))
    wait_for(lambda: len(outputs(client, "out")) == 5)


def test_without_leave_to_list_clients_a_standby_waits_for_the_lease_to_lapse(client, redis_url, processes):
    """An ACL that forbids CLIENT LIST: nothing proves the holder gone, so only the lapse hands over."""
    client.acl_setuser("limited", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
                       commands=["+@all", "-client|list"])
    try:
        env = runtime_env(redis_url.replace("redis://", "redis://limited:secret@"), USERMODULE, LEASE_SECONDS="4")
        active = spawn("runtime", env, host="elsewhere")
        processes.append(active)
        wait_for(lambda: (client.get("out:lease") or "").startswith("elsewhere:"), what="the other node's runtime")
        standby = spawn("runtime", env)
        processes.append(standby)
        time.sleep(1)
        active.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: active_pid(client) == standby.pid, timeout=20, what="the standby to take the lapsed lease")
        assert time.monotonic() - killed_at > 2  # the lease ran out first (up to 4 s after the last renewal)
    finally:
        client.acl_deluser("limited")


def test_a_lease_problem_that_ends_is_taken_back_from_the_status_by_a_tick_or_a_commit(client, redis_url,
                                                                                      tmp_path):
    """A keeper that could not take the lease says stalled. When it can again (its next tick, or a commit
    that renewed the lease while the keeper had nothing to do) the status says running again: a standby's
    stale stall would otherwise sit in the shared status, and a stale problem would make a runtime that
    later loses its lease report the lease as unavailable."""
    path = write_function(tmp_path, "def handler(input, context):\n    return {}\n")
    runtime = Runtime(RuntimeConfig.from_env(runtime_env(redis_url, path)), connect(RedisSettings(redis_url), "test"),
                      threading.Event())
    for recover in (runtime.keeper.tick, lambda: runtime.keeper.renewed_by_commit(time.monotonic())):
        client.delete("out:lease")
        client.hset("out:lease", "not", "a lease")  # Redis refuses the lease script: WRONGTYPE
        assert runtime.keeper.tick() is False
        assert client.hmget("out:status", ["state", "problem"])[0] == "stalled" and runtime.keeper.problem
        client.delete("out:lease")
        recover()
        assert runtime.keeper.problem is None
        assert client.hmget("out:status", ["state", "problem"]) == ["running", ""]
    runtime.invoker.close()


def test_a_runtime_that_lost_its_lease_stores_nothing(client, redis_url, tmp_path):
    path = write_function(tmp_path, "def handler(input, context):\n    return {'ts': input['timestamp']}\n")
    with running_runtime(runtime_env(redis_url, path, LEASE_SECONDS="30")) as runtime:
        publish(client, make_samples(1))
        wait_for(lambda: len(outputs(client, "out")) == 1)
        client.set("out:lease", "another-runtime:1:x", px=30_000)  # as if it had been paused past its lease
        publish(client, make_samples(2)[1:])
        time.sleep(1.5)
        assert len(outputs(client, "out")) == 1
        assert not runtime.lease.held
        client.delete("out:lease")  # the other one goes away: ours takes over and catches up
        wait_for(lambda: len(outputs(client, "out")) == 2, timeout=10)


def test_a_runtime_on_a_host_whose_name_redis_refuses_as_a_client_name_still_runs(client, redis_url, processes):
    """Connections are named after the host; a host name with a space or a letter outside ASCII (Redis refuses
    both in CLIENT SETNAME) must not cost the runtime its connections, nor a standby its takeover."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR), "LOG_LEVEL": "INFO",
           **runtime_env(redis_url, USERMODULE, LEASE_SECONDS="30")}
    script = "import socket, sys, runpy; socket.sethostname(sys.argv[1]); runpy.run_module('runtime', run_name='__main__')"
    active = subprocess.Popen(["unshare", "--uts", sys.executable, "-c", script, "lab bench \u00e9"], env=env,
                              cwd=REPO_DIR)
    processes.append(active)
    publish(client, make_samples(3))
    wait_for(lambda: len(outputs(client, "out")) == 3, timeout=20, what="the runtime's outputs")
    standby = spawn("runtime", env)
    processes.append(standby)
    time.sleep(HEARTBEAT_SECONDS + 1)  # the standby finds its holder connected: it waits
    assert active_pid(client) == active.pid
    active.send_signal(signal.SIGKILL)
    wait_for(lambda: active_pid(client) == standby.pid, timeout=HEARTBEAT_SECONDS + 3,
             what="the standby to take the lease at its next tick")
