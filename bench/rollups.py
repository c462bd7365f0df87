"""A 24 h window from the 1 min rollup tier vs from the raw stream, 1 s samples with extras.

    python -m bench.rollups

Both are what a reader does on its first paint: read the entries, parse them into a typed frame, and
bring it to one row per minute (the raw stream needs a resample; the tier already is). The tier is
built by the collector's own Rollups from the same samples, as the collector writes it live.
"""

from __future__ import annotations

import sys
import time

import redis

from bench.common import median_ms, report, synthetic_samples, timed, valkey
from runtime import schema
from runtime.rollup import Rollups

DAY = 86_400
EXTRA = schema.build_extra(load_avg=(0.5, 0.4, 0.3), swap={"total": 2**31, "used": 2**20, "free": 2**31 - 2**20,
                                                           "percent": 0.1},
                           cpu_times={"user": 10.0, "system": 3.0, "iowait": 0.5, "steal": 0.0, "idle": 86.5},
                           disk_io={"nvme0n1": {"read_bytes": 10**9, "write_bytes": 10**9, "read_count": 10**6,
                                                "write_count": 10**6}},
                           disk_usage={"/": {"total": 10**12, "used": 4 * 10**11, "free": 6 * 10**11, "percent": 40.0}})


def fill(client: redis.Redis, keys: schema.Keys, count: int) -> None:
    """A day of samples in the raw stream and its 1 min and 10 s tiers, as the collector would write them."""
    rollups = Rollups()
    extra_json = schema.encode_extra(EXTRA)
    samples = synthetic_samples(count, cpus=8)
    for start in range(0, count, 5000):
        pipe = client.pipeline(transaction=False)
        for sample in samples[start:start + 5000]:
            pipe.xadd(keys.input_stream, schema.sample_entry(schema.encode_sample(sample), extra_json))
            for tier, fields in rollups.add(sample, EXTRA):
                pipe.xadd(keys.rollup(tier), fields)
        pipe.execute()


def from_raw(client: redis.Redis, keys: schema.Keys) -> int:
    frame, _ = schema.entries_to_frame(client.xrange(keys.input_stream))
    return len(frame.drop(columns=["entry_id"]).resample("60s").mean())


def from_tier(client: redis.Redis, keys: schema.Keys) -> int:
    frame, _ = schema.tier_to_frame(client.xrange(keys.rollup("1m")))
    return len(frame)


def main(argv: list[str] | None = None) -> int:
    keys = schema.Keys()
    with valkey() as server:
        client = redis.Redis(port=server.port)
        started = time.perf_counter()
        fill(client, keys, DAY)
        filled = time.perf_counter() - started
        raw_ms = median_ms(timed(lambda: from_raw(client, keys), repeat=3))
        tier_ms = median_ms(timed(lambda: from_tier(client, keys), repeat=5))
        sizes = {name: client.memory_usage(key) for name, key in
                 (("raw", keys.input_stream), ("1m", keys.rollup("1m")), ("10s", keys.rollup("10s")))}
        rows = [["raw stream, resampled to 1 min", f"{client.xlen(keys.input_stream):,}", f"{sizes['raw'] / 2**20:.1f} MB",
                 f"{raw_ms:,.0f} ms"],
                ["1 min tier", f"{client.xlen(keys.rollup('1m')):,}", f"{sizes['1m'] / 2**20:.2f} MB", f"{tier_ms:,.0f} ms"]]
        results = {"raw_ms": raw_ms, "tier_1m_ms": tier_ms, "speedup": raw_ms / tier_ms, "fill_seconds": filled,
                   "bytes": sizes, "entries": {"raw": client.xlen(keys.input_stream),
                                               "1m": client.xlen(keys.rollup("1m")),
                                               "10s": client.xlen(keys.rollup("10s"))}}
    report("rollups", f"A 24 h window of 1 s samples (8 CPUs, extras), read and brought to 1 min: "
                      f"{raw_ms / tier_ms:,.0f}x faster from the tier",
           ["source", "entries", "memory in Redis", "read + frame (median)"], rows, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
