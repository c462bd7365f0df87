"""Many hosts: 100 simulated hosts at 1 sample/s each into one runtime; no host's lag may grow.

    python -m bench.hosts [hosts] [seconds]

Samples are published per host as collectors with HOST_ID do (metrics:<host> + the registry);
every 10 s the lag of each host's latest output (sample time -> output stored) is read from its
status. Baseline: the lag of the first 10 s, against which the last 10 s are compared.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime

import redis

from bench.common import report, synthetic_samples, valkey
from bench.runtime import REPO, spawn
from runtime import schema


def main(argv: list[str]) -> int:
    count = int(argv[1]) if len(argv) > 1 else 100
    seconds = float(argv[2]) if len(argv) > 2 else 90.0
    hosts = [f"node-{i:03d}" for i in range(count)]
    base = schema.Keys(input="metrics", output="out")
    template = synthetic_samples(1, cpus=8)[0]
    with valkey() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        client.hset(base.hosts, mapping={host: datetime.now().isoformat(sep=" ") for host in hosts})
        runtime = spawn("runtime", {"REDIS_URL": server.connection_url, "REDIS_OUTPUT_KEY": "out",
                                    "FUNCTION_PATH": str(REPO / "usermodule.py")})
        lags: dict[float, list[float]] = {}
        try:
            started = time.monotonic()
            tick = 0
            while time.monotonic() - started < seconds:
                time.sleep(max(0.0, started + tick - time.monotonic()))
                pipe = client.pipeline(transaction=False)
                for host in hosts:  # one sample per host per second
                    keys = base.for_host(host)
                    payload = schema.encode_sample(dict(template, timestamp=schema.format_timestamp(datetime.now())))
                    pipe.xadd(keys.input_stream, schema.sample_entry(payload))
                    pipe.set(keys.input, payload)
                pipe.execute()
                tick += 1
                if tick % 10 == 0:
                    pipe = client.pipeline(transaction=False)
                    for host in hosts:
                        pipe.hget(base.for_host(host).status, "lag_seconds")
                    lags[tick] = [float(v) for v in pipe.execute() if v is not None]
        finally:
            runtime.terminate()
            runtime.wait(60)
    rows, results = [], {}
    for tick, values in lags.items():
        if values:
            results[tick] = {"hosts_reporting": len(values), "p50_ms": statistics.median(values) * 1000,
                             "max_ms": max(values) * 1000}
            rows.append([f"{tick} s", f"{len(values)}/{count}", f"{statistics.median(values) * 1000:,.1f}",
                         f"{max(values) * 1000:,.1f}"])
    report("hosts", f"{count} hosts at 1 sample/s each, one runtime (a worker per host)",
           ["after", "hosts with outputs", "lag p50 ms", "lag max ms"], rows,
           {"hosts": count, "seconds": seconds, "lag": results})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
