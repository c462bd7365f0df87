"""Dashboard data path: load + window + downsample + chart specs for 1 min, 1 h and 24 h of 1 s samples.

Side by side with the baseline a naive dashboard would use: re-read and re-parse the whole stream on
every tick and draw every point. Run: python -m bench.dashboard
"""

from __future__ import annotations

import json
import sys

import pandas as pd
import redis

from app import charts, data
from bench.common import median_ms, save, synthetic_samples, table, timed, valkey
from runtime import schema
from runtime.config import RedisSettings

DAY = 86_400
WINDOWS = {"1 min": 60, "1 h": 3600, "24 h": DAY}


def fill(client: redis.Redis, samples: list[dict], keys: schema.Keys) -> None:
    for start in range(0, len(samples), 5000):
        pipe = client.pipeline(transaction=False)
        for sample in samples[start:start + 5000]:
            payload = schema.encode_sample(sample)
            pipe.xadd(keys.input_stream, schema.sample_entry(payload))
            pipe.xadd(keys.output_stream, {schema.SAMPLE_ID_FIELD: "", schema.TIMESTAMP: sample["timestamp"],
                                           schema.OUTPUT_FIELD: json.dumps(fake_output(sample))})
        pipe.execute()


def fake_output(sample: dict) -> dict:
    cpus = schema.cpu_fields(sample)
    return {"percent-network-egress": 50.0, "percent-memory-cache": 30.0,
            **{f"avg-util-cpu{schema.cpu_index(f)}-60sec": sample[f] for f in cpus}}


def build(samples: pd.DataFrame, outputs: pd.DataFrame, seconds: int) -> tuple[int, int]:
    """What one tick does for one window: (bytes of the specs, most points in one series)."""
    small = data.downsample(data.window(samples, seconds), seconds)
    outs = data.downsample(data.window(outputs, seconds), seconds)
    cpu = charts.cpu_frame(small, outs)
    specs = [charts.cpu_lines(cpu), charts.memory_chart(small),
             charts.line_chart(charts.tidy(small, {schema.CPU_FREQ: "f"}), "CPU frequency", "MHz"),
             charts.line_chart(charts.tidy(small, {schema.N_PIDS: "p"}), "Processes", "n"),
             charts.line_chart(charts.tidy(outs, charts.output_series(outs)), "Function outputs", "v")]
    size = sum(len(json.dumps(chart.to_dict())) for chart in specs)
    return size, max(len(small), len(outs))


def naive_tick(client: redis.Redis, keys: schema.Keys, seconds: int) -> tuple[int, int]:
    """Baseline: read everything again, draw every point."""
    samples, _ = schema.entries_to_frame(client.xrange(keys.input_stream))
    outputs, _ = data.output_rows(client.xrange(keys.output_stream))
    window = data.window(samples, seconds).select_dtypes("number").astype("float64")
    outs = data.window(outputs, seconds)
    cpu = charts.cpu_frame(window, outs)
    size = len(json.dumps(charts.cpu_lines(cpu).to_dict())) + len(json.dumps(charts.memory_chart(window).to_dict()))
    return size, len(window)


def main() -> int:
    keys = schema.Keys(output="bench-output")
    rows, results = [], {}
    with valkey() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        fill(client, synthetic_samples(DAY, cpus=8), keys)
        store = data.MetricsStore(RedisSettings(server.connection_url), keys)
        first_load = timed(store.snapshot, repeat=1)[0]
        tick = timed(store.snapshot, repeat=5)  # nothing new: what every later tick costs to read
        for label, seconds in WINDOWS.items():
            snap = store.snapshot()
            ours = timed(lambda: build(snap.samples, snap.outputs, seconds), repeat=5)
            size, points = build(snap.samples, snap.outputs, seconds)
            base = timed(lambda: naive_tick(client, keys, seconds), repeat=2)
            base_size, base_points = naive_tick(client, keys, seconds)
            per_tick = median_ms(tick) + median_ms(ours)
            results[label] = {"tick_ms": per_tick, "build_ms": median_ms(ours), "spec_bytes": size,
                              "points_per_series": points, "baseline_tick_ms": median_ms(base),
                              "baseline_spec_bytes": base_size, "baseline_points_per_series": base_points}
            rows.append([label, f"{per_tick:,.0f}", f"{median_ms(base):,.0f}", f"{median_ms(base) / per_tick:,.1f}x",
                         points, base_points, f"{size / 1024:,.0f} KiB", f"{base_size / 1024:,.0f} KiB"])
    results["first_load_s"] = first_load
    results["read_tick_ms"] = median_ms(tick)
    print(f"24 h of 1 s samples (86,400 entries, 8 CPUs); first full read into the shared store: {first_load:.1f} s")
    print(table(["window", "tick ms (ours)", "tick ms (re-read all)", "speed-up", "points/series (ours)",
                 "points/series (all)", "specs (ours)", "specs (2 charts, all)"], rows))
    print(f"results: {save('dashboard', results)}")
    return 0 if results["24 h"]["tick_ms"] < 1000 and results["24 h"]["points_per_series"] <= 2000 else 1


if __name__ == "__main__":
    sys.exit(main())
