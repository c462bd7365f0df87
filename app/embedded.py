"""The embedded stack the dashboard starts when no Redis is configured: one per data directory.

Streamlit's caches can be cleared at any time, so the stack is not kept only in a cache: this module
keeps it per data directory for the app process, and the data directory's lock finds a stack that
runs (in this process or another) so that nothing starts a second one. Starting takes a few seconds;
`ensure_started()` returns at once with a status the page shows meanwhile.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from runtime.config import RedisSettings
from runtime.stack import LocalStack, StackSettings

log = logging.getLogger(__name__)


class State(str, Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class EmbeddedStatus:
    """What the page says about the embedded stack: starting, ready (with its stack) or failed (why)."""

    state: State
    stack: LocalStack | None = None
    reason: str | None = None

    @property
    def message(self) -> str:
        if self.state is State.STARTING:
            return "Starting the embedded stack (Valkey, collector, runtime)…"
        if self.state is State.FAILED:
            return f"The embedded stack could not start: {self.reason}"
        return f"Embedded stack ready at {self.stack.url}" + (" (attached to a running one)" if self.stack.attached else "")


_GUARD = threading.Lock()
_STATUS: dict[Path, EmbeddedStatus] = {}  # per data directory, for this app process


def _data_dir(settings: StackSettings) -> Path:
    return settings.data_dir.resolve()


def ensure_started(settings: StackSettings | None = None) -> EmbeddedStatus:
    """The stack's status; the first call for a data directory starts it in the background."""
    settings = settings or StackSettings.from_env(dict(os.environ))
    key = _data_dir(settings)
    with _GUARD:
        status = _STATUS.get(key)
        if status is None or status.state is State.FAILED:
            status = _STATUS[key] = EmbeddedStatus(State.STARTING)
            threading.Thread(target=_start, args=(settings, key), name="embedded-stack", daemon=True).start()
        return status


def _start(settings: StackSettings, key: Path) -> None:
    try:
        stack = LocalStack(settings).start()
    except Exception as error:  # noqa: BLE001 - any failure is shown on the page, with its reason
        log.exception("embedded stack failed to start")
        status = EmbeddedStatus(State.FAILED, reason=f"{type(error).__name__}: {error}")
    else:
        atexit.register(stack.stop)  # Streamlit exits Python on Ctrl-C / SIGTERM: stop the children first
        status = EmbeddedStatus(State.READY, stack=stack)
    with _GUARD:
        _STATUS[key] = status


def wait_until_settled(settings: StackSettings | None = None, timeout: float = 60.0) -> EmbeddedStatus:
    """The status once it is ready or failed (or still starting after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    status = ensure_started(settings)
    while status.state is State.STARTING and time.monotonic() < deadline:
        time.sleep(0.1)
        status = ensure_started(settings)
    return status


def start_embedded_stack() -> tuple[LocalStack, RedisSettings]:
    """Valkey (data on disk under DATA_DIR, default ./.data), collector and runtime with ./usermodule.py.

    Blocks until the stack is up; RuntimeError with the reason when it cannot start.
    """
    status = wait_until_settled()
    if status.state is not State.READY:
        raise RuntimeError(status.message)
    return status.stack, RedisSettings(status.stack.url)


def describe(stack: LocalStack) -> dict[str, str]:
    return {
        "Valkey": stack.url + (" (attached)" if stack.attached else ""),
        "data": str(stack.root),
        "logs": str(stack.log_dir),
        "function": str(stack.settings.function_path),
        "interval": f"{stack.settings.interval:g} s",
    }
