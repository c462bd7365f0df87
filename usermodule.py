"""Example function: network egress share, memory used for caching, one-minute CPU averages.

Runs unchanged on the course's reference runtime and on ours: `handler(input, context)` reads one
sample and keeps what it needs between calls in `context.env` (plain dicts, deques and numbers).
"""

import math
from collections import deque
from datetime import datetime

WINDOW_SECONDS = 60.0
CPU_PREFIX = "cpu_percent-"
BYTES_SENT = "net_io_counters_eth0-bytes_sent"
BYTES_RECV = "net_io_counters_eth0-bytes_recv"


def handler(input: dict, context) -> dict:
    env = context.env
    now = datetime.fromisoformat(input["timestamp"]).timestamp()
    output = {
        "percent-network-egress": percent_network_egress(input, env),
        "percent-memory-cache": percent_memory_cache(input),
    }
    output.update(cpu_moving_averages(input, env, now))
    return {name: value for name, value in output.items() if value is not None}  # no number: no key


def number(value) -> float | None:
    """A finite number, or None for anything else (NaN, 1e999, "50", True): checked before it is used."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:  # an int too large for a float
        return None


def counter(input: dict, name: str) -> object:
    """A network counter under the course's name, or the assignment's name with a trailing 1."""
    return input[name] if name in input else input.get(name + "1")


def percent_network_egress(input: dict, env: dict) -> float | None:
    """Bytes sent / (sent + received) x 100 since the previous sample (since boot on the first one)."""
    sent, received = number(counter(input, BYTES_SENT)), number(counter(input, BYTES_RECV))
    if sent is None or received is None:
        return None  # and the previous counters stay, for the next good sample
    previous = env.get("net_counters")
    env["net_counters"] = (sent, received)
    if previous is not None and sent >= previous[0] and received >= previous[1]:
        sent, received = sent - previous[0], received - previous[1]  # else counters were reset: since boot
    total = sent + received
    return 100.0 * sent / total if total else 0.0


def percent_memory_cache(input: dict) -> float | None:
    """(buffers + cached) / total x 100."""
    buffers, cached, total = (number(input.get(f"virtual_memory-{name}")) for name in ("buffers", "cached", "total"))
    if buffers is None or cached is None or not total:
        return None
    return 100.0 * (buffers + cached) / total


def cpu_moving_averages(input: dict, env: dict, now: float) -> dict:
    """Mean utilisation of each CPU over the samples of the last 60 s, this one included.

    Each CPU keeps a deque of (time, value) and a running sum: every sample is added once and
    dropped once, so the cost per sample does not grow with the window. A value that is not a
    finite number is skipped before anything changes, so it never poisons later averages.
    """
    windows = env.setdefault("cpu_windows", {})
    sums = env.setdefault("cpu_sums", {})
    if now < env.get("cpu_last_time", now):  # the clock went back: start the windows again
        windows.clear()
        sums.clear()
    env["cpu_last_time"] = now
    averages = {}
    for name, raw in input.items():
        if not name.startswith(CPU_PREFIX) or not name[len(CPU_PREFIX):].isdigit():
            continue
        value = raw if type(raw) is float and math.isfinite(raw) else number(raw)  # the common case first
        if value is None:
            continue
        cpu = int(name[len(CPU_PREFIX):])
        window = windows.setdefault(cpu, deque())
        window.append((now, value))
        total = sums.get(cpu, 0.0) + value
        while now - window[0][0] >= WINDOW_SECONDS:
            total -= window.popleft()[1]
        sums[cpu] = total if len(window) > 1 else float(value)  # reset rounding drift when alone
        averages[f"avg-util-cpu{cpu}-60sec"] = sums[cpu] / len(window)
    return averages
