"""The main command on a machine with nothing started: embedded Valkey + collector + runtime."""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import redis

from runtime import schema
from runtime.stack import StackSettings, print_outputs
from tests.conftest import REPO_DIR, free_port, wait_for


def read_lines_until(process, predicate, timeout):
    deadline = time.monotonic() + timeout
    lines = []
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            lines.append(line)
            if predicate(lines):
                return lines
        else:
            time.sleep(0.05)
    raise AssertionError(f"not seen within {timeout}s; output so far: {lines}")


def start_stack(data_dir: Path, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(DATA_DIR=str(data_dir), INTERVAL="1", PYTHONPATH=str(REPO_DIR))
    return subprocess.Popen([sys.executable, "-m", "runtime.stack"], cwd=REPO_DIR, env=env, text=True,
                            stdout=subprocess.PIPE, **kwargs)


def test_the_stack_prints_outputs_within_15_s_and_keeps_history(tmp_path):
    process = start_stack(tmp_path)
    try:
        lines = read_lines_until(process, lambda ls: sum("percent-network-egress" in l for l in ls) >= 2, 15)
        url = next(l for l in lines if l.startswith("Valkey at")).split()[2].rstrip(";")
        stored = redis.Redis.from_url(url).xlen("metrics:stream")
        # The alert evaluator runs in the stack too, on the rules beside the function.
        wait_for(lambda: redis.Redis.from_url(url).hget(schema.Keys().alerts.status, "heartbeat"), timeout=15,
                 what="the stack's alert evaluator")
        pid = int((tmp_path / "valkey" / "valkey.pid").read_text())
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    finally:
        process.kill()
    assert not Path(f"/proc/{pid}").exists(), "the Valkey server outlived the stack"

    process = start_stack(tmp_path)  # history survives a restart
    try:
        lines = read_lines_until(process, lambda ls: any(l.startswith("Valkey at") for l in ls), 15)
        url = lines[-1].split()[2].rstrip(";")
        assert redis.Redis.from_url(url).xlen("metrics:stream") >= stored
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)


def test_a_second_stack_on_the_same_data_directory_attaches_and_loses_nothing(tmp_path):
    first = start_stack(tmp_path)
    second = None
    try:
        lines = read_lines_until(first, lambda ls: sum("percent-network-egress" in l for l in ls) >= 1, 20)
        url = next(l for l in lines if l.startswith("Valkey at")).split()[2].rstrip(";")
        server_pid = int((tmp_path / "valkey" / "valkey.pid").read_text())
        second = start_stack(tmp_path)
        seen = read_lines_until(second, lambda ls: sum("percent-network-egress" in l for l in ls) >= 1, 20)
        assert seen[0].startswith(f"Valkey at {url};") and "attached" in seen[0]
        assert Path(f"/proc/{server_pid}").exists(), "the second start replaced the live Valkey"
        second.send_signal(signal.SIGINT)
        assert second.wait(20) == 0
        client = redis.Redis.from_url(url)
        before = client.xlen("metrics:stream")
        wait_for(lambda: client.xlen("metrics:stream") > before, timeout=15, what="samples after the detach")
        assert first.poll() is None and Path(f"/proc/{server_pid}").exists()
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait(20)


def test_child_logs_go_to_a_file_and_the_terminal_keeps_what_a_person_needs(tmp_path):
    process = start_stack(tmp_path, stderr=subprocess.PIPE)
    try:
        lines = read_lines_until(process, lambda ls: sum("percent-network-egress" in l for l in ls) >= 3, 20)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    assert f"logs in {tmp_path.resolve() / 'logs'}" in lines[0]
    assert "INFO runtime" not in stderr and "INFO collector" not in stderr, stderr
    assert "commit" in (tmp_path / "logs" / "runtime.log").read_text() or (tmp_path / "logs" / "runtime.log").stat().st_size
    assert (tmp_path / "logs" / "collector.log").exists()


def test_a_server_left_by_a_killed_stack_is_taken_over_with_its_history(tmp_path):
    process = start_stack(tmp_path)
    try:
        lines = read_lines_until(process, lambda ls: sum("percent-network-egress" in l for l in ls) >= 1, 20)
        url = lines[0].split()[2].rstrip(";")
        stored = redis.Redis.from_url(url).xlen("metrics:stream")
        # The alert evaluator runs in the stack too, on the rules beside the function.
        wait_for(lambda: redis.Redis.from_url(url).hget(schema.Keys().alerts.status, "heartbeat"), timeout=15,
                 what="the stack's alert evaluator")
    finally:
        process.kill()  # the stack dies; its collector and runtime die with it; Valkey stays behind
        process.wait(10)
    process = start_stack(tmp_path)
    try:
        lines = read_lines_until(process, lambda ls: any(l.startswith("Valkey at") for l in ls), 30)
        assert "attached" not in lines[0]
        new_url = lines[0].split()[2].rstrip(";")
        assert redis.Redis.from_url(new_url).xlen("metrics:stream") >= stored
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)


EMBEDDED_TWICE = """
import importlib, json, os, sys
from app import embedded
stack, _ = embedded.start_embedded_stack()
embedded._STATUS.clear()            # what Streamlit's "Clear cache" cannot reach, lost too
importlib.reload(embedded)
again, _ = embedded.start_embedded_stack()
pids = [int((stack.root / "valkey" / "valkey.pid").read_text())] + [c.pid for c in stack.children.values()]
print(json.dumps({"first": stack.url, "second": again.url, "attached": again.attached,
                  "children": len(stack.children) + len(again.children), "pids": pids}), flush=True)
"""


def test_clearing_caches_never_starts_a_second_embedded_stack(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(DATA_DIR=str(tmp_path), INTERVAL="1", PYTHONPATH=str(REPO_DIR))
    result = subprocess.run([sys.executable, "-c", EMBEDDED_TWICE], cwd=REPO_DIR, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    pids = report.pop("pids")
    assert report == {"first": report["first"], "second": report["first"], "attached": True, "children": 3}  # collector, runtime, alerts
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in pids), timeout=20, what="no process left behind")


def test_the_embedded_status_says_starting_then_ready(tmp_path):
    from app import embedded
    settings = StackSettings(data_dir=tmp_path, interval=1.0)
    status = embedded.ensure_started(settings)
    try:
        assert status.state in (embedded.State.STARTING, embedded.State.READY)
        assert "Starting the embedded stack" in status.message or status.state is embedded.State.READY
        status = embedded.wait_until_settled(settings)
        assert status.state is embedded.State.READY and status.stack.url in status.message
        assert embedded.ensure_started(settings).stack is status.stack  # no second start
    finally:
        if status.stack is not None:
            status.stack.stop()


def test_the_dashboard_listens_on_loopback_only_unless_told_otherwise(redis_url, processes):
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO_DIR)}
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app", "--server.headless", "true",
                                "--server.port", str(port)], cwd=REPO_DIR, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    processes.append(process)
    listening = lambda: [c.laddr for c in psutil.Process(process.pid).net_connections("inet")  # noqa: E731
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    addresses = wait_for(listening, timeout=60, what="streamlit to listen")
    assert all(ipaddress.ip_address(address.ip).is_loopback for address in addresses), addresses


def test_printing_outputs_survives_entries_with_bad_bytes(redis_url, capsys):
    client = redis.Redis.from_url(redis_url)
    stop, seen = threading.Event(), []
    thread = threading.Thread(target=print_outputs, args=(client, schema.Keys(output="out"), stop), daemon=True)
    thread.start()

    def printed() -> bool:
        client.xadd("out:stream", {b"timestamp": b"\xff\xfe", b"output": b'{"a": 1, "b": "\xff"}'})
        client.xadd("out:stream", {b"other": b"x"})
        client.xadd("out:stream", {b"timestamp": b"t", b"output": b'{"ok": NaN}'})
        time.sleep(0.1)
        seen.append(capsys.readouterr().out)
        shown = "".join(seen)  # the reader may start after the first round of entries: wait for all three kinds
        return "(no output field)" in shown and '{"ok": NaN}' in shown and "\ufffd" in shown

    try:
        wait_for(printed, timeout=15, what="the outputs printed")
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(5)


def test_a_data_dir_that_cannot_be_used_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    process = start_stack(blocker / "data", stderr=subprocess.PIPE)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2 and "stack: cannot use DATA_DIR=" in stderr and "writable directory" in stderr
    assert "Traceback" not in stderr
