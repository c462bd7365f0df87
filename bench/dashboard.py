"""Dashboard data path: first paint and live ticks for 1 min, 1 h and 24 h of 1 s samples, and 1,000 hosts.

Beside the baseline a naive dashboard would use: re-read and re-parse the whole stream on every tick.
Each "first paint" starts from a fresh store, as a new app process does: read, window, rates,
downsampling and every chart's spec. Run: python -m bench.dashboard
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime

import pandas as pd
import redis

from app import charts, data, hosts, render, views
from runtime.schema import EXTRA_FIELD
from app.history import StreamHistory
from bench.common import median_ms, save, synthetic_samples, table, timed, valkey
from runtime import schema
from runtime.config import RedisSettings
from runtime.rollup import Rollups

DAY = 86_400
WINDOWS = {"1 min": 60, "1 h": 3600, "24 h": DAY}


def extras(sample: dict, i: int) -> dict:
    """Extended metrics in the common contract's flat names (what our collector sends beside a sample)."""
    return {"load_avg-1": 1 + (i % 60) / 30, "load_avg-5": 1.2, "load_avg-15": 1.1,
            "swap_memory-percent": 3.0 + (i % 100) / 50, "cpu_times_percent-user": 20.0 + i % 10,
            "cpu_times_percent-system": 5.0, "cpu_times_percent-iowait": 1.0 + i % 3, "cpu_times_percent-steal": 0.0,
            "disk_io-sda-read_bytes": 10**9 + i * 40_000, "disk_io-sda-write_bytes": 10**9 + i * 90_000,
            "disk_io-sda-read_count": 10**6 + i * 4, "disk_io-sda-write_count": 10**6 + i * 9,
            "disk_usage-/-percent": 61.5, "disk_usage-/home-percent": 92.0,
            "sensors_temperatures-Package id 0": 45.0 + (i % 20) / 2}


def fake_output(sample: dict) -> dict:
    cpus = schema.cpu_fields(sample)
    return {"percent-network-egress": 50.0, "percent-memory-cache": 30.0,
            **{f"avg-util-cpu{schema.cpu_index(f)}-60sec": sample[f] for f in cpus}}


def entry_id(sample: dict) -> str:
    """The id the entry would have got had it been added when the sample was taken."""
    return f"{int(schema.parse_timestamp(sample[schema.TIMESTAMP]).timestamp() * 1000)}-*"


def fill(client: redis.Redis, samples: list[dict], keys: schema.Keys, tiers: bool = True, outputs: bool = True) -> None:
    """Input stream (sample + extra), output stream, and (as our collector writes them) the rollup tiers."""
    for start in range(0, len(samples), 5000):
        pipe = client.pipeline(transaction=False)
        for i, sample in enumerate(samples[start:start + 5000], start):
            payload = schema.encode_sample(sample)
            pipe.xadd(keys.input_stream, {schema.SAMPLE_FIELD: payload, EXTRA_FIELD: json.dumps(extras(sample, i))},
                      id=entry_id(sample))
            if outputs and keys.output:
                pipe.xadd(keys.output_stream, {schema.SAMPLE_ID_FIELD: "", schema.TIMESTAMP: sample["timestamp"],
                                               schema.OUTPUT_FIELD: json.dumps(fake_output(sample))},
                          id=entry_id(sample))
        pipe.set(keys.input, payload)
        pipe.execute()
    if tiers:
        write_tiers(client, keys, samples)


def write_tiers(client: redis.Redis, keys: schema.Keys, samples: list[dict]) -> None:
    """The tiers as the collector writes them live: its own Rollups, fed sample by sample."""
    rollups = Rollups()
    pipe = client.pipeline(transaction=False)
    for i, sample in enumerate(samples):
        for tier, fields in rollups.add(sample, extras(sample, i)):
            pipe.xadd(keys.rollup(tier), fields, id=entry_id(json.loads(fields[schema.SAMPLE_FIELD])))
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()


def paint(store: data.MetricsStore, seconds: int) -> tuple[int, int]:
    """One tick for one window: read, view, every chart's spec. (bytes of specs, most points in a series)."""
    snapshot = store.snapshot(seconds)
    view = views.build(snapshot)
    win = snapshot.window
    cpu = charts.cpu_frame(view.samples, view.outputs)
    specs = [charts.cpu_lines(cpu, win), charts.cpu_heatmap(cpu, win, view.bucket),
             charts.memory_chart(view.samples, win),
             charts.line_chart(charts.tidy(view.samples, {views.net("bytes_recv"): "in"}), win, "Network", "B/s"),
             charts.line_chart(charts.tidy(view.outputs, charts.output_series(view.outputs)), win, "Outputs", "v")]
    size = sum(map(spec_bytes, specs))
    return size, max(len(view.samples), len(view.outputs))


def spec_bytes(chart) -> int:
    """Bytes of the chart as the page sends it: the spec as JSON, its data as Arrow tables."""
    from streamlit.dataframe_util import convert_anything_to_arrow_bytes

    spec = render.spec(chart)
    datasets = spec.pop("datasets", {})
    return len(json.dumps(spec)) + sum(len(convert_anything_to_arrow_bytes(frame)) for frame in datasets.values())


def naive_tick(client: redis.Redis, keys: schema.Keys, seconds: int) -> int:
    """Baseline: read the whole stream again and parse every entry on every tick."""
    history = StreamHistory(keys.input_stream, data.entries.sample_row)
    frame, _, _ = data.entries.to_frame(client.xrange(keys.input_stream), history.parse)
    return len(frame)


def first_paint(url: str, keys: schema.Keys, seconds: int) -> tuple[float, float]:
    """Seconds to the first paint of a fresh store (best of 3), and until its background reads completed."""
    painted = min(timed(lambda: paint(data.MetricsStore(RedisSettings(url), keys), seconds), repeat=2))
    store = data.MetricsStore(RedisSettings(url), keys)
    started = time.perf_counter()
    paint(store, seconds)
    painted = min(painted, time.perf_counter() - started)
    while store.snapshot(seconds).loading:
        time.sleep(0.05)
    return painted, time.perf_counter() - started


def windows(server, keys: schema.Keys, raw_keys: schema.Keys, client: redis.Redis) -> tuple[list, dict]:
    rows, results = [], {}
    paint(data.MetricsStore(RedisSettings(server.connection_url), schema.Keys(input="warm-up")), 60)  # imports
    for label, seconds in WINDOWS.items():
        cold, cold_complete = first_paint(server.connection_url, keys, seconds)
        cold_raw, cold_raw_complete = first_paint(server.connection_url, raw_keys, seconds)
        store = data.MetricsStore(RedisSettings(server.connection_url), keys)
        paint(store, seconds)
        while store.snapshot(seconds).loading:  # live ticks: once the history is in, as a page open a while
            time.sleep(0.05)
        size, points = paint(store, seconds)
        tick = timed(lambda: paint(store, seconds), repeat=5)
        cpu_started = time.process_time()
        for _ in range(5):
            paint(store, seconds)
        tick_cpu_ms = (time.process_time() - cpu_started) / 5 * 1000  # this process's own work, without waits
        base = timed(lambda: naive_tick(client, keys, seconds), repeat=1)
        results[label] = {"first_paint_ms": cold * 1000, "complete_ms": cold_complete * 1000,
                          "first_paint_no_tiers_ms": cold_raw * 1000, "complete_no_tiers_ms": cold_raw_complete * 1000,
                          "tick_ms": median_ms(tick), "tick_cpu_ms": tick_cpu_ms, "points_per_series": points,
                          "spec_bytes": size,
                          "baseline_reread_ms": median_ms(base)}
        rows.append([label, f"{cold * 1000:,.0f} ({cold_complete * 1000:,.0f})",
                     f"{cold_raw * 1000:,.0f} ({cold_raw_complete * 1000:,.0f})",
                     f"{median_ms(tick):,.0f} ({tick_cpu_ms:,.0f})",
                     f"{median_ms(base):,.0f}", points, f"{size / 1024:,.0f} KiB"])
    return rows, results


def many_hosts(client: redis.Redis, count: int = 1000) -> float:
    """One tick of the all-hosts table: registry + one MGET + sort + page."""
    keys = schema.Keys(input="fleet")
    sample = schema.encode_sample(synthetic_samples(1, cpus=8)[0])
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        host = f"node-{i:04d}"
        pipe.hset(keys.hosts, host, datetime.now().isoformat(sep=" "))
        pipe.set(keys.for_host(host).input, sample)
    pipe.execute()

    def tick() -> None:
        registry, _ = hosts.registered_hosts(client, keys)
        overview = hosts.host_overview(client, keys, registry, data.server_now(client))
        hosts.sorted_page(overview, next(iter(hosts.SORTS)), 0)

    return median_ms(timed(tick, repeat=5))


def main() -> int:
    keys, raw_keys = schema.Keys(output="bench-output"), schema.Keys(input="course", output="course-output")
    with valkey() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        samples = synthetic_samples(DAY, cpus=8)
        fill(client, samples, keys)
        fill(client, samples, raw_keys, tiers=False, outputs=False)  # the course's collector: no tiers
        last = samples[-1][schema.TIMESTAMP]  # the collector went on publishing while the day was written:
        recent = [s for s in synthetic_samples(120, cpus=8) if s[schema.TIMESTAMP] > last]
        fill(client, recent, keys, tiers=False)
        fill(client, recent, raw_keys, tiers=False, outputs=False)
        rows, results = windows(server, keys, raw_keys, client)
        results["hosts_1000_tick_ms"] = many_hosts(client)
    print("24 h of 1 s samples (86,400 entries, 8 CPUs, extras); first paint = a fresh app process's first tick")
    print(table(["window", "first paint ms (complete)", "same, no tiers", "live tick ms (CPU)", "re-read all ms",
                 "points/series", "specs"], rows))
    print(f"all-hosts table, 1,000 hosts, one tick: {results['hosts_1000_tick_ms']:,.0f} ms")
    print(f"results: {save('dashboard', results)}")
    day = results["24 h"]
    ok = day["first_paint_ms"] <= 1000 and day["tick_ms"] <= 300 and results["hosts_1000_tick_ms"] <= 1000
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
