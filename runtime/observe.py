"""Health and metrics over HTTP: /healthz, /readyz and Prometheus /metrics (prometheus_client)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("runtime.http")

LIVENESS_SECONDS = 60.0  # the loop must come round at least this often (blocking reads last 1 s)


class Metrics:
    """The runtime's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.invocations = Counter("runtime_invocations", "Handler invocations", registry=self.registry)
        self.errors = Counter("runtime_errors", "Error records by fault", ["fault"], registry=self.registry)
        self.duration = Histogram("runtime_handler_duration_seconds", "Time spent in the handler",
                                  buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
                                  registry=self.registry)
        self.lag = Histogram("runtime_lag_seconds", "Sample time to output stored",
                             buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300),
                             registry=self.registry)
        self.gaps = Counter("runtime_stream_gaps", "Times the input stream had been trimmed past samples the "
                            "runtime had not read (down longer than the retention)", registry=self.registry)
        self.ready = Gauge("runtime_ready", "1 when connected to Redis with a function loaded",
                           registry=self.registry)
        self.function = Info("runtime_function", "The function in use", registry=self.registry)


class Health:
    """What the probes ask: is the loop coming round, is the runtime ready."""

    def __init__(self) -> None:
        self.last_beat = time.monotonic()
        self.ready = False

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < LIVENESS_SECONDS


def serve(port: int, health: Health, metrics: Metrics, describe: Callable[[], str]) -> ThreadingHTTPServer:
    """Answer probes and scrapes on `port` from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path == "/healthz":
                self._reply(200 if health.alive else 503, "ok\n" if health.alive else "loop stalled\n")
            elif self.path == "/readyz":
                self._reply(200 if health.ready else 503, "ready\n" if health.ready else f"not ready: {describe()}\n")
            elif self.path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, "try /healthz, /readyz or /metrics\n")

        def _reply(self, code: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - probes every few seconds: keep quiet
            log.debug(format, *args)

    server = ThreadingHTTPServer(("", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("http_listening port=%d paths=/healthz,/readyz,/metrics", server.server_address[1])
    return server
