"""Many hosts on one runtime process tree: a burst of registrations, then every host at 1 sample/s.

    python -m bench.hosts [hosts] [seconds] [burst] [env_checkpoint_seconds]     (defaults: 1000 60 300, unset)

Phase 1: `burst` hosts register at once (one sample each, then 1/s): seconds until every one of them
has an output, and the tree's peak memory meanwhile. Phase 2: the rest join, `hosts` hosts publish one
sample per second each for `seconds`; lag is each output's stream id minus its sample's stream id
(both the server's clock), over the last `seconds` - 15 s. Memory: PSS of the runtime and its worker
(shared pages counted once) and RSS (counted in each process), sampled every second; per host, above
the tree's idle base with no host.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime

import psutil
import redis

from bench.common import report, synthetic_samples, valkey
from bench.runtime import REPO, percentiles, spawn
from runtime import schema

BASE = schema.Keys(input="metrics", output="out")
WARM_UP_SECONDS = 15.0
MIB = 1024 * 1024


class Memory(threading.Thread):
    """The peak PSS and RSS of a process tree, sampled every second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak_pss = self.peak_rss = 0
        self.stop = threading.Event()

    def now(self) -> tuple[int, int]:
        pss = rss = 0
        for member in (self.process, *self.process.children(recursive=True)):
            try:
                info = member.memory_full_info()
            except psutil.Error:
                continue
            pss, rss = pss + info.pss, rss + info.rss
        return pss, rss

    def reset(self) -> None:
        self.peak_pss = self.peak_rss = 0

    def run(self) -> None:
        while not self.stop.wait(1.0):
            pss, rss = self.now()
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)


class Publisher(threading.Thread):
    """One sample per second for every host in `hosts` (a list that may grow), as collectors send them."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.hosts: list[str] = []
        self.template = synthetic_samples(1, cpus=8)[0]
        self.stop = threading.Event()
        self.late = 0  # rounds that took longer than a second to send

    def publish(self, hosts: list[str]) -> None:
        stamp = schema.format_timestamp(datetime.now())
        payload = schema.encode_sample(dict(self.template, timestamp=stamp))
        pipe = self.client.pipeline(transaction=False)
        for host in hosts:
            keys = BASE.for_host(host)
            pipe.xadd(keys.input_stream, schema.sample_entry(payload))
            pipe.set(keys.input, payload)
            pipe.hset(BASE.hosts, host, stamp)
        pipe.execute()

    def run(self) -> None:
        started, tick = time.monotonic(), 0
        while not self.stop.is_set():
            tick += 1
            self.publish(list(self.hosts))
            delay = started + tick - time.monotonic()
            self.late += delay < 0
            self.stop.wait(max(0.0, delay))


def with_outputs(client: redis.Redis, hosts: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        pipe.exists(BASE.for_host(host).output_stream)
    return sum(pipe.execute())


def lags(client: redis.Redis, hosts: list[str], since_ms: int) -> tuple[list[float], int]:
    """Lag of every output stored since `since_ms`, and how many hosts had one."""
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        pipe.xrange(BASE.for_host(host).output_stream, min=str(since_ms))
    values, reporting = [], 0
    for entries in pipe.execute():
        reporting += bool(entries)
        for entry_id, fields in entries:
            values.append((schema.stream_id_millis(entry_id) - schema.stream_id_millis(fields["sample_id"])) / 1000)
    return values, reporting


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def burst(client: redis.Redis, publisher: Publisher, memory: Memory, hosts: list[str]) -> dict:
    """Register `hosts` at once; seconds until each has an output, and the peak memory meanwhile."""
    memory.reset()
    started = time.monotonic()
    publisher.hosts.extend(hosts)
    while with_outputs(client, hosts) < len(hosts) and time.monotonic() - started < 300:
        time.sleep(0.5)
    return {"hosts": len(hosts), "all_outputs_s": round(time.monotonic() - started, 1),
            "with_outputs": with_outputs(client, hosts), "peak_pss_mib": round(memory.peak_pss / MIB, 1),
            "peak_rss_mib": round(memory.peak_rss / MIB, 1)}


def main(argv: list[str]) -> int:
    count = int(argv[1]) if len(argv) > 1 else 1000
    seconds = float(argv[2]) if len(argv) > 2 else 60.0
    burst_count = min(count, int(argv[3]) if len(argv) > 3 else 300)
    env_seconds = argv[4] if len(argv) > 4 else ""  # unset: the runtime's own default for hosts
    started_load = psutil.getloadavg()[0]
    hosts = [f"node-{i:04d}" for i in range(count)]
    with valkey() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        runtime = spawn("runtime", {"REDIS_URL": server.connection_url, "REDIS_OUTPUT_KEY": "out",
                                    "FUNCTION_PATH": str(REPO / "usermodule.py"), "START_FROM": "earliest",
                                    **({"ENV_CHECKPOINT_SECONDS": env_seconds} if env_seconds else {})})
        memory, publisher = Memory(runtime.pid), Publisher(client)
        try:
            time.sleep(8)  # function loaded in both workers, idle
            base_pss, base_rss = memory.now()
            memory.start()
            publisher.start()
            first = burst(client, publisher, memory, hosts[:burst_count])
            rest = burst(client, publisher, memory, hosts[burst_count:]) if count > burst_count else first
            memory.reset()
            time.sleep(WARM_UP_SECONDS)
            since = server_ms(client)
            time.sleep(max(0.0, seconds - WARM_UP_SECONDS))
            values, reporting = lags(client, hosts, since)
            steady = {"peak_pss_mib": round(memory.peak_pss / MIB, 1), "peak_rss_mib": round(memory.peak_rss / MIB, 1)}
            cpu, load = psutil.cpu_percent(interval=1.0), psutil.getloadavg()[0]
        finally:
            publisher.stop.set()
            memory.stop.set()
            runtime.terminate()
            runtime.wait(60)
    lag = {name: round(value * 1000, 1) for name, value in percentiles(values).items()}
    per_host_kib = (memory.peak_pss - base_pss) / max(count, 1) / 1024
    results = {"hosts": count, "seconds": seconds, "burst": first, "join_rest": rest, "steady": steady,
               "base_pss_mib": round(base_pss / MIB, 1), "base_rss_mib": round(base_rss / MIB, 1),
               "per_host_kib": round(per_host_kib, 1), "lag_ms": lag, "outputs": len(values),
               "hosts_with_outputs": reporting, "publisher_late_rounds": publisher.late, "machine_cpu_percent": cpu,
               "load_average_1m": load, "load_average_1m_at_start": started_load,
               "env_checkpoint_seconds": float(env_seconds) if env_seconds else "default"}
    rows = [[f"{burst_count} hosts registered at once", f"all outputs after {first['all_outputs_s']} s",
             f"peak {first['peak_pss_mib']} MiB PSS / {first['peak_rss_mib']} MiB RSS"],
            [f"{count} hosts at 1 sample/s", f"{reporting}/{count} hosts with outputs; lag p50 {lag['p50']} ms, "
             f"p99 {lag['p99']} ms, max {lag['max']} ms",
             f"peak {steady['peak_pss_mib']} MiB PSS / {steady['peak_rss_mib']} MiB RSS; "
             f"{per_host_kib:.0f} KiB per host above the idle {base_pss / MIB:.0f} MiB"]]
    report(f"hosts-env{env_seconds or 'default'}s", f"{count} hosts on one runtime process tree (one reader, one "
           f"worker), ENV_CHECKPOINT_SECONDS={env_seconds or 'unset'}, load average {started_load:.1f} at the start, "
           f"{load:.1f} at the end on {psutil.cpu_count()} cores",
           ["phase", "outputs and lag", "memory (runtime + workers)"], rows, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
