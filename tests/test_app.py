"""The dashboard page run by Streamlit's AppTest against a real Valkey server."""

import json
from datetime import datetime, timedelta, timezone

import pytest
import pyarrow as pa
import redis
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


# --- the page survives bad data (issue 13): it says what it skipped and recovers -------------------------

def captions(at):
    return " ".join(c.value for c in at.caption)


def warnings(at):
    return " ".join(w.value for w in at.warning)


def assert_drawn(at):
    """No traceback, no error, and the host's charts drawn."""
    assert not at.exception and not at.error
    assert len(charts_of(at)) >= 8


def raw_client(redis_url):
    """A client that writes bytes as given, bypassing every check a collector makes."""
    return redis.Redis.from_url(redis_url)


def test_bytes_that_are_not_utf8_are_skipped_and_counted(client, redis_url, page):
    publish(client, recent_samples(5))
    raw = raw_client(redis_url)
    raw.xadd("metrics:stream", {b"sample": b'{"timestamp": "\xff\xfe"}'})
    raw.xadd("metrics:stream", {b"\xff": b"\xfe"})
    client.hset("out:status", mapping={"state": "running"})
    raw.hset("out:status", b"heartbeat", b"\xff\xff")
    at = page(redis_url)
    assert not at.exception and not at.error
    assert "Skipped malformed entries: 2 samples" in captions(at)
    assert "heartbeat" in captions(at)  # the status field that could not be read is named
    assert len(charts_of(at)) >= 8


def test_time_zone_aware_timestamps_are_drawn_at_their_instant(client, redis_url, page):
    now = datetime.now(timezone.utc)
    samples = recent_samples(6)
    for i, sample in enumerate(samples):
        moment = now - timedelta(seconds=30 - i)
        sample["timestamp"] = moment.isoformat() if i % 2 else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    publish(client, samples)
    at = page(redis_url)
    assert not at.exception and not at.error
    assert "Skipped malformed" not in captions(at)
    assert len(charts_of(at)) >= 8 and not any("No samples" in i.value for i in at.info)


@pytest.mark.parametrize("ahead", [timedelta(hours=1), timedelta(days=1), None], ids=["1h", "1d", "year-9999"])
def test_a_sample_from_the_future_is_counted_and_the_window_still_shows_the_present(client, redis_url, page, ahead):
    samples = recent_samples(10)
    future = dict(samples[-1])
    future["timestamp"] = "9999-12-31 23:59:59.000000" if ahead is None else \
        (datetime.now() + ahead).strftime("%Y-%m-%d %H:%M:%S.%f")
    publish(client, samples + [future])
    at = page(redis_url)
    assert_drawn(at)
    assert "1 samples are stamped after the server's now" in warnings(at)


def test_host_ids_with_colons_spaces_or_reserved_names_are_skipped_and_counted(client, redis_url, page):
    publish(client, recent_samples(5))
    now = datetime.now().isoformat(sep=" ")
    client.hset("metrics:hosts", mapping={"good-1": now, "bad:id": now, "with space": now, "stream": now})
    raw = raw_client(redis_url)
    raw.hset("metrics:hosts", b"\xff\xfe", now.encode())
    at = page(redis_url)
    assert not at.exception and not at.error
    (picker,) = at.sidebar.selectbox
    assert picker.options == ["good-1"]
    assert any("Skipped 4 registered host ids" in c.value for c in at.sidebar.caption)


def test_integers_too_big_for_a_counter_cost_only_their_sample(client, redis_url, page):
    good = recent_samples(5)
    huge = dict(good[-1], **{"n_pids": 10**30})
    publish(client, good + [huge, '{"timestamp": "2026-11-30 10:00:00.000000", "n_pids": ' + "9" * 5000 + "}"])
    at = page(redis_url)
    assert_drawn(at)
    assert "Skipped malformed entries: 2 samples" in captions(at)


def test_a_key_of_the_wrong_type_is_named_not_reported_as_redis_unreachable(client, redis_url, page):
    publish(client, recent_samples(5))
    client.set("out:status", "not a hash")
    client.set("out:stream", "not a stream")
    at = page(redis_url)
    assert not at.exception and not at.error
    text = warnings(at)
    assert "`out:status` holds a string, not a hash" in text and "`out:stream` holds a string, not a stream" in text
    assert "Cannot reach" not in str(at) and len(charts_of(at)) >= 8
    client.delete("metrics:stream")
    client.set("metrics:stream", "oops")
    at.run()
    assert "`metrics:stream` holds a string, not a stream" in warnings(at) and not at.exception


def test_poisoned_cached_data_is_dropped_and_the_next_tick_recovers(client, redis_url, page):
    import pandas as pd

    from app.stores import metrics_store
    from runtime import schema
    from runtime.config import RedisSettings

    publish(client, recent_samples(5))
    at = page(redis_url)
    store = metrics_store(RedisSettings(redis_url), schema.Keys(output="out"))
    # Rows indexed by text instead of time: nothing downstream can window or draw them.
    store.raw.frame = pd.DataFrame({"cpu_percent-0": [1.0], "_entry_ms": [2**62]}, index=pd.Index(["x"], name="time"))
    at.run()
    assert not at.exception
    assert "Skipped this tick" in warnings(at)
    at.run()
    assert not at.exception and "Skipped this tick" not in warnings(at) and len(charts_of(at)) >= 8


def test_nan_outputs_are_gaps_not_errors(client, redis_url, page):
    samples = recent_samples(6)
    ids = publish(client, samples)
    for i, (entry_id, sample) in enumerate(zip(ids, samples)):
        value = "NaN" if i in (2, 3) else ("Infinity" if i == 4 else str(float(i)))
        client.xadd("out:stream", {"sample_id": entry_id, "timestamp": sample["timestamp"],
                                   "output": f'{{"mean": {value}}}'})
    at = page(redis_url)
    assert not at.exception and not at.error
    assert "Skipped malformed entries" not in captions(at)
    outputs_chart = charts_of(at)[-1]
    assert title_of(json.loads(outputs_chart.proto.spec)) == "Function outputs"
    tables = [pa.ipc.open_stream(d.data.data).read_all() for d in outputs_chart.proto.datasets]
    values = next(t for t in tables if "series" in t.column_names and "value" in t.column_names)
    assert values.column("value").null_count == 3  # NaN, NaN and Infinity: three breaks in the line


def test_a_runtime_in_another_time_zone_is_not_hours_away(client, redis_url, page):
    publish(client, recent_samples(5))
    tokyo = timezone(timedelta(hours=9))
    now = datetime.now(tokyo).isoformat(sep=" ")
    client.hset("out:status", mapping={"state": "running", "heartbeat": now, "last_execution": now,
                                       "started": now, "invocations": "5"})
    at = page(redis_url)
    assert not at.exception
    age = next(m.value for m in at.metric if m.label == "Last execution")
    assert age.endswith("s ago") and float(age.split()[0].replace(",", "")) < 60
    assert "Runtime not running" not in warnings(at)


def test_kpis_show_a_rise_in_cpu_as_bad_in_percentage_points_and_no_zero_change(client, redis_url, page):
    samples = recent_samples(3)
    for sample, load in zip(samples, (10.0, 20.0, 30.0)):
        sample.update({f: load for f in sample if f.startswith("cpu_percent-")})
    samples[-1]["n_pids"] = samples[-2]["n_pids"]
    publish(client, samples)
    at = page(redis_url)
    cpu = next(m for m in at.metric if m.label == "CPU (mean of cores)")
    assert cpu.proto.delta == "+10.0 pp"
    assert cpu.proto.direction == cpu.proto.MetricDirection.UP and cpu.proto.color == cpu.proto.MetricColor.RED
    processes = next(m for m in at.metric if m.label == "Processes")
    assert not processes.delta  # no "↑ +0"


def test_live_off_says_paused_and_what_time_is_shown(client, redis_url, page):
    publish(client, recent_samples(5))
    at = page(redis_url)
    assert "Live:" in captions(at)
    at.sidebar.toggle[1].set_value(False).run()
    assert "⏸ Paused:" in captions(at) and "(server time)" in captions(at)


def test_an_absolute_range_can_be_picked(client, redis_url, page):
    publish(client, make_samples(30, step_seconds=60, start=datetime.now() - timedelta(minutes=40)))
    at = page(redis_url)
    at.sidebar.toggle[0].set_value(True).run()
    assert not at.exception and not at.error
    assert "⏸ Paused:" in captions(at)
    assert len(charts_of(at)) >= 8


def test_the_all_hosts_table_is_sorted_and_paged(client, redis_url, page):
    from runtime import schema

    now = datetime.now()
    pipe = client.pipeline()
    for i in range(60):
        host = f"node-{i:02d}"
        sample = dict(recent_samples(1)[0], **{f"cpu_percent-{c}": float(i) for c in range(4)})
        pipe.set(schema.Keys().for_host(host).input, json.dumps(sample))
        pipe.hset("metrics:hosts", host, (now - timedelta(seconds=i)).isoformat(sep=" "))
    pipe.execute()
    at = page(redis_url)
    assert not at.exception
    (table,) = at.dataframe
    assert list(table.value["host"])[:3] == ["node-59", "node-58", "node-57"] and len(table.value) == 25
    at.selectbox[0].select("staleness (silent longest first)")
    at.number_input[0].set_value(3).run()
    (table,) = at.dataframe
    assert len(table.value) == 10 and list(table.value["host"])[-1] == "node-00"
    assert "All hosts (60)" in [h.value for h in at.subheader]


def test_a_bad_refresh_setting_is_a_clear_message_not_a_traceback(redis_url, page, monkeypatch):
    monkeypatch.setenv("DASHBOARD_REFRESH", "soon")
    at = page(redis_url)
    assert not at.exception
    (error,) = at.error
    assert "DASHBOARD_REFRESH='soon' is not a number" in error.value
