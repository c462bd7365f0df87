"""Soak: an hour at 100 samples/s with the dashboard open in a browser; memory and lag must stay flat.

    python -m bench.soak [seconds]      # default 3600; not part of CI

Runs a Valkey server, the runtime (worker isolation, usermodule.py, 8 CPUs per sample), the
dashboard (`streamlit run app` against that server) with a headless Chromium page on it, and a
publisher at 100 samples/s. Every minute it records each process's memory (PSS, children included),
Redis's used memory, and the runtime's lag. Retention is 10 minutes, so Redis memory must plateau.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import psutil
import redis

from bench.common import report, synthetic_samples, valkey
from bench.runtime import REPO, spawn
from runtime import schema

RATE = 100
RETENTION = 600


def pss(process: psutil.Process) -> float:
    family = [process, *process.children(recursive=True)]
    return sum(p.memory_full_info().pss for p in family if p.is_running()) / 2**20


def publisher(client: redis.Redis, stop: threading.Event, counter: list[int]) -> None:
    started, sent = time.monotonic(), 0
    template = synthetic_samples(1, cpus=8)[0]
    while not stop.is_set():
        due = int((time.monotonic() - started) * RATE)
        if due <= sent:
            time.sleep(0.005)
            continue
        pipe = client.pipeline(transaction=True)
        minid = int((time.time() - RETENTION) * 1000)
        for _ in range(due - sent):
            sample = dict(template, timestamp=schema.format_timestamp(__import__("datetime").datetime.now()))
            payload = schema.encode_sample(sample)
            pipe.xadd("metrics:stream", schema.sample_entry(payload), minid=minid, approximate=True)
        pipe.set("metrics", payload)
        pipe.execute()
        sent = due
        counter[0] = sent


def browse(url: str, stop: threading.Event) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(url)
        while not stop.wait(5):
            page.title()  # keep the page alive; the app pushes updates every 2 s
        browser.close()


def main(argv: list[str]) -> int:
    seconds = float(argv[1]) if len(argv) > 1 else 3600.0
    rows, samples = [], []
    with valkey() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        env = {"REDIS_URL": server.connection_url, "REDIS_OUTPUT_KEY": "soak", "RETENTION_SECONDS": str(RETENTION),
               "FUNCTION_PATH": str(REPO / "usermodule.py")}
        runtime = spawn("runtime", env)
        dashboard = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app", "--server.headless", "true",
                                      "--server.port", "8597"], cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env={**__import__("os").environ, **env})
        stop, counter = threading.Event(), [0]
        threads = [threading.Thread(target=publisher, args=(client, stop, counter), daemon=True),
                   threading.Thread(target=browse, args=("http://127.0.0.1:8597", stop), daemon=True)]
        time.sleep(5)
        for thread in threads:
            thread.start()
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds:
                time.sleep(min(60, seconds / 10))
                status = client.hgetall("soak:status")
                point = {"minute": round((time.monotonic() - started) / 60, 1),
                         "runtime_mb": pss(psutil.Process(runtime.pid)),
                         "dashboard_mb": pss(psutil.Process(dashboard.pid)),
                         "redis_mb": client.info("memory")["used_memory"] / 2**20,
                         "lag_ms": float(status.get("lag_seconds", "nan")) * 1000,
                         "published": counter[0], "invocations": int(status.get("invocations", 0))}
                samples.append(point)
                print(point, flush=True)
        finally:
            stop.set()
            runtime.terminate()
            dashboard.terminate()
            runtime.wait(20)
            dashboard.wait(20)
    warm = [p for p in samples if p["minute"] >= min(10, seconds / 120)] or samples
    for key in ("runtime_mb", "dashboard_mb", "redis_mb", "lag_ms"):
        first, last = warm[0][key], warm[-1][key]
        peak = max(p[key] for p in warm)
        growth = (last - first) / first * 100 if first else float("nan")
        rows.append([key, f"{first:,.1f}", f"{last:,.1f}", f"{peak:,.1f}", f"{growth:+.1f} %"])
    report("soak", f"Soak: {seconds / 60:.0f} min at {RATE} samples/s, dashboard open, retention {RETENTION} s",
           ["figure", "after warm-up", "at the end", "peak", "change"], rows,
           {"seconds": seconds, "rate": RATE, "points": samples})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
