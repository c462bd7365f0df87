"""End to end: `streamlit run app` as a user would, looked at in a real headless Chromium."""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

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
        page.wait_for_function("document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= 5",
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
        assert page.locator(".vega-embed").count() == 5
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
    port = free_port()
    env = {**os.environ, "REDIS_URL": valkey.connection_url, "REDIS_OUTPUT_KEY": "out"}
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app", "--server.headless", "true", "--server.port", str(port)],
        cwd=REPO_DIR, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "streamlit.log", "w")))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "the app did not answer within 30 s"
                time.sleep(0.2)
        page.goto(f"http://127.0.0.1:{port}")
        page.wait_for_selector('[data-testid="stSelectbox"]', timeout=30_000)
        page.wait_for_function("document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= 4",
                               timeout=30_000)
        page.locator('[data-testid="stSelectbox"]').click()
        options = page.locator('[role="option"]').all_inner_texts()
        assert options == ["alpha", "beta", "gamma"], options
        page.keyboard.press("Escape")
        page.wait_for_selector('[data-testid="stDataFrame"]', timeout=15_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard-hosts.png"), full_page=True)
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()
