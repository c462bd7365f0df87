"""Freshness and throughput of the runtime, side by side with the polling baseline, in one run.

    python -m bench.runtime              # both
    python -m bench.runtime freshness    # sample published -> output visible, at 1 and 10 samples/s
    python -m bench.runtime throughput   # sustained invocations/s on a burst; duplicates and misses
    python -m bench.runtime idle         # CPU at one sample per 5 s, ours beside the baseline
    python -m bench.runtime rate         # usermodule.py at 100 samples/s: lag with its env stored less often

Freshness runs its consumers on the same samples at once: our runtime on the stream (with its worker
and in-process), our runtime polling the plain key (INTERVAL=5), the baseline that behaves like the
reference (GET every 5 s, re-running the handler on unchanged input), and the floor: a bare Python
relay (bench/relay.py) that only copies each timestamp to its output stream.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

from bench.common import save, synthetic_samples, table, valkey
from runtime import schema

REPO = Path(__file__).resolve().parent.parent
# Counts its invocations, so a re-run on the same sample shows as a new output.
ECHO = ("def handler(input, context):\n    context.env['n'] = context.env.get('n', 0) + 1\n"
        "    return {'ts': input['timestamp'], 'n': context.env['n']}\n")
TRIVIAL = "def handler(input, context):\n    return {'ok': 1}\n"


def spawn(module: str, env: dict[str, str]) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(REPO), "LOG_LEVEL": "WARNING", "HTTP_PORT": "off", **env}
    return subprocess.Popen([sys.executable, "-m", module], env=full, cwd=REPO)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1]}


def watch(port: int, key: str, stream: bool, stop, ready, results) -> None:
    """Record when each sample's output first becomes visible, and how often a sample is handled.

    Runs in a process of its own, so its timing shares no interpreter with the publisher or the others.
    """
    client = redis.Redis(port=port, decode_responses=True)
    seen: dict[str, float] = {}
    handled: dict[str, int] = {}

    def record(ts: str, now: float) -> None:
        seen.setdefault(ts, now)
        handled[ts] = handled.get(ts, 0) + 1

    if stream:
        newest = client.xrevrange(f"{key}:stream", count=1)
        cursor = newest[0][0] if newest else "0-0"
        ready.set()
        while not stop.is_set():
            reply = client.xread({f"{key}:stream": cursor}, block=200)
            now = time.time()
            for entry_id, fields in reply[0][1] if reply else ():
                cursor = entry_id
                record(fields[schema.TIMESTAMP], now)  # the timestamp of the sample it came from
    else:
        last = client.get(key)
        ready.set()
        while not stop.is_set():
            raw = client.get(key)  # the baseline SETs every interval, changed or not
            if raw is not None and raw != last:
                last = raw
                record(json.loads(raw)["ts"], time.time())
            time.sleep(0.002)
    results.put((seen, handled))


class Watcher:
    """A watching process (see watch()); seen and handled once finished."""

    def __init__(self, port: int, output_key: str, stream: bool) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop, self.ready, self.results = context.Event(), context.Event(), context.Queue()
        self.process = context.Process(target=watch, args=(port, output_key, stream, self.stop, self.ready,
                                                           self.results), daemon=True)
        self.seen: dict[str, float] = {}
        self.handled: dict[str, int] = {}

    def start(self) -> None:
        self.process.start()
        self.ready.wait(30)

    def finish(self) -> None:
        self.stop.set()
        self.seen, self.handled = self.results.get(timeout=30)
        self.process.join(10)


def freshness() -> dict:
    results, rows = {}, []
    with valkey() as server, tempfile.TemporaryDirectory() as tmp:
        function = Path(tmp, "echo.py")
        function.write_text(ECHO)
        client = redis.Redis(port=server.port, decode_responses=True)
        base = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(server.port), "FUNCTION_PATH": str(function)}
        consumers = {
            "ours, stream": ({"REDIS_INPUT_KEY": "metrics", "REDIS_OUTPUT_KEY": "f-stream"}, "runtime", True),
            "ours, stream, in-process": ({"REDIS_INPUT_KEY": "metrics", "REDIS_OUTPUT_KEY": "f-inproc",
                                          "HANDLER_TIMEOUT": "0"}, "runtime", True),
            "ours, poll (INTERVAL=5)": ({"REDIS_INPUT_KEY": "plain", "REDIS_OUTPUT_KEY": "f-poll", "INTERVAL": "5"},
                                        "runtime", True),
            "baseline (reference, INTERVAL=5)": ({"REDIS_INPUT_KEY": "plain", "REDIS_OUTPUT_KEY": "f-base",
                                                  "INTERVAL": "5"}, "bench.baseline", False),
            "floor: a bare relay, no handler": ({"REDIS_INPUT_KEY": "metrics", "REDIS_OUTPUT_KEY": "f-relay"},
                                                "bench.relay", True),
        }
        processes = [spawn(module, {**base, **env}) for env, module, _ in consumers.values()]
        try:
            time.sleep(3)  # let every consumer start
            publish_at(client, 1, 3)  # warm up: the stream exists and each consumer has found its mode
            time.sleep(6)
            # 0.1/s: the collector slower than the runtime polls, where the reference re-runs stale samples.
            for rate, seconds in ((1, 30), (10, 10), (0.1, 40)):
                watchers = {name: Watcher(server.port, env["REDIS_OUTPUT_KEY"], stream)
                            for name, (env, _, stream) in consumers.items()}
                for watcher in watchers.values():
                    watcher.start()
                published = publish_at(client, rate, seconds)
                time.sleep(6)  # one more polling period for the slow consumers
                for name, watcher in watchers.items():
                    watcher.finish()
                    latencies = [(watcher.seen[ts] - t) * 1000 for ts, t in published.items() if ts in watcher.seen]
                    stats = percentiles(latencies)
                    missed = sum(ts not in watcher.seen for ts in published)
                    duplicates = sum(n - 1 for ts, n in watcher.handled.items() if ts in published)
                    results[f"{name} @ {rate:g}/s"] = {**stats, "samples": len(published), "missed": missed,
                                                     "duplicates": duplicates}
                    rows.append([f"{rate:g}/s", name, *(f"{stats[k]:,.1f}" for k in ("p50", "p90", "p99", "max")),
                                 f"{missed}/{len(published)}", duplicates])
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
    print("Freshness: sample published -> output visible, ms")
    print(table(["rate", "consumer", "p50", "p90", "p99", "max", "missed", "duplicates"], rows))
    return results


def publish_at(client: redis.Redis, rate: float, seconds: float) -> dict[str, float]:
    """Publish fresh samples at `rate` per second, as the collector does; their publish times."""
    published = {}
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        sample = synthetic_samples(1, cpus=8)[0]
        payload = schema.encode_sample(sample)
        pipe = client.pipeline(transaction=True)
        pipe.xadd("metrics:stream", schema.sample_entry(payload))
        pipe.set("metrics", payload)
        pipe.set("plain", payload)
        published[sample["timestamp"]] = time.time()
        pipe.execute()
    return published


def throughput() -> dict:
    cases = [("trivial", TRIVIAL, 8, 10_000), ("usermodule.py, 8 CPUs", None, 8, 5_000),
             ("usermodule.py, 64 CPUs", None, 64, 2_000)]
    results, rows = {}, []
    with valkey() as server, tempfile.TemporaryDirectory() as tmp:
        client = redis.Redis(port=server.port, decode_responses=True)
        for label, source, cpus, count in cases:
            path = REPO / "usermodule.py"
            if source:
                path = Path(tmp, "trivial.py")
                path.write_text(source)
            samples = [schema.encode_sample(s) for s in synthetic_samples(count, cpus=cpus)]
            runs: dict[str, list[dict]] = {isolation: [] for isolation, _ in ISOLATIONS}
            for _ in range(ROUNDS):  # interleaved, so a busy spell on the machine hits both modes alike
                for isolation, timeout in ISOLATIONS:
                    runs[isolation].append(burst_run(client, server.connection_url, path, samples, timeout))
            rates = {}
            for isolation, _ in ISOLATIONS:
                result = best_of(runs[isolation])
                rates[isolation] = result["per_second"]
                results[f"{label} / {isolation}"] = result
                rows.append([label, isolation, f"{count:,}", f"{result['per_second']:,.0f}",
                             f"{result['per_second'] / 0.2:,.0f}x", result["missed"], result["duplicates"],
                             result["in_order"]])
            ratio = rates[ISOLATIONS[0][0]] / rates[ISOLATIONS[1][0]]
            results[f"{label} / worker vs in-process"] = {"ratio": ratio}
            rows.append([label, "worker / in-process", "", f"{ratio:.0%}", "", "", "", ""])
    print(f"Throughput: a burst handled as fast as it goes, best of {ROUNDS} per mode "
          "(baseline: 1 invocation per INTERVAL=5 s = 0.2/s)")
    print(table(["handler", "isolation", "burst", "invocations/s", "vs baseline", "missed", "duplicates",
                 "in order"], rows))
    return results


ISOLATIONS = (("worker (HANDLER_TIMEOUT=30)", "30"), ("in-process (HANDLER_TIMEOUT=0)", "0"))
ROUNDS = 3  # the best of three bursts per mode: on a shared machine one burst can draw a busy moment


def best_of(runs: list[dict]) -> dict:
    """The fastest of the runs; misses, duplicates and order over all of them."""
    best = max(runs, key=lambda r: r["per_second"])
    return {**best, "rates": [r["per_second"] for r in runs], "missed": sum(r["missed"] for r in runs),
            "duplicates": sum(r["duplicates"] for r in runs), "in_order": all(r["in_order"] for r in runs)}


def burst_run(client: redis.Redis, url: str, path: Path, samples: list[str], timeout: str) -> dict:
    """One runtime process handling a burst of `samples` from the start: its rate, misses, duplicates, order."""
    client.flushall()
    ids = burst(client, samples)
    process = spawn("runtime", {"REDIS_URL": url, "REDIS_OUTPUT_KEY": "t", "FUNCTION_PATH": str(path),
                                "START_FROM": "earliest", "HANDLER_TIMEOUT": timeout})
    try:
        deadline = time.monotonic() + 240
        while int(client.hget("t:status", "invocations") or 0) < len(samples) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(10)
    entries = client.xrange("t:stream")
    handled = [fields[schema.SAMPLE_ID_FIELD] for _, fields in entries]
    span = (schema.stream_id_millis(entries[-1][0]) - schema.stream_id_millis(entries[0][0])) / 1000
    rate = (len(entries) - 1) / span if span > 0 else float("inf")
    return {"samples": len(samples), "per_second": rate, "missed": len(set(ids) - set(handled)),
            "duplicates": len(handled) - len(set(handled)), "in_order": handled == ids}


def burst(client: redis.Redis, payloads: list[str]) -> list[str]:
    ids = []
    for start in range(0, len(payloads), 1000):
        pipe = client.pipeline(transaction=False)
        for payload in payloads[start:start + 1000]:
            pipe.xadd("metrics:stream", schema.sample_entry(payload))
        ids += pipe.execute()
    client.set("metrics", payloads[-1])
    return ids


IDLE_PERIOD_SECONDS = 5.0  # one sample per 5 s: the course's interval


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of a process and its children, to the nanosecond where Linux tells (schedstat).

    psutil's cpu_times() counts clock ticks of 10 ms: over a minute that is 0.017 % of a core per tick,
    too coarse for an idle process.
    """
    total = 0.0
    for member in (process, *process.children(recursive=True)):
        try:
            tasks = os.listdir(f"/proc/{member.pid}/task")
            total += sum(int(open(f"/proc/{member.pid}/task/{task}/schedstat").read().split()[0])
                         for task in tasks) / 1e9
        except (OSError, ValueError, IndexError):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def idle(seconds: float = 60.0) -> dict:
    """CPU of ours and of the baseline at one sample per 5 s: what the wake-ups between samples cost."""
    results, rows = {}, []
    with valkey() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        url = {"REDIS_URL": server.connection_url, "FUNCTION_PATH": str(REPO / "usermodule.py")}
        roles = {"ours, worker": ("runtime", {**url, "REDIS_OUTPUT_KEY": "o-worker"}),
                 "ours, in-process": ("runtime", {**url, "REDIS_OUTPUT_KEY": "o-in", "HANDLER_TIMEOUT": "0"}),
                 "baseline (INTERVAL=5)": ("bench.baseline", {**url, "REDIS_HOST": "127.0.0.1",
                                                              "REDIS_PORT": str(server.port),
                                                              "REDIS_INPUT_KEY": "metrics", "REDIS_OUTPUT_KEY": "o-base"})}
        processes = {name: spawn(module, env) for name, (module, env) in roles.items()}
        try:
            publish_at(client, 1 / IDLE_PERIOD_SECONDS, 10)  # start-up and first loads are not measured
            handles = {name: psutil.Process(p.pid) for name, p in processes.items()}
            before = {name: cpu_seconds(handle) for name, handle in handles.items()}
            started = time.monotonic()
            publish_at(client, 1 / IDLE_PERIOD_SECONDS, seconds)
            elapsed = time.monotonic() - started
            after = {name: cpu_seconds(handle) for name, handle in handles.items()}
        finally:
            for process in processes.values():
                process.terminate()
                process.wait(10)
    for name in roles:
        percent = 100 * (after[name] - before[name]) / elapsed
        results[name] = {"cpu_percent": percent, "seconds": elapsed}
        rows.append([name, f"{percent:.3f} %"])
    print(f"Idle: CPU % of one core over {elapsed:.0f} s at one sample per {IDLE_PERIOD_SECONDS:g} s")
    print(table(["consumer", "CPU"], rows))
    return results


def rate(per_second: float = 100.0, seconds: float = 75.0, measured: float = 15.0) -> dict:
    """The example function at `per_second` samples: lag once its one-minute windows are full (the last
    `measured` seconds), with the env stored with every commit and at most once a second (the default)."""
    results, rows = {}, []
    with valkey() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        for label, every in (("env with every commit (ENV_CHECKPOINT_SECONDS=0)", "0"),
                             ("env at most every 1 s (default)", "1")):
            client.flushall()
            process = spawn("runtime", {"REDIS_URL": server.connection_url, "REDIS_OUTPUT_KEY": "r",
                                        "FUNCTION_PATH": str(REPO / "usermodule.py"), "ENV_CHECKPOINT_SECONDS": every})
            watcher = Watcher(server.port, "r", stream=True)
            try:
                time.sleep(3)
                watcher.start()
                published = publish_at(client, per_second, seconds)
                time.sleep(3)
                watcher.finish()
            finally:
                process.terminate()
                process.wait(10)
            last = sorted(published.items(), key=lambda item: item[1])[-int(per_second * measured):]
            stats = percentiles([(watcher.seen[ts] - t) * 1000 for ts, t in last if ts in watcher.seen])
            missed = sum(ts not in watcher.seen for ts in published)
            results[label] = {**stats, "samples": len(published), "missed": missed}
            rows.append([label, *(f"{stats[k]:,.1f}" for k in ("p50", "p90", "p99", "max")), missed])
    print(f"Lag of usermodule.py at {per_second:g} samples/s, 8 CPUs, last {measured:g} s of {seconds:g} s, ms")
    print(table(["env", "p50", "p90", "p99", "max", "missed"], rows))
    return results


def main(argv: list[str]) -> int:
    which = argv[1:] or ["freshness", "throughput", "idle", "rate"]
    results = {}
    if "rate" in which:
        results["rate"] = rate()
    if "idle" in which:
        results["idle"] = idle()
    if "throughput" in which:
        results["throughput"] = throughput()
    if "freshness" in which:
        results["freshness"] = freshness()
    print(f"results: {save('runtime-' + '-'.join(which), results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
