"""Redis memory per day of retained history, samples and outputs, at 1 s and 5 s intervals.

    python -m bench.storage

Fills a stream with 10,000 samples (8 CPUs) and the example function's outputs, reads MEMORY USAGE
of each stream and scales it to a day. Baseline: the course's two plain keys, which keep no history.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import redis

import usermodule
from bench.common import report, synthetic_samples, valkey
from runtime import schema

COUNT = 10_000


def main() -> int:
    keys = schema.Keys(output="out")
    samples = synthetic_samples(COUNT, cpus=8)
    context = SimpleNamespace(env={})
    with valkey() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        for start in range(0, COUNT, 1000):
            pipe = client.pipeline(transaction=False)
            for sample in samples[start:start + 1000]:
                pipe.xadd(keys.input_stream, schema.sample_entry(schema.encode_sample(sample)))
                output = json.dumps(usermodule.handler(sample, context))
                pipe.xadd(keys.output_stream, {schema.SAMPLE_ID_FIELD: "0-0", schema.TIMESTAMP: sample["timestamp"],
                                               schema.OUTPUT_FIELD: output})
            pipe.execute()
        client.set(keys.input, schema.encode_sample(samples[-1]))
        client.set(keys.output, output)
        per_entry = {name: client.memory_usage(key, samples=0) / COUNT
                     for name, key in (("samples", keys.input_stream), ("outputs", keys.output_stream))}
        plain = client.memory_usage(keys.input, samples=0) + client.memory_usage(keys.output, samples=0)
    results, rows = {"bytes_per_entry": per_entry, "plain_keys_bytes": plain}, []
    for interval in (1, 5):
        per_day = 86_400 // interval
        mib = {name: size * per_day / 2**20 for name, size in per_entry.items()}
        results[f"per_day_at_{interval}s_mib"] = mib
        rows.append([f"{interval} s", f"{per_day:,}", f"{mib['samples']:,.1f} MiB", f"{mib['outputs']:,.1f} MiB",
                     f"{sum(mib.values()):,.1f} MiB", f"{plain / 1024:.1f} KiB (no history)"])
    report("storage", f"Redis memory per day of history (8 CPUs; {per_entry['samples']:.0f} B per sample, "
           f"{per_entry['outputs']:.0f} B per output entry)",
           ["interval", "entries/day", "samples", "outputs", "total", "course keys only"], rows, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
