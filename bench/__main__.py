"""Every benchmark in one run, then one table against DESIGN §7's targets: `python -m bench`.

The soak (an hour) and the many-hosts run are separate: `python -m bench.soak`, `python -m bench.hosts`.
"""

from __future__ import annotations

import json
import sys

from bench import dashboard, overhead, runtime, storage
from bench.common import RESULTS, report


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def main() -> int:
    runtime.main(["runtime", "freshness", "throughput", "idle"])  # saved as runtime-freshness-throughput-idle
    overhead.main(["overhead", "60"])
    storage.main()
    dashboard.main()
    run, cost, size, dash = load("runtime-freshness-throughput-idle"), load("overhead"), load("storage"), load("dashboard")
    fresh, burst, sparse = run["freshness"], run["throughput"], run["idle"]
    stream, base = fresh["ours, stream @ 1/s"], fresh["baseline (reference, INTERVAL=5) @ 1/s"]
    floor = fresh["floor: a bare relay, no handler @ 1/s"]
    trivial = burst["trivial / worker (HANDLER_TIMEOUT=30)"]
    inproc = burst["trivial / in-process (HANDLER_TIMEOUT=0)"]
    idle, collector = cost["runtime, idle"], cost["collector, INTERVAL=1"]
    day = dash["24 h"]
    rows = [
        ["freshness p50 / p99, 1 sample/s", "≤ 1 / ≤ 5 ms", f"{stream['p50']:.1f} / {stream['p99']:.1f} ms "
         f"(a bare relay: {floor['p50']:.1f} / {floor['p99']:.1f} ms)",
         f"{base['p50']:,.0f} / {base['p99']:,.0f} ms, {base['missed']}/{base['samples']} missed",
         f"{base['p50'] / stream['p50']:,.0f}x", _met(stream["p50"] <= 1 and stream["p99"] <= 5)],
        ["invocations/s, trivial handler", "≥ 5,000", f"{trivial['per_second']:,.0f} (in-process {inproc['per_second']:,.0f})",
         "0.2", f"{trivial['per_second'] / 0.2:,.0f}x", _met(trivial["per_second"] >= 5000)],
        ["burst of 10,000: duplicates / missed", "0 / 0", f"{trivial['duplicates']} / {trivial['missed']}",
         f"{fresh['baseline (reference, INTERVAL=5) @ 0.1/s']['duplicates']} re-runs of 4 slow samples", "",
         _met(trivial["duplicates"] == trivial["missed"] == 0)],
        ["runtime idle CPU / memory", "≈ 0 % / ≤ 60 MB", f"{idle['cpu_percent']:.2f} % / {idle['pss_mb']:.0f} MB",
         f"{cost['baseline, 1 sample/s (INTERVAL=5)']['cpu_percent']:.2f} %", "",
         _met(idle["cpu_percent"] < 0.5 and idle["pss_mb"] <= 60)],
        ["runtime CPU at one sample per 5 s", "≤ 0.05 %", f"{sparse['ours, worker']['cpu_percent']:.3f} % "
         f"(in-process {sparse['ours, in-process']['cpu_percent']:.3f} %)",
         f"{sparse['baseline (INTERVAL=5)']['cpu_percent']:.3f} %", "", _met(sparse["ours, worker"]["cpu_percent"] <= 0.05)],
        ["collector at 1 s CPU / memory", "≤ 1 % / ≤ 50 MB",
         f"{collector['cpu_percent']:.2f} % / {collector['pss_mb']:.0f} MB", "", "",
         _met(collector["cpu_percent"] <= 1 and collector["pss_mb"] <= 50)],
        ["dashboard first paint, 24 h of 1 s samples", "≤ 1 s", f"{day['first_paint_ms']:,.0f} ms",
         f"{day['baseline_reread_ms']:,.0f} ms re-reading the stream",
         f"{day['baseline_reread_ms'] / day['first_paint_ms']:,.0f}x", _met(day["first_paint_ms"] <= 1000)],
        ["dashboard live tick, 24 h of 1 s samples", "≤ 300 ms, ≤ 2,000 points", f"{day['tick_ms']:,.0f} ms, "
         f"{day['points_per_series']:,} points", f"{day['baseline_reread_ms']:,.0f} ms, 86,400 points",
         f"{day['baseline_reread_ms'] / day['tick_ms']:,.0f}x", _met(day["tick_ms"] <= 300 and day["points_per_series"] <= 2000)],
        ["Redis memory per day, 1 s / 5 s", "", f"{sum(size['per_day_at_1s_mib'].values()):,.0f} / "
         f"{sum(size['per_day_at_5s_mib'].values()):,.0f} MiB", "no history", "", ""],
    ]
    report("summary", "DESIGN §7 targets, from this run", ["figure", "target", "ours", "baseline", "ratio", "met"],
           rows, {"rows": rows})
    return 0


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


if __name__ == "__main__":
    sys.exit(main())
