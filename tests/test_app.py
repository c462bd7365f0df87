"""The dashboard page run by Streamlit's AppTest against a real Valkey server."""

import json
from datetime import datetime, timedelta

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO_DIR, make_samples, outputs, publish, running_runtime, runtime_env, wait_for

APP = str(REPO_DIR / "app" / "streamlit_app.py")


@pytest.fixture
def page(monkeypatch):
    """The app with a fresh cache, reading from whatever REDIS_URL the test sets."""
    st.cache_resource.clear()
    st.cache_data.clear()
    for name in ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_OUTPUT_KEY", "out")

    def run(url):
        monkeypatch.setenv("REDIS_URL", url)
        return AppTest.from_file(APP, default_timeout=60).run()

    yield run
    st.cache_resource.clear()


def charts_of(at):
    return at.get("vega_lite_chart")


def title_of(spec):
    """A chart's title, from the spec or (layered charts) its first layer."""
    title = spec.get("title") or (title_of(spec["layer"][0]) if spec.get("layer") else None)
    return title["text"] if isinstance(title, dict) else title


def titles_of(at):
    return [title_of(json.loads(c.proto.spec)) for c in charts_of(at)]


def recent_samples(count):
    return make_samples(count, step_seconds=1, start=datetime.now() - timedelta(seconds=count))


def test_all_panels_show_with_data_and_a_running_runtime(client, redis_url, page):
    publish(client, recent_samples(60))
    with running_runtime(runtime_env(redis_url, "usermodule.py")):
        wait_for(lambda: len(outputs(client, "out")) == 60)
        at = page(redis_url)
    assert not at.exception
    assert not at.error
    labels = [m.label for m in at.metric]
    for label in ("CPU (mean of cores)", "Memory used", "CPU frequency", "Processes",
                  "Last execution", "Lag", "Invocations", "Errors", "State"):
        assert label in labels
    assert next(m.value for m in at.metric if m.label == "Invocations") == "60"
    assert titles_of(at) == ["CPU utilisation per core", "Virtual memory", "CPU frequency",
                             "Network throughput", "Network packets", "Network errors and drops",
                             "Context switches and interrupts", "Number of processes", "Function outputs"]
    assert "Embedded" not in " ".join(s.value for s in at.sidebar.success)
    assert any("Reading from a configured Redis" in i.value for i in at.sidebar.info)


def test_no_redis_gives_the_url_tried_and_how_to_fix_it(page):
    at = page("redis://:hunter2@127.0.0.1:1")
    assert not at.exception
    (error,) = at.error
    assert "Cannot reach Redis at redis://:***@127.0.0.1:1" in error.value
    assert "unset them to let this app start its own" in error.value
    assert "hunter2" not in str(at)


def test_no_samples_yet_is_a_clear_state(redis_url, page):
    at = page(redis_url)
    assert not at.exception and not at.error
    assert any("No samples in this window in `metrics:stream`" in i.value for i in at.info)


def test_a_missing_runtime_is_flagged(client, redis_url, page):
    publish(client, recent_samples(10))
    at = page(redis_url)
    assert not at.exception
    assert any("Runtime not running" in w.value for w in at.warning)
    assert len(charts_of(at)) == 8  # the host's charts still draw


def test_the_latest_error_and_a_non_durable_env_are_shown(client, redis_url, page, tmp_path):
    (tmp_path / "fn.py").write_text('''
import threading

def handler(input, context):
    context.env["lock"] = threading.Lock()
    context.env["n"] = context.env.get("n", 0) + 1
    if context.env["n"] % 3 == 0:
        raise ValueError("<script>alert(1)</script>")
    return {"<b>bold</b>": 1.0}
''')
    publish(client, recent_samples(10))
    with running_runtime(runtime_env(redis_url, tmp_path / "fn.py")):
        wait_for(lambda: client.hget("out:status", "invocations") == "10")
        at = page(redis_url)
    assert not at.exception
    assert any("context.env is not durable" in w.value for w in at.warning)
    (expander,) = [e for e in at.expander if "Latest error" in e.label]
    assert "<script>alert(1)</script>" in expander.text[0].value  # shown as text, not markup
    assert "ValueError" in expander.code[0].value


def test_malformed_entries_are_skipped_and_counted(client, redis_url, page):
    publish(client, recent_samples(5) + ["{broken", "[1]"])
    at = page(redis_url)
    assert not at.exception
    assert any("Skipped malformed entries: 2 samples" in c.value for c in at.caption)


def test_outputs_of_a_runtime_that_only_sets_its_key_are_kept(client, redis_url, page):
    publish(client, recent_samples(5))
    client.set("out", json.dumps({"percent-network-egress": 12.5}))
    at = page(redis_url)
    assert not at.exception
    assert any("Outputs come from a plain key" in i.value for i in at.info)
    assert json.loads(charts_of(at)[-1].proto.spec)["title"] == "Function outputs"


def test_a_host_picker_and_an_overview_when_collectors_publish_per_host(client, redis_url, page):
    from runtime import schema
    from runtime.collector import Publisher
    from runtime.config import RedisSettings, connect

    for index, host in enumerate(("alpha", "beta", "gamma")):
        publisher = Publisher(connect(RedisSettings(redis_url), "test"), schema.Keys(), 3600, 100, host=host)
        for sample in recent_samples(10 + index):
            publisher.publish(sample)
    at = page(redis_url)
    assert not at.exception and not at.error
    (picker,) = at.sidebar.selectbox
    assert picker.options == ["alpha", "beta", "gamma"] and picker.value == "alpha"
    assert any(t.value == "input key: metrics:alpha" for t in at.sidebar.text)
    (overview,) = at.dataframe
    table = overview.value
    assert sorted(table["host"]) == ["alpha", "beta", "gamma"] and not table["stale"].any()
    assert list(table["CPU %"]) == sorted(table["CPU %"], reverse=True)  # busiest first
    at = picker.select("gamma").run()
    assert any(t.value == "output key: out:gamma" for t in at.sidebar.text)
    assert len(at.get("vega_lite_chart")) == 8  # gamma's host charts; no runtime has run for it
