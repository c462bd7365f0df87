"""Pure chart builders: DataFrame in, Altair chart out.

Every time axis spans the page's window (ending at the server's now); within one window the spec
stays the same from tick to tick and only the data changes. Missing stretches are rows of NaN,
which Vega-Lite draws as breaks in a line, never as a ramp.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from app.timeline import Window
from runtime import schema, status

# Frames arrive downsampled to about a chart's width per series; many cores still make many rows.
alt.data_transformers.disable_max_rows()

GIB = 1024**3
HEIGHT = 220
KINDS = ["sample", "function's 1-min average"]
CORE_COLOURS = "tableau20"  # 20 distinct hues; the heatmap takes over beyond that
EVENT_COLOURS = {"gap": "#9e9e9e", "restart": "#ff7f0e", "version": "#1f77b4", "error": "#d62728"}


def _zoom() -> alt.Parameter:
    """Drag to pan, wheel to zoom the time axis; double-click resets."""
    # A fixed name: Altair would number it anew on every tick, changing the spec and redrawing the chart.
    return alt.selection_interval(bind="scales", encodings=["x"], name="zoom")


def _datetime(moment: pd.Timestamp) -> alt.ExprRef:
    """A naive local time as Vega-Lite reads it (the samples are naive local times, as the browser shows).

    An expression, not a DateTime object: Vega-Lite turns a DateTime into this very expression for a typed
    channel but keeps it raw for an untyped one (the heatmap's `x2`), then warns of two conflicting domains
    and draws their union from an empty data set ("Infinite extent").
    """
    return alt.ExprRef(expr=f"datetime({moment.year}, {moment.month - 1}, {moment.day}, {moment.hour}, "
                            f"{moment.minute}, {moment.second}, {moment.microsecond // 1000})")


def time_format(window: Window) -> str:
    """Seconds for short windows, the date as soon as the window crosses midnight."""
    if window.start.date() != window.end.date():
        return "%d %b %H:%M"
    return "%H:%M:%S" if window.seconds <= 900 else "%H:%M"


def time_x(window: Window, field: str = "time", **extra) -> alt.X:
    """The shared time axis: exactly the window, labels that never overlap."""
    return alt.X(f"{field}:T", title=None, **extra,
                 scale=alt.Scale(domain=[_datetime(window.start), _datetime(window.end)]),
                 axis=alt.Axis(format=time_format(window), labelOverlap=True, labelFlush=True, tickCount=6))


def _tooltip_time(window: Window, field: str = "time") -> alt.Tooltip:
    days = window.start.date() != window.end.date()
    return alt.Tooltip(f"{field}:T", title="time", format="%d %b %H:%M:%S" if days else "%H:%M:%S")


def tidy(frame: pd.DataFrame, columns: dict[str, str], drop_missing: bool = False) -> pd.DataFrame:
    """Wide columns to long rows (`time`, `series`, `value`); `columns` maps column -> series name.

    Rows of NaN stay: they break the lines at gaps. With `drop_missing`, values missing from a row that
    has others (a field not sent with every sample) are left out, but the empty rows that mark gaps
    (timeline.break_gaps) stay, so a stacked area breaks there too instead of ramping across.
    """
    present = {c: name for c, name in columns.items() if c in frame.columns}
    if not present:
        return pd.DataFrame({"time": pd.Series(dtype="datetime64[ns]"), "series": pd.Series(dtype=str),
                             "value": pd.Series(dtype=float)})
    # What DataFrame.melt gives, built from arrays: melt costs a few ms a chart, every chart, every tick.
    values = frame[list(present)].to_numpy(dtype="float64")
    long = pd.DataFrame({"time": np.tile(frame.index.to_numpy(), len(present)),
                         "series": np.repeat(np.array(list(present.values()), dtype=object), len(frame)),
                         "value": values.ravel(order="F")})
    if not drop_missing:
        return long
    gap_rows = np.tile(frame.isna().all(axis=1).to_numpy(), len(present))
    return long[long["value"].notna().to_numpy() | gap_rows].reset_index(drop=True)


def cpu_frame(samples: pd.DataFrame, outputs: pd.DataFrame) -> pd.DataFrame:
    """Per-core utilisation and the function's one-minute averages as long rows (`core`, `kind`)."""
    used = tidy(samples, {f: f"cpu{schema.cpu_index(f)}" for f in schema.cpu_fields(samples.columns)})
    used["kind"] = KINDS[0]
    averages = {c: f"cpu{status.cpu_average_index(str(c))}" for c in outputs.columns
                if status.cpu_average_index(str(c)) is not None}
    mean = tidy(outputs, averages)
    mean["kind"] = KINDS[1]
    both = pd.concat([used, mean], ignore_index=True).rename(columns={"series": "core"})
    return both


def _core_order(data: pd.DataFrame) -> list[str]:
    return sorted(data["core"].dropna().unique(), key=lambda core: int(core[3:]))


def cpu_lines(data: pd.DataFrame, window: Window) -> alt.Chart:
    """Each core's utilisation (thin) with its one-minute moving average (dashed) overlaid."""
    cores = _core_order(data)
    return alt.Chart(data).mark_line(strokeWidth=1.6).encode(
        x=time_x(window),
        y=alt.Y("value:Q", title="CPU %", scale=alt.Scale(domain=[0, 100])),
        color=alt.Color("core:N", title="core", sort=cores, scale=alt.Scale(scheme=CORE_COLOURS),
                        legend=alt.Legend(columns=max(1, len(cores) // 12 + 1))),
        strokeDash=alt.StrokeDash("kind:N", title="line", sort=KINDS,
                                  scale=alt.Scale(domain=KINDS, range=[[1, 0], [6, 3]]),
                                  legend=alt.Legend(orient="bottom", symbolStrokeWidth=2, labelLimit=300)),
        tooltip=[_tooltip_time(window), alt.Tooltip("core:N"), alt.Tooltip("kind:N", title="line"),
                 alt.Tooltip("value:Q", format=".1f", title="%")],
    ).add_params(_zoom()).properties(height=HEIGHT + 60, title="CPU utilisation per core")


def heatmap_frame(data: pd.DataFrame, bucket_seconds: float) -> pd.DataFrame:
    """The samples' rows with an end time one bucket later: each cell covers its own stretch of time."""
    used = data[data["kind"] == KINDS[0]].dropna(subset=["value"]).copy()
    used["time_end"] = used["time"] + pd.Timedelta(seconds=bucket_seconds)
    return used


def cpu_heatmap(data: pd.DataFrame, window: Window, bucket_seconds: float) -> alt.Chart:
    """The compact view for many cores: one row per core, one cell per time bucket, colour = %."""
    cells = heatmap_frame(data, bucket_seconds)
    cores = _core_order(cells) if not cells.empty else []
    return alt.Chart(cells).mark_rect().encode(
        x=time_x(window),
        x2=alt.X2("time_end"),  # each cell spans its own bucket, start to end
        y=alt.Y("core:N", title=None, sort=cores),
        color=alt.Color("value:Q", title="CPU %", scale=alt.Scale(domain=[0, 100], scheme="inferno")),
        tooltip=[_tooltip_time(window), alt.Tooltip("core:N"), alt.Tooltip("value:Q", format=".1f", title="%")],
    ).add_params(_zoom()).properties(height=max(HEIGHT, 16 * len(cores)), title="CPU utilisation per core")


def memory_chart(samples: pd.DataFrame, window: Window) -> alt.Chart:
    """Virtual memory used, buffers, cached and free, stacked, in GiB."""
    parts = {"virtual_memory-used": "used", "virtual_memory-buffers": "buffers",
             "virtual_memory-cached": "cached", "virtual_memory-free": "free"}
    data = tidy(samples, parts)
    data["value"] = data["value"] / GIB
    data["order"] = data["series"].map({name: i for i, name in enumerate(parts.values())})
    return alt.Chart(data).mark_area(opacity=0.8).encode(
        x=time_x(window),
        y=alt.Y("value:Q", title="GiB", stack="zero"),
        color=alt.Color("series:N", title=None, sort=list(parts.values()),
                        scale=alt.Scale(domain=list(parts.values()),
                                        range=["#d62728", "#ff9896", "#ffbb78", "#98df8a"]),
                        legend=alt.Legend(orient="bottom")),
        order=alt.Order("order:Q"),
        tooltip=[_tooltip_time(window), alt.Tooltip("series:N", title="part"),
                 alt.Tooltip("value:Q", format=".2f", title="GiB")],
    ).add_params(_zoom()).properties(height=HEIGHT, title="Virtual memory")


def value_domain(values: pd.Series, zero: bool) -> list[float] | None:
    """A y domain that shows a flat series as a line in the middle, not a single tick at the edge; with no
    value yet (a rate needs two samples), a fixed one: Vega would take the extent of nothing ("Infinite
    extent")."""
    finite = values.dropna()
    if finite.empty:
        return [0.0, 1.0]
    low, high = float(finite.min()), float(finite.max())
    if high - low >= 0.02 * max(abs(high), 1e-9):
        return None  # a real range: let Vega-Lite pick nice ticks
    if zero and high > 0:
        return [0.0, 2 * high]  # flat above zero: in the middle, not on the frame where a nice domain ends
    pad = max(abs(high) * 0.05, 1.0)
    return [min(low, 0.0) if zero else low - pad, high + pad]


def line_chart(data: pd.DataFrame, window: Window, title: str, unit: str, zero: bool = False,
               fmt: str = ",.4~f") -> alt.Chart:
    """One or more series over time; a legend only when there is more than one series."""
    series = sorted(data["series"].dropna().unique())
    domain = value_domain(data["value"], zero)
    scale = alt.Scale(zero=zero, domain=domain) if domain else alt.Scale(zero=zero)
    color = alt.Color("series:N", title=None, sort=series,
                      legend=alt.Legend(orient="bottom", labelLimit=400, columns=2) if len(series) > 1 else None)
    return alt.Chart(data).mark_line().encode(
        x=time_x(window),
        y=alt.Y("value:Q", title=unit, scale=scale, axis=alt.Axis(format=fmt)),
        color=color,
        tooltip=[_tooltip_time(window), alt.Tooltip("series:N"), alt.Tooltip("value:Q", format=",.2f", title=unit)],
    ).add_params(_zoom()).properties(height=HEIGHT, title=title)


def area_chart(data: pd.DataFrame, window: Window, title: str, unit: str) -> alt.Chart:
    """Parts of a whole stacked over time (the CPU time split)."""
    series = list(dict.fromkeys(data["series"]))
    empty = data["value"].dropna().empty  # see value_domain
    return alt.Chart(data).mark_area(opacity=0.85).encode(
        x=time_x(window),
        y=alt.Y("value:Q", title=unit, stack="zero", scale=alt.Scale(domain=[0, 1]) if empty else alt.Undefined),
        color=alt.Color("series:N", title=None, sort=series, legend=alt.Legend(orient="bottom")),
        tooltip=[_tooltip_time(window), alt.Tooltip("series:N"), alt.Tooltip("value:Q", format=".1f", title=unit)],
    ).add_params(_zoom()).properties(height=HEIGHT, title=title)


def usage_bars(data: pd.DataFrame, title: str) -> alt.Chart:
    """Latest percentage per item (filesystem mounts), one bar each."""
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("value:Q", title="% used", scale=alt.Scale(domain=[0, 100])),
        y=alt.Y("series:N", title=None, sort="-x", axis=alt.Axis(labelLimit=200)),
        color=alt.Color("value:Q", legend=None, scale=alt.Scale(domain=[0, 70, 90, 100],
                                                              range=["#2ca02c", "#2ca02c", "#ff7f0e", "#d62728"])),
        tooltip=[alt.Tooltip("series:N", title="mount"), alt.Tooltip("value:Q", format=".1f", title="% used")],
    ).properties(height=max(80, 24 * data["series"].nunique()), title=title)


def annotated(chart: alt.Chart, events: pd.DataFrame, window: Window) -> alt.LayerChart | alt.Chart:
    """The chart with events on its time axis: gaps as grey bands, restarts and versions as rules."""
    if events.empty:
        return chart
    inside = events[(events["end"] >= window.start) & (events["time"] <= window.end)]
    if inside.empty:
        return chart
    spans = inside["end"] > inside["time"]
    layers = [chart]
    for rows, mark in ((inside[spans], alt.MarkDef(type="rect", opacity=0.18)),
                       (inside[~spans], alt.MarkDef(type="rule", strokeWidth=2, strokeDash=[4, 2]))):
        if rows.empty:
            continue
        layer = alt.Chart(rows, mark=mark).encode(
            x=alt.X("time:T"),  # the base layer owns the scale and the axis: no second domain to conflict
            color=alt.Color("kind:N", legend=None, scale=alt.Scale(domain=list(EVENT_COLOURS),
                                                                  range=list(EVENT_COLOURS.values()))),
            tooltip=[alt.Tooltip("kind:N", title="event"), alt.Tooltip("label:N", title="what"),
                     _tooltip_time(window)],
        )
        layers.append(layer.encode(x2="end:T") if mark.type == "rect" else layer)
    return alt.layer(*layers).resolve_scale(color="independent")


def with_errors(chart: alt.Chart | alt.LayerChart, errors: pd.DataFrame, window: Window) -> alt.LayerChart:
    """Error records as red rules on the outputs chart; hovering one shows its fault and message."""
    if errors.empty:
        return chart
    marks = alt.Chart(errors).mark_rule(color=EVENT_COLOURS["error"], strokeWidth=3, opacity=0.7).encode(
        x=alt.X("time:T"),
        tooltip=[_tooltip_time(window), alt.Tooltip("fault:N"), alt.Tooltip("message:N")],
    )
    return relayer(chart, above=[marks])


def relayer(chart: alt.Chart | alt.LayerChart, below: list[alt.Chart] = (),
            above: list[alt.Chart] = ()) -> alt.LayerChart:
    """The chart's layers with more under and over them, in one flat layer (nested layers make Vega-Lite
    merge domains twice), its title and its height kept at the top, where the page reads them."""
    inner = list(chart.layer) if isinstance(chart, alt.LayerChart) else [chart]
    layered = alt.layer(*below, *inner, *above).resolve_scale(color="independent")
    title = chart.title if chart.title is not alt.Undefined else inner[0].title
    height = chart.height if chart.height is not alt.Undefined else inner[0].height
    return layered.properties(**{name: value for name, value in (("title", title), ("height", height))
                                 if value is not alt.Undefined})


def output_series(outputs: pd.DataFrame) -> dict[str, str]:
    """The function's numeric outputs that the CPU chart does not already show."""
    return {c: str(c) for c in outputs.columns if status.cpu_average_index(str(c)) is None}
