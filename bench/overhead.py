"""CPU and memory of the runtime and the collector, idle and at work, over a minute, in one run.

    python -m bench.overhead [seconds]

All processes run at once against one Valkey server, each on keys of its own: the runtime idle (no
samples), the runtime fed 1 sample/s, the polling baseline fed the same, the collector at 1 s and
at 5 s intervals. CPU % is of one core, from the processes' own CPU time (children included).
"""

from __future__ import annotations

import sys
import threading
import time

import psutil
import redis

from bench.common import report, synthetic_samples, valkey
from bench.runtime import REPO, spawn
from runtime import schema


def usage(process: psutil.Process) -> tuple[float, int]:
    """(CPU seconds, PSS bytes) of a process and its children (the runtime's handler worker).

    PSS shares the pages a parent and its worker both map (the interpreter, libraries) between
    them, so the sum is what the pair really costs; RSS would count those twice.
    """
    family = [process, *process.children(recursive=True)]
    cpu = sum(p.cpu_times().user + p.cpu_times().system for p in family)
    return cpu, sum(p.memory_full_info().pss for p in family)


def feed(client: redis.Redis, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        payload = schema.encode_sample(synthetic_samples(1, cpus=8)[0])
        pipe = client.pipeline(transaction=True)
        pipe.xadd("fed:stream", schema.sample_entry(payload))
        pipe.set("fed", payload)
        pipe.set("plain", payload)
        pipe.execute()


def main(argv: list[str]) -> int:
    seconds = float(argv[1]) if len(argv) > 1 else 60.0
    with valkey() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        url = {"REDIS_URL": server.connection_url, "FUNCTION_PATH": str(REPO / "usermodule.py")}
        roles = {
            "runtime, idle": ("runtime", {**url, "REDIS_INPUT_KEY": "idle", "REDIS_OUTPUT_KEY": "o-idle"}),
            "runtime, 1 sample/s": ("runtime", {**url, "REDIS_INPUT_KEY": "fed", "REDIS_OUTPUT_KEY": "o-fed"}),
            "runtime, 1 sample/s, in-process": ("runtime", {**url, "REDIS_INPUT_KEY": "fed", "REDIS_OUTPUT_KEY": "o-in",
                                                            "HANDLER_TIMEOUT": "0"}),
            "baseline, 1 sample/s (INTERVAL=5)": ("bench.baseline", {"REDIS_HOST": "127.0.0.1",
                                                   "REDIS_PORT": str(server.port), "REDIS_INPUT_KEY": "plain",
                                                   "REDIS_OUTPUT_KEY": "o-base", **url}),
            "collector, INTERVAL=1": ("runtime.collector", {**url, "REDIS_INPUT_KEY": "c1", "INTERVAL": "1"}),
            "collector, INTERVAL=5": ("runtime.collector", {**url, "REDIS_INPUT_KEY": "c5", "INTERVAL": "5"}),
        }
        processes = {name: spawn(module, env) for name, (module, env) in roles.items()}
        stop = threading.Event()
        feeder = threading.Thread(target=feed, args=(client, stop), daemon=True)
        feeder.start()
        try:
            time.sleep(5)  # start-up (imports, first load) is not what is measured
            handles = {name: psutil.Process(p.pid) for name, p in processes.items()}
            before = {name: usage(h) for name, h in handles.items()}
            peak = {name: before[name][1] for name in handles}
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                time.sleep(1)
                for name, handle in handles.items():
                    peak[name] = max(peak[name], usage(handle)[1])
            elapsed = time.monotonic() - started
            after = {name: usage(h) for name, h in handles.items()}
        finally:
            stop.set()
            for process in processes.values():
                process.terminate()
                process.wait(10)
    results, rows = {}, []
    for name in roles:
        cpu_percent = 100 * (after[name][0] - before[name][0]) / elapsed
        results[name] = {"cpu_percent": cpu_percent, "pss_mb": after[name][1] / 2**20, "peak_pss_mb": peak[name] / 2**20}
        rows.append([name, f"{cpu_percent:.2f} %", f"{after[name][1] / 2**20:.0f} MB", f"{peak[name] / 2**20:.0f} MB"])
    report("overhead", f"Overhead over {elapsed:.0f} s (CPU % of one core; memory is PSS, the handler worker included)",
           ["process", "CPU", "memory", "peak memory"], rows, {"seconds": elapsed, **results})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
