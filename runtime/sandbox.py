"""What keeps a worker process apart from the runtime: its environment, its process tree, its lifetime."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit, urlunsplit

SECRETS = ("REDIS_PASSWORD", "REDISCLI_AUTH")  # never handed to user code
URL_VARIABLES = ("REDIS_URL",)  # kept, without the password in them
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PR_SET_CHILD_SUBREAPER = 36
TERMINATE_PATIENCE = 7.0  # seconds the warden gets to kill the worker's tree before its group is killed


def child_environment(environ: Mapping[str, str], package_root: str) -> dict[str, str]:
    """The worker's environment: ours without Redis credentials, with `runtime` importable."""
    env = {name: value for name, value in environ.items() if name not in SECRETS}
    for name in URL_VARIABLES:
        if name in env:
            url = without_password(env[name])
            if url is None:
                del env[name]
            else:
                env[name] = url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environ.get("PYTHONPATH")]))
    return env


def without_password(url: str) -> str | None:
    """The URL with any user name and password removed; None when it cannot be parsed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return None
    if "@" not in parts.netloc:
        return url
    host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=host + port))


def die_with_parent(parent_pid: int, how: signal.Signals = signal.SIGKILL) -> None:
    """Ask Linux to send `how` to this process when its parent dies; exit now if it already has."""
    _prctl(PR_SET_PDEATHSIG, how, "PR_SET_PDEATHSIG")
    if os.getppid() != parent_pid:  # it died before the request took effect
        os._exit(1)


def become_subreaper() -> None:
    """Orphans of our descendants become our children (not init's), so we can find and kill them."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1, "PR_SET_CHILD_SUBREAPER")


def _prctl(option: int, value: int, name: str) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({name}) failed")


def wait_for_exit(process: subprocess.Popen, timeout: float) -> bool:
    """Whether the process has ended within `timeout` seconds, without reaping it.

    Not reaping keeps its process id, and so its group id, from being reused until stop_warden().
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # reaped already
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def stop_warden(process: subprocess.Popen) -> None:
    """Stop a worker's warden, which kills everything the handler started; then kill its group, and reap it.

    The group kill is the fallback for a warden that does not end (it runs no user code, so it should).
    """
    if not wait_for_exit(process, 0):
        try:
            process.send_signal(signal.SIGCONT)  # a handler may have stopped it (SIGSTOP to its parent)
            process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        wait_for_exit(process, TERMINATE_PATIENCE)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:  # unkillable (stuck in the kernel): leave it, never block the loop
        pass


def kill_children(keep: Collection[int] = (), patience: float = 5.0) -> None:
    """SIGKILL this process's children not in `keep`, with all they started, and reap them; until none is
    left or `patience` runs out (a process stuck in the kernel is left behind).

    For a child subreaper (the warden; `python -m runtime`): killed processes cannot fork, and the
    orphans of killed parents come to us, so each round finds what the last one missed. Only the
    children killed are reaped, never `keep`'s (their owners wait for them). Never call it in a process
    whose other children are not ours to kill (a test runner).
    """
    import psutil  # the warden imports it before any signal can come; the worker never needs it

    me = psutil.Process()
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        strays = [child for child in me.children() if child.pid not in keep]
        if not strays:
            return
        for stray in strays:
            try:
                family = [*stray.children(recursive=True), stray]
            except psutil.Error:
                family = [stray]
            for member in family:
                try:
                    member.kill()
                except psutil.Error:
                    pass
        for stray in strays:
            try:
                os.waitpid(stray.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.005)
