"""Health and metrics over HTTP: /healthz, /readyz and Prometheus /metrics (prometheus_client)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

STALL_SECONDS = 10.0  # no step completed for this long (outside a handler call): /healthz fails
HTTP_IDLE_SECONDS = 5.0  # an HTTP connection idle this long is closed, its thread freed
HTTP_THREADS = 32  # connections served at once; more are closed at once


class Metrics:
    """The runtime's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.invocations = Counter("runtime_invocations", "Handler invocations", registry=self.registry)
        self.errors = Counter("runtime_errors", "Error records by fault", ["fault"], registry=self.registry)
        self.duration = Histogram("runtime_handler_duration_seconds", "Time spent in the handler",
                                  buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
                                  registry=self.registry)
        self.lag = Histogram("runtime_lag_seconds", "Sample time to output stored, the oldest sample of a commit",
                             buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300),
                             registry=self.registry)
        self.gaps = Counter("runtime_stream_gaps", "Times the input stream had been trimmed past samples the "
                            "runtime had not read (down longer than the retention)", registry=self.registry)
        self.loop_errors = Counter("runtime_loop_errors", "Failures of a loop step that were not the handler's "
                                   "nor a Redis outage (logged with a traceback)", registry=self.registry)
        self.hosts_skipped = Counter("runtime_hosts_skipped", "Host ids in the registry that cannot be followed "
                                     "(not UTF-8, or not a node name)", registry=self.registry)
        self.ready = Gauge("runtime_ready", "1 when connected to Redis with a function loaded",
                           registry=self.registry)
        self.function = Info("runtime_function", "The function in use", registry=self.registry)


class Health:
    """What the probes ask: does the loop make progress, is the runtime ready."""

    def __init__(self, call_seconds: float = 0.0) -> None:
        self.call_seconds = call_seconds  # how long one handler call may take (HANDLER_TIMEOUT)
        self.last_progress = time.monotonic()
        self.call_started: float | None = None
        self.ready = False
        self.idle = False  # waiting for work with nothing to do: nothing can be stuck

    def progress(self) -> None:
        """A step completed: samples handled, none waiting, or a wait that a restart would not cure."""
        self.last_progress = time.monotonic()

    def calling(self, busy: bool) -> None:
        """The handler runs (it may take HANDLER_TIMEOUT), or no longer does."""
        self.call_started = time.monotonic() if busy else None

    def wait_idle(self, woken: threading.Event) -> None:
        """Wait for `woken` with nothing to do, alive all the while however long: no wake-ups to prove it."""
        self.idle = True
        try:
            woken.wait()
        finally:
            self.idle = False
            self.progress()

    @property
    def alive(self) -> bool:
        if self.idle:
            return True
        now = time.monotonic()
        if self.call_started is not None and now - self.call_started < self.call_seconds + STALL_SECONDS:
            return True
        return now - self.last_progress < STALL_SECONDS


class Probes:
    """What the HTTP server answers from; swapped in place once the runtime is built."""

    def __init__(self, health: Health, metrics: Metrics, describe: Callable[[], str]) -> None:
        self.health, self.metrics, self.describe = health, metrics, describe


class StartingHealth(Health):
    """Before the runtime is built (installing requirements): alive, not ready."""

    @property
    def alive(self) -> bool:
        return True


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most HTTP_THREADS of them: further connections are closed at once."""

    daemon_threads = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(HTTP_THREADS)

    def process_request(self, request: socket.socket, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def serve(port: int, probes: Probes) -> ThreadingHTTPServer:
    """Answer probes and scrapes on `port` from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        timeout = HTTP_IDLE_SECONDS  # an idle or slow connection is closed, its thread freed

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            health = probes.health
            if self.path == "/healthz":
                self._reply(200 if health.alive else 503, "ok\n" if health.alive else "loop stalled\n")
            elif self.path == "/readyz":
                ready = health.ready
                self._reply(200 if ready else 503, "ready\n" if ready else f"not ready: {probes.describe()}\n")
            elif self.path == "/metrics":
                self._reply(200, generate_latest(probes.metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, "try /healthz, /readyz or /metrics\n")

        def _reply(self, code: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            data = body.encode("utf-8", "replace") if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - probes every few seconds: keep quiet
            log.debug(format, *args)

    server = BoundedServer(("", port), Handler)
    # The poll interval only bounds how soon shutdown() is noticed, which we never call: no idle wake-ups.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 3600}, name="http", daemon=True).start()
    log.info("http_listening port=%d paths=/healthz,/readyz,/metrics", server.server_address[1])
    return server
