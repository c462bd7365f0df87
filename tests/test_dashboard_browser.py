"""End to end: `streamlit run app` as a user would, looked at in a real headless Chromium."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import REPO_DIR, free_port, require_program

ARTIFACTS = REPO_DIR / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def dashboard(tmp_path):
    """The README's main command in a scratch data directory; stopped with SIGTERM at the end."""
    require_program("chromium", "chromium")  # skipped without it, unless CI is set
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(DATA_DIR=str(tmp_path / "data"))
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app", "--server.headless", "true", "--server.port", str(port)],
        cwd=REPO_DIR, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "streamlit.log", "w"))
    yield f"http://127.0.0.1:{port}", started, process
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    pidfile = tmp_path / "data" / "valkey" / "valkey.pid"
    assert not pidfile.exists(), "the embedded Valkey server outlived the app"


def invocations(page) -> str:
    metric = page.locator('[data-testid="stMetric"]', has_text="Invocations")
    return metric.locator('[data-testid="stMetricValue"]').inner_text()


def test_live_charts_appear_within_15_s_and_update(dashboard):
    url, started, process = dashboard
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        while True:  # the server takes a moment to listen
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                assert process.poll() is None, "streamlit exited"
                assert time.monotonic() - started < 15, "the app did not answer within 15 s"
                time.sleep(0.2)
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('.vega-embed').length >= 9",
                               timeout=max(1000, (15 - (time.monotonic() - started)) * 1000))
        ready_after = time.monotonic() - started
        page.wait_for_selector('[data-testid="stMetric"]:has-text("Invocations")', timeout=10_000)
        first = invocations(page)
        page.wait_for_function(
            f"""() => [...document.querySelectorAll('[data-testid="stMetric"]')]
                .some(m => m.innerText.includes('Invocations') && !m.innerText.includes('{first}'))""",
            timeout=15_000)
        time.sleep(1)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert page.locator('[data-testid="stException"]').count() == 0
        alerts = page.locator('[data-testid="stAlert"]').all_inner_texts()
        assert not any("Cannot reach" in a or "Runtime not running" in a for a in alerts), alerts
        assert page.locator(".vega-embed").count() >= 9  # host, network, extras and the function's outputs
        browser.close()
    assert ready_after < 15, f"charts drew after {ready_after:.1f} s"


def test_the_host_picker_lists_three_hosts(valkey, client, tmp_path, processes):
    """A configured Redis with three collectors publishing per host: the picker offers all three."""
    require_program("chromium", "chromium")
    from datetime import datetime, timedelta

    from runtime import schema
    from runtime.collector import Publisher
    from runtime.config import RedisSettings, connect
    from tests.conftest import make_samples

    for host in ("alpha", "beta", "gamma"):
        publisher = Publisher(connect(RedisSettings(valkey.connection_url), "test"), schema.Keys(), 3600, 100, host)
        for sample in make_samples(20, start=datetime.now() - timedelta(seconds=20)):
            publisher.publish(sample)
    url = start_configured_app(valkey, tmp_path, processes)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        page.goto(url)
        page.wait_for_selector('[data-testid="stSidebar"] [data-testid="stSelectbox"]', timeout=30_000)
        page.wait_for_function("document.querySelectorAll('.vega-embed').length >= 4",
                               timeout=30_000)
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').click()
        options = page.locator('[role="option"]').all_inner_texts()
        assert options == ["alpha", "beta", "gamma"], options
        page.keyboard.press("Escape")
        page.wait_for_selector('[data-testid="stDataFrame"]', timeout=15_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard-hosts.png"), full_page=True)
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()


# --- a configured Redis with a day's worth of features: extras, a gap, errors, top processes ------------

def seed(client, cores=4):
    """Two hours at 5 s on `cores` CPUs with extras, a 200 s gap 5 minutes ago, outputs, errors, status."""
    from bench.common import synthetic_samples
    from bench.dashboard import fill
    from runtime import schema, status

    samples = synthetic_samples(1440, cpus=cores, step_seconds=5)
    del samples[-100:-60]  # the collector was away for 200 s
    keys = schema.Keys(output="out")
    fill(client, samples, keys)
    now = status.now_text()
    error = {"fault": "handler_error", "message": "ZeroDivisionError: division by zero", "sample_id": "",
             "sample_timestamp": samples[-20]["timestamp"], "time": now, "traceback": "Traceback ...", "output": ""}
    client.xadd(keys.errors, error)
    client.hset(keys.status, mapping={status.STATE: "running", status.MODE: "stream", status.HEARTBEAT: now,
                                      status.STARTED: now, status.PID: "4242", status.INVOCATIONS: "1400",
                                      status.ERRORS: "1", status.FUNCTION_VERSION: "v1 2026-11-30",
                                      status.LAST_ERROR: json.dumps(error)})
    top = [{"pid": 100 + i, "name": f"proc-{i}", "cpu_percent": 50.0 - i, "memory_percent": 1.0 + i,
            "rss": (i + 1) * 10**8} for i in range(10)]
    client.set("metrics:top", json.dumps({"timestamp": samples[-1]["timestamp"], "by_cpu": top, "by_memory": top}))
    return samples


def start_configured_app(valkey, tmp_path, processes) -> str:
    """`streamlit run app` reading the test's Valkey (output key `out`); its URL once it answers."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": valkey.connection_url, "REDIS_OUTPUT_KEY": "out", "DASHBOARD_REFRESH": "2"}
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app", "--server.headless", "true", "--server.port", str(port)],
        cwd=REPO_DIR, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "streamlit.log", "w")))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline, "the app did not answer within 30 s"
            time.sleep(0.2)
    ARTIFACTS.mkdir(exist_ok=True)
    return url


@pytest.fixture
def seeded_app(valkey, client, tmp_path, processes):
    samples = seed(client)
    return start_configured_app(valkey, tmp_path, processes), samples


@contextmanager
def browser_page(url, width=1400, scheme="light"):
    """A page of the app in headless Chromium, with the browser console's messages collected."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": width, "height": 3400}, color_scheme=scheme,
                                      accept_downloads=True)
        page = context.new_page()
        console = []
        page.on("console", lambda message: console.append((message.type, message.text)))
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('.vega-embed').length >= 8", timeout=30_000)
        page.wait_for_timeout(1500)  # let every chart finish drawing
        try:
            yield page, console
        finally:
            browser.close()


def vega_warnings(console):
    return [text for kind, text in console if kind in ("warning", "error") and ("WARN" in text or "Vega" in text)]


def misplaced_titles(page) -> list[str]:
    """Chart titles drawn outside their chart's box (an SVG clips what lies outside it), cut short with an
    ellipsis, or over another element of the page (the one above)."""
    return page.evaluate("""(() => {
        const inside = (a, b) => a.top >= b.top && a.bottom <= b.bottom && a.left >= b.left && a.right <= b.right;
        const overlap = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
        const elements = [...document.querySelectorAll('[data-testid="stElementContainer"]')];
        const problems = [];
        for (const svg of document.querySelectorAll('.vega-embed svg')) {
            const own = svg.closest('[data-testid="stElementContainer"]');
            const box = svg.getBoundingClientRect();
            for (const title of svg.querySelectorAll('.role-title-text text')) {
                const text = title.textContent, at = title.getBoundingClientRect();
                if (!inside(at, box)) problems.push(`"${text}" reaches outside its chart (title ${[at.left, at.top, at.right, at.bottom].map(Math.round)}, chart ${[box.left, box.top, box.right, box.bottom].map(Math.round)})`);
                if (text.endsWith('…')) problems.push(`"${text}" is cut short`);
                const over = elements.filter(e => e !== own && !e.contains(own) && overlap(at, e.getBoundingClientRect()));
                if (over.length) problems.push(`"${text}" lies over another element: ${over[0].innerText.slice(0, 40)}`);
            }
        }
        return problems;
    })()""")


def chart_image(page, index=0):
    from PIL import Image

    for _ in range(50):  # the page, cropped: a chart element is replaced when it redraws
        box = page.locator(".vega-embed").nth(index).bounding_box()
        if box is not None:
            return Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB")
        page.wait_for_timeout(100)
    raise AssertionError(f"chart {index} did not stay on the page")


@pytest.mark.parametrize("width", [1400, 800])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_with_nothing_cut_and_no_vega_warnings(seeded_app, width, scheme):
    url, _ = seeded_app
    with browser_page(url, width, scheme) as (page, console):
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{width}-{scheme}.png"), full_page=True)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not vega_warnings(console), vega_warnings(console)
        cut = page.evaluate("""[...document.querySelectorAll(
                '[data-testid="stMetricValue"], [data-testid="stMetricValue"] *, [data-testid="stMetricLabel"] *')]
            .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)""")
        assert not cut, f"KPI values cut at {width} px: {cut}"
        outside = page.evaluate("""[...document.querySelectorAll('.vega-embed')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth).length""")
        assert not outside, f"{outside} charts reach past the window's right edge at {width} px"
        titles = page.evaluate("document.querySelectorAll('.vega-embed .role-title-text text').length")
        assert titles >= 9 and not misplaced_titles(page), (width, titles, misplaced_titles(page))
        text = page.locator("body").inner_text()
        assert "are stamped after" not in text and "Traceback" not in text
        assert "Top processes" in text and "More from the host" in text


def test_the_first_sample_alone_draws_without_vega_warnings(valkey, client, tmp_path, processes):
    """A new stack's first moments: one sample, so no rate yet (network, disks, context switches need two)
    and those charts have no value: each must still get a y domain, not the extent of nothing."""
    from bench.common import synthetic_samples
    from bench.dashboard import fill
    from runtime import schema

    fill(client, synthetic_samples(1, cpus=2), schema.Keys(output="out"))
    url = start_configured_app(valkey, tmp_path, processes)
    with browser_page(url) as (page, console):
        page.wait_for_timeout(3000)  # a live redraw
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not vega_warnings(console), vega_warnings(console)


def test_the_heatmap_varies_and_the_window_switch_changes_the_axis(seeded_app):
    url, _ = seeded_app
    with browser_page(url) as (page, console):
        assert not vega_warnings(console), vega_warnings(console)  # the lines view draws without warnings
        page.get_by_text("heatmap", exact=True).click()
        page.wait_for_timeout(3000)
        page.screenshot(path=str(ARTIFACTS / "dashboard-heatmap.png"), full_page=True)
        heatmap = chart_image(page, 0)
        window_button = lambda label: page.locator('[data-testid="stSidebar"] button').get_by_text(label, exact=True)
        width, height = heatmap.size
        row = [heatmap.getpixel((x, height // 3)) for x in range(width // 5, width * 4 // 5)]
        assert len(set(row)) > 20, "the heatmap's cells do not vary along time"
        window_button("1 h").click()
        page.wait_for_timeout(2500)
        hour = chart_image(page, 1)
        page.wait_for_timeout(2500)  # a tick later: the same window, a few seconds on
        hour_later = chart_image(page, 1)
        window_button("24 h").click()
        page.wait_for_timeout(2500)
        day = chart_image(page, 1)
        page.screenshot(path=str(ARTIFACTS / "dashboard-24h.png"), full_page=True)
        changed = lambda a, b: float((np.asarray(a, dtype=int) != np.asarray(b, dtype=int)).any(axis=2).mean())
        assert changed(hour, day) > 0.02, "choosing 24 h did not change the chart"
        assert changed(hour, day) > 5 * changed(hour, hour_later), "the 24 h chart is no more different than a tick"
        # the heatmap's first draw, its live redraws and two window switches: the console stays clean
        assert not vega_warnings(console), vega_warnings(console)


def test_the_export_files_parse_back_to_the_window(seeded_app, tmp_path):
    import pandas as pd

    url, samples = seeded_app
    with browser_page(url) as (page, _):
        files = {}
        for label in ("samples (CSV)", "samples (Parquet)", "outputs (CSV)"):
            with page.expect_download() as download:
                page.get_by_role("button", name=label).click()
            files[label] = tmp_path / download.value.suggested_filename
            download.value.save_as(files[label])
    csv = pd.read_csv(files["samples (CSV)"], index_col="time", parse_dates=True)
    parquet = pd.read_parquet(files["samples (Parquet)"])
    outputs = pd.read_csv(files["outputs (CSV)"], index_col="time", parse_dates=True)
    in_window = [s for s in samples if pd.Timestamp(s["timestamp"]) >= csv.index[0]]
    assert len(csv) == len(parquet) == len(in_window) and 100 < len(csv) <= 181
    assert list(csv["cpu_percent-3"]) == [s["cpu_percent-3"] for s in in_window]
    assert "load_avg-1" in parquet.columns and len(outputs) == len(csv)
