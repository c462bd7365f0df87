"""The main command on a machine with nothing started: embedded Valkey + collector + runtime."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.conftest import REPO_DIR


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


def start_stack(data_dir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(DATA_DIR=str(data_dir), INTERVAL="1", PYTHONPATH=str(REPO_DIR))
    return subprocess.Popen([sys.executable, "-m", "runtime.stack"], cwd=REPO_DIR, env=env, text=True,
                            stdout=subprocess.PIPE)


def test_the_stack_prints_outputs_within_15_s_and_keeps_history(tmp_path):
    process = start_stack(tmp_path)
    try:
        lines = read_lines_until(process, lambda ls: sum("percent-network-egress" in l for l in ls) >= 2, 15)
        url = next(l for l in lines if l.startswith("Valkey at")).split()[2].rstrip(";")
        stored = redis.Redis.from_url(url).xlen("metrics:stream")
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
