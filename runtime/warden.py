"""The worker's warden: `python -m runtime.warden FD RUNTIME_PID SETTINGS`, what worker.Worker starts.

A handler can start processes that leave the worker's process group (setsid) or outlive their parent
(a double fork). The warden stands between the runtime and the worker (`runtime.serve`, which it
forks): as a child subreaper it inherits every orphan of the worker's tree, and it kills the whole tree
when the worker ends, when the runtime asks (SIGTERM) and when the runtime dies (parent-death signal).
Then it ends as the worker ended, so the runtime sees the worker's exit code. It runs no user code: its
signal handler cannot be replaced.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil  # noqa: F401 - for kill_children, imported before any signal can interrupt the import

from runtime.sandbox import become_subreaper, die_with_parent, kill_children


def _end_as(status: int) -> None:
    """Exit with the worker's wait status: its exit code, or death by the same signal."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be handled, nor reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)  # a signal that does not end a process by default (SIGCHLD…): fall through
    os._exit(code if code >= 0 else 128 - code)


def _stop(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second request (the runtime's, then its death) must not re-enter
    try:
        kill_children()
    finally:
        os._exit(128 + signum)


def _run_worker(argv: list[str], warden: int) -> None:
    """The forked child: the worker proper, with the default signal handling and dying with the warden."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    from runtime.serve import main as serve  # imported here: the warden stays small

    try:
        serve([argv[0], argv[1], str(warden), argv[3]])
    finally:
        os._exit(0)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the runtime, which stops us itself
    signal.signal(signal.SIGTERM, _stop)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # until the worker is forked and known
    become_subreaper()
    die_with_parent(int(argv[2]), signal.SIGTERM)
    warden = os.getpid()
    worker = os.fork()
    if worker == 0:
        _run_worker(argv, warden)
    os.close(int(argv[1]))  # only the worker holds the runtime's socket: its end is the worker's end
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # cannot happen while the worker lives; end cleanly all the same
            os._exit(1)
        if pid == worker:
            kill_children()
            _end_as(status)


if __name__ == "__main__":
    main(sys.argv)
