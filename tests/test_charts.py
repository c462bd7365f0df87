"""Chart builders on fixture frames: fields, types and layers of the Vega-Lite specs."""

import pandas as pd

from app import charts, data
from runtime import schema
from tests.conftest import make_samples
from usermodule import handler
from types import SimpleNamespace


def frames(count=120, step=5.0):
    samples = make_samples(count, step_seconds=step)
    context = SimpleNamespace(env={})
    outputs = pd.DataFrame([handler(s, context) for s in samples],
                           index=pd.DatetimeIndex([schema.parse_timestamp(s["timestamp"]) for s in samples], name="time"))
    return schema.samples_to_frame(samples), outputs


def encoding(spec):
    return {channel: (value.get("field"), value.get("type")) for channel, value in spec["encoding"].items()
            if isinstance(value, dict) and "field" in value}


def test_cpu_lines_overlay_each_cores_average_on_its_utilisation():
    samples, outputs = frames()
    cpu = charts.cpu_frame(samples, outputs)
    assert set(cpu["kind"]) == {"utilisation", "1-min average"}
    assert set(cpu["core"]) == {"cpu0", "cpu1", "cpu2", "cpu3"}
    assert len(cpu) == 120 * 4 * 2
    spec = charts.cpu_lines(cpu).to_dict()
    assert spec["mark"]["type"] == "line"
    enc = encoding(spec)
    assert enc["x"] == ("time", "temporal") and enc["y"] == ("value", "quantitative")
    assert enc["color"] == ("core", "nominal") and enc["strokeDash"] == ("kind", "nominal")
    assert any(p.get("bind") == "scales" for p in spec["params"])  # x-zoom
    assert [t["field"] for t in spec["encoding"]["tooltip"]] == ["time", "core", "kind", "value"]


def test_heatmap_has_a_row_per_core_and_stays_compact_with_64_cores():
    samples = pd.DataFrame({f"cpu_percent-{i}": [float(i)] * 10 for i in range(64)},
                           index=pd.date_range("2026-11-29", periods=10, freq="s", name="time"))
    cpu = charts.cpu_frame(samples, pd.DataFrame())
    spec = charts.cpu_heatmap(cpu).to_dict()
    assert spec["mark"]["type"] == "rect" and encoding(spec)["y"] == ("core", "nominal")
    assert spec["height"] == 12 * 64
    assert len(spec["datasets"][spec["data"]["name"]]) == 640


def test_memory_chart_stacks_used_buffers_cached_free_in_gib():
    samples, _ = frames()
    chart = charts.memory_chart(samples)
    spec = chart.to_dict()
    assert spec["mark"]["type"] == "area" and spec["encoding"]["y"]["stack"] == "zero"
    rows = pd.DataFrame(spec["datasets"][spec["data"]["name"]])
    assert set(rows["series"]) == {"used", "buffers", "cached", "free"}
    assert rows["value"].max() < 16  # GiB of a 16 GiB machine


def test_line_chart_draws_every_output_series():
    _, outputs = frames()
    series = charts.output_series(outputs)
    assert set(series) == {"percent-network-egress", "percent-memory-cache"}
    spec = charts.line_chart(charts.tidy(outputs, series), "Function outputs", "value").to_dict()
    assert spec["title"] == "Function outputs" and encoding(spec)["color"] == ("series", "nominal")


def test_specs_stay_identical_between_ticks_except_for_data():
    samples, outputs = frames()
    first = charts.cpu_lines(charts.cpu_frame(samples.iloc[:60], outputs.iloc[:60])).to_dict()
    second = charts.cpu_lines(charts.cpu_frame(samples.iloc[1:61], outputs.iloc[1:61])).to_dict()
    for spec in (first, second):
        spec.pop("datasets"), spec.pop("data")
        spec["params"][0].pop("name", None)
    assert first == second


def test_a_day_at_one_second_is_downsampled_to_about_a_thousand_points():
    index = pd.date_range("2026-11-29", periods=86_400, freq="s", name="time")
    day = pd.DataFrame({"cpu_percent-0": range(86_400)}, index=index, dtype="float64")
    small = data.downsample(data.window(day, 86_400), 86_400)
    assert 800 <= len(small) <= data.MAX_POINTS
    assert data.downsample(data.window(day, 60), 60).shape == (61, 1)


def test_nested_outputs_are_flattened_to_numbers():
    assert data.flatten({"a": 1, "b": {"c": 2.5, "d": "text", "e": True}, "f": float("nan")}) == {"a": 1.0, "b.c": 2.5}


def test_the_dashboard_keeps_no_more_than_redis_retains(client, redis_url):
    """Rows whose stream entries Redis trimmed are dropped from the dashboard's memory too."""
    from datetime import datetime, timedelta

    from runtime.config import RedisSettings
    from tests.conftest import publish

    keys = schema.Keys(output="out")
    store = data.MetricsStore(RedisSettings(redis_url), keys)
    old = make_samples(5, start=datetime.now() - timedelta(hours=2))
    publish(client, old)
    assert len(store.snapshot().samples) == 5
    client.xtrim("metrics:stream", maxlen=0)
    new_ids = publish(client, make_samples(3, start=datetime.now()))
    client.xtrim("metrics:stream", minid=new_ids[0])
    assert len(store.snapshot().samples) == 3
