"""Chart builders on fixture frames: fields, types, layers and data of the Vega-Lite specs."""

from datetime import datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd

from app import charts, data, timeline
from runtime import schema
from tests.conftest import make_samples
from usermodule import handler

END = datetime(2026, 11, 28, 14, 10)


def frames(count=120, step=5.0):
    samples = make_samples(count, step_seconds=step)
    context = SimpleNamespace(env={})
    outputs = pd.DataFrame([handler(s, context) for s in samples],
                           index=pd.DatetimeIndex([schema.parse_timestamp(s["timestamp"]) for s in samples], name="time"))
    return schema.samples_to_frame(samples), outputs


def window(seconds=600, end=END):
    return timeline.Window.last(seconds, end)


def encoding(spec):
    return {channel: (value.get("field"), value.get("type")) for channel, value in spec["encoding"].items()
            if isinstance(value, dict) and "field" in value}


def rows(spec):
    return pd.DataFrame(spec["datasets"][spec["data"]["name"]])


def test_cpu_lines_overlay_each_cores_average_on_its_utilisation():
    samples, outputs = frames()
    cpu = charts.cpu_frame(samples, outputs)
    assert set(cpu["kind"]) == set(charts.KINDS)
    assert set(cpu["core"]) == {"cpu0", "cpu1", "cpu2", "cpu3"}
    spec = charts.cpu_lines(cpu, window()).to_dict()
    assert spec["mark"]["type"] == "line"
    enc = encoding(spec)
    assert enc["x"] == ("time", "temporal") and enc["y"] == ("value", "quantitative")
    assert enc["color"] == ("core", "nominal") and enc["strokeDash"] == ("kind", "nominal")
    assert spec["encoding"]["color"]["scale"]["scheme"] == "tableau20"  # 20 distinct hues, not 10 repeated
    assert spec["encoding"]["strokeDash"]["scale"]["domain"] == ["sample", "function's 1-min average"]
    assert any(p.get("bind") == "scales" for p in spec["params"])  # x-zoom


def test_heatmap_cells_cover_their_own_time_bucket_and_vary_with_the_data():
    index = pd.date_range("2026-11-29 10:00", periods=600, freq="s", name="time")
    ramp = np.linspace(0, 100, 600)
    samples = pd.DataFrame({f"cpu_percent-{i}": (ramp + i) % 100 for i in range(16)}, index=index)
    win = timeline.Window.last(600, index[-1].to_pydatetime())
    small = timeline.downsample(samples, win, 1.0, max_points=60)
    bucket = timeline.bucket_seconds(win.seconds, 1.0, max_points=60)
    spec = charts.cpu_heatmap(charts.cpu_frame(small, pd.DataFrame()), win, bucket).to_dict()
    assert spec["mark"]["type"] == "rect"
    assert spec["encoding"]["x2"]["field"] == "time_end"
    # the untyped x2 reads the domain as written: an expression reads the same there as on x (no conflict)
    assert all(set(bound) == {"expr"} for bound in spec["encoding"]["x"]["scale"]["domain"])
    cells = rows(spec)
    core0 = cells[cells["core"] == "cpu0"]
    assert len(core0) == 60 and core0["value"].nunique() > 30  # not one flat colour per core
    span = pd.to_datetime(core0["time_end"]) - pd.to_datetime(core0["time"])
    assert (span == pd.Timedelta(seconds=bucket)).all()
    assert spec["height"] == max(charts.HEIGHT, 16 * 16)  # a label for every core


def test_the_time_axis_spans_the_window_and_shows_dates_across_midnight():
    samples, _ = frames()
    hour = charts.memory_chart(samples, window(3600)).to_dict()["encoding"]["x"]
    day = charts.memory_chart(samples, window(86_400)).to_dict()["encoding"]["x"]
    assert hour["scale"]["domain"] != day["scale"]["domain"]
    start, end = day["scale"]["domain"]  # Vega's datetime(): local time, months counted from 0
    assert end == {"expr": "datetime(2026, 10, 28, 14, 10, 0, 0)"}
    assert start == {"expr": "datetime(2026, 10, 27, 14, 10, 0, 0)"}
    assert hour["axis"]["format"] == "%H:%M" and day["axis"]["format"] == "%d %b %H:%M"


def test_gaps_break_lines_instead_of_bridging_them():
    index = pd.date_range("2026-11-29 10:00", periods=20, freq="5s", name="time").delete(range(8, 14))
    frame = pd.DataFrame({schema.N_PIDS: np.arange(14.0)}, index=index)
    spec = charts.line_chart(charts.tidy(timeline.break_gaps(frame, 5.0), {schema.N_PIDS: "processes"}),
                             timeline.Window.last(120, index[-1].to_pydatetime()), "Processes", "n").to_dict()
    values = rows(spec)["value"]
    assert values.isna().sum() == 1  # one break inside the 35 s hole: Vega-Lite stops the line there
    assert "invalid" not in spec["mark"] or spec["mark"]["invalid"] != "filter"


def test_the_cpu_time_split_breaks_at_gaps_and_skips_samples_without_it():
    """A stacked area: the hole's empty row stays (a break), a sample sent without extras is left out."""
    index = pd.date_range("2026-11-29 10:00", periods=20, freq="5s", name="time").delete(range(8, 14))
    split = {"cpu_times_percent-user": "user", "cpu_times_percent-system": "system"}
    frame = pd.DataFrame({schema.N_PIDS: np.arange(14.0), "cpu_times_percent-user": 30.0,
                          "cpu_times_percent-system": 10.0}, index=index)
    frame.iloc[2, 1:] = np.nan  # that sample came without the extras
    data = charts.tidy(timeline.break_gaps(frame, 5.0), split, drop_missing=True)
    spec = charts.area_chart(data, timeline.Window.last(120, index[-1].to_pydatetime()), "CPU time split",
                             "% of CPU time").to_dict()
    values = rows(spec)
    hole = pd.to_datetime(values[values["value"].isna()]["time"])
    assert len(hole) == 2 and (hole > index[7]).all() and (hole < index[8]).all()
    assert len(values) == 2 * (14 - 1) + 2


def test_a_single_series_has_no_legend_and_a_flat_one_a_sensible_domain():
    index = pd.date_range("2026-11-29 10:00", periods=30, freq="s", name="time")
    flat = pd.DataFrame({schema.CPU_FREQ: [2400.0] * 30}, index=index)
    spec = charts.line_chart(charts.tidy(flat, {schema.CPU_FREQ: "frequency"}),
                             timeline.Window.last(60, index[-1].to_pydatetime()), "CPU frequency", "MHz").to_dict()
    assert spec["encoding"]["color"]["legend"] is None
    low, high = spec["encoding"]["y"]["scale"]["domain"]
    assert low < 2400 < high and high - low >= 2


def test_a_flat_rate_from_zero_is_drawn_inside_the_chart_not_on_its_top_edge():
    """A steady 200 bytes/s on a zero-based axis: Vega-Lite's nice domain ended at 200, on the frame."""
    index = pd.date_range("2026-11-29 10:00", periods=30, freq="s", name="time")
    flat = pd.DataFrame({"in": [200.0] * 30, "out": [200.0] * 30}, index=index)
    spec = charts.line_chart(charts.tidy(flat, {"in": "in", "out": "out"}),
                             timeline.Window.last(60, index[-1].to_pydatetime()), "Network throughput", "bytes/s",
                             zero=True).to_dict()
    low, high = spec["encoding"]["y"]["scale"]["domain"]
    assert low == 0 and high >= 1.2 * 200


def test_memory_chart_stacks_used_buffers_cached_free_in_gib():
    samples, _ = frames()
    spec = charts.memory_chart(samples, window()).to_dict()
    assert spec["mark"]["type"] == "area" and spec["encoding"]["y"]["stack"] == "zero"
    table = rows(spec)
    assert set(table["series"]) == {"used", "buffers", "cached", "free"}
    assert table["value"].max() < 16  # GiB of a 16 GiB machine


def test_line_chart_draws_every_output_series_with_a_legend():
    _, outputs = frames()
    series = charts.output_series(outputs)
    assert set(series) == {"percent-network-egress", "percent-memory-cache"}
    spec = charts.line_chart(charts.tidy(outputs, series), window(), "Function outputs", "value").to_dict()
    assert spec["title"] == "Function outputs" and encoding(spec)["color"] == ("series", "nominal")
    assert spec["encoding"]["color"]["legend"]["orient"] == "bottom"


def test_error_records_are_marks_with_their_message_on_hover():
    _, outputs = frames()
    errors = pd.DataFrame({"time": [outputs.index[10]], "fault": ["handler_error"], "message": ["boom"]})
    base = charts.line_chart(charts.tidy(outputs, charts.output_series(outputs)), window(), "Function outputs", "v")
    spec = charts.with_errors(base, errors, window()).to_dict()
    marks = spec["layer"][1]
    assert marks["mark"]["type"] == "rule"
    assert [t["field"] for t in marks["encoding"]["tooltip"]] == ["time", "fault", "message"]


def test_annotations_draw_gaps_as_bands_and_restarts_as_rules():
    samples, _ = frames()
    moment = pd.Timestamp(END) - pd.Timedelta(minutes=3)
    events = pd.DataFrame([{"time": moment - pd.Timedelta(seconds=40), "end": moment, "kind": "gap", "label": "no samples"},
                           {"time": moment, "end": moment, "kind": "restart", "label": "runtime started"}])
    spec = charts.annotated(charts.memory_chart(samples, window()), events, window()).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"][1:]] == ["rect", "rule"]
    assert spec["layer"][1]["encoding"]["x2"]["field"] == "end"


def test_specs_stay_identical_between_ticks_of_one_window_except_for_data():
    samples, outputs = frames()
    first = charts.cpu_lines(charts.cpu_frame(samples.iloc[:60], outputs.iloc[:60]), window()).to_dict()
    second = charts.cpu_lines(charts.cpu_frame(samples.iloc[1:61], outputs.iloc[1:61]), window()).to_dict()
    for spec in (first, second):
        spec.pop("datasets"), spec.pop("data")
        spec["params"][0].pop("name", None)
    assert first == second


def test_a_day_at_one_second_is_downsampled_to_about_a_thousand_points():
    index = pd.date_range("2026-11-29", periods=86_400, freq="s", name="time")
    day = pd.DataFrame({"cpu_percent-0": range(86_400)}, index=index, dtype="float64")
    win = timeline.Window.last(86_400, index[-1].to_pydatetime())
    small = timeline.downsample(win.clip(day), win, 1.0)
    assert 700 <= len(small) <= timeline.MAX_POINTS
    minute = timeline.Window.last(60, index[-1].to_pydatetime())
    assert timeline.downsample(minute.clip(day), minute, 1.0).shape == (61, 1)


def test_nested_outputs_are_flattened_and_non_finite_numbers_are_gaps():
    flat = data.flatten({"a": 1, "b": {"c": 2.5, "d": "text", "e": True}, "f": float("nan"), "g": float("inf")})
    assert flat["a"] == 1.0 and flat["b.c"] == 2.5 and set(flat) == {"a", "b.c", "f", "g"}
    assert np.isnan(flat["f"]) and np.isnan(flat["g"])


def test_the_dashboard_keeps_no_more_than_redis_retains(client, redis_url):
    """Rows whose stream entries Redis trimmed are dropped from the dashboard's memory too."""
    from runtime.config import RedisSettings
    from tests.conftest import publish

    store = data.MetricsStore(RedisSettings(redis_url), schema.Keys(output="out"))
    old = make_samples(5, start=datetime.now() - timedelta(hours=2))
    publish(client, old)
    assert len(store.snapshot(6 * 3600).samples) == 5
    client.xtrim("metrics:stream", maxlen=0)
    new_ids = publish(client, make_samples(3, start=datetime.now() - timedelta(seconds=5)))
    client.xtrim("metrics:stream", minid=new_ids[0])
    assert len(store.snapshot(6 * 3600).samples) == 3


def test_every_builder_validates_and_the_page_sends_the_same_spec_unvalidated():
    from app import render

    samples, outputs = frames()
    split = pd.DataFrame({"cpu_times_percent-user": [20.0, 30.0], "cpu_times_percent-system": [5.0, 6.0]},
                         index=samples.index[:2])
    mounts = pd.DataFrame({"disk_usage-/-percent": [61.5]}, index=samples.index[:1])
    built = [charts.area_chart(charts.tidy(split, {c: c[18:] for c in split}), window(), "CPU time split", "%"),
             charts.usage_bars(charts.tidy(mounts, {"disk_usage-/-percent": "/"}), "File systems"),
             charts.cpu_lines(charts.cpu_frame(samples, outputs), window())]
    for chart in built:
        validated = chart.to_dict()  # raises on a spec Vega-Lite's schema refuses
        sent = render.spec(chart)
        assert sent["mark"] == validated["mark"] and sent["encoding"] == validated["encoding"]
        (frame,) = sent["datasets"].values()
        assert isinstance(frame, pd.DataFrame) and len(frame) == len(validated["datasets"][validated["data"]["name"]])


def test_the_firing_bands_span_the_plot_in_pixels_and_stay_out_of_the_y_scale():
    """With no period yet (every page before an alert first fires) the band layer is empty; in the y scale
    it made Vega warn of an infinite extent on every redraw (four warnings a tick on the embedded stack)."""
    from app import alerts_view

    samples, _ = frames()
    periods = pd.DataFrame(columns=["start", "end", "rule", "host", "severity"])
    spec = alerts_view.with_alerts(charts.memory_chart(samples, window()), pd.DataFrame(), periods).to_dict()
    band = spec["layer"][0]["encoding"]
    assert spec["layer"][0]["mark"]["type"] == "rect" and (band["y"], band["y2"]) == ({"value": 0}, {"value": "height"})


def test_a_layered_chart_keeps_its_title_and_height_and_the_page_draws_decorations_around_the_plot():
    """Altair lifts a layer's height to the top; layering again must carry it, or Streamlit draws 350 px."""
    from app import alerts_view, render

    samples, outputs = frames()
    events = pd.DataFrame([{"time": samples.index[10], "end": samples.index[20], "kind": "gap", "label": "gap"}])
    errors = pd.DataFrame({"time": [outputs.index[10]], "fault": ["handler_error"], "message": ["boom"]})
    periods = pd.DataFrame(columns=["start", "end", "rule", "host", "severity"])
    thresholds = pd.DataFrame(columns=["rule", "threshold", "op", "severity"])
    memory = charts.annotated(charts.memory_chart(samples, window()), events, window())
    for chart in (alerts_view.with_alerts(memory, thresholds, periods), charts.with_errors(memory, errors, window())):
        spec = chart.to_dict()
        assert (spec["title"], spec["height"]) == ("Virtual memory", charts.HEIGHT)
        assert all("layer" not in layer for layer in spec["layer"])  # one flat layer
    sent = render.spec(charts.memory_chart(samples, window()))
    assert sent["autosize"]["type"] == "fit-x"  # the height is the plot's: title and legend come on top
