"""Helpers for the alert tests: an evaluator in a thread, samples at chosen times, a local webhook receiver."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis

from runtime import schema
from runtime.alerts.config import AlertsConfig
from runtime.alerts.service import Evaluator
from runtime.config import connect
from tests.conftest import running_in_thread

KEYS = schema.Keys().alerts


def write_rules(directory: Path, text: str, name: str = "alerts.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def alerts_env(redis_url: str, rules: Path, **extra: str) -> dict[str, str]:
    env = {"REDIS_URL": redis_url, "ALERTS_FILE": str(rules), "START_FROM": "earliest", "HTTP_PORT": "off",
           "LEASE_SECONDS": "1", "ALERTS_GRACE_SECONDS": "1", "ALERT_WEBHOOK_TIMEOUT": "1"}
    env.update(extra)
    return env


@contextmanager
def running_evaluator(env: dict[str, str]) -> Iterator[Evaluator]:
    config = AlertsConfig.from_env(env)
    stop = threading.Event()
    with running_in_thread(Evaluator(config, connect(config.redis, client_name="test-alerts"), stop), stop,
                           "evaluator") as evaluator:
        yield evaluator


def add_sample(client: redis.Redis, at_seconds: float, stream: str = "metrics:stream", extra: dict | None = None,
               **fields: float) -> str:
    """One input-stream entry at a chosen server time (its id), with the given sample fields."""
    sample = {schema.TIMESTAMP: "2026-11-28 14:00:00.000000", **fields}
    entry = {schema.SAMPLE_FIELD: json.dumps(sample)}
    if extra is not None:
        entry["extra"] = json.dumps(extra)
    return client.xadd(stream, entry, id=f"{int(at_seconds * 1000)}-0")


def transitions(client: redis.Redis, keys=KEYS) -> list[tuple[str, str, str, int]]:
    """(rule, host, phase, at_ms) of every stored transition, in order."""
    return [(f["rule"], f["host"], f["phase"], int(f["at_ms"])) for _, f in client.xrange(keys.transitions)]


def cursor_of(client: redis.Redis, host: str = "", keys=KEYS) -> dict:
    text = client.hget(keys.cursors, host)
    return json.loads(text) if text else {}


def status_of(client: redis.Redis, keys=KEYS) -> dict[str, str]:
    return client.hgetall(keys.status)


class Receiver:
    """A webhook receiver on 127.0.0.1: answers each POST from a script of (status, delay) then 200."""

    def __init__(self, script: list[tuple[int, float]] | None = None, port: int = 0) -> None:
        self.script = list(script or [])
        self.bodies: list[dict] = []  # every POST that was answered 2xx
        self.authorizations: list[str | None] = []
        self.attempts = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.attempts += 1
                    receiver.authorizations.append(self.headers.get("Authorization"))
                    code, delay = receiver.script.pop(0) if receiver.script else (200, 0.0)
                time.sleep(delay)
                if 200 <= code < 300:
                    with receiver.lock:
                        receiver.bodies.append(body)
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (a slow answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
