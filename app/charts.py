"""Pure chart builders: DataFrame in, Altair chart out. Specs stay the same from tick to tick."""

from __future__ import annotations

import re

import altair as alt
import pandas as pd

from runtime import schema

# Frames arrive downsampled to about a chart's width per series; many cores still make many rows.
alt.data_transformers.disable_max_rows()

CPU_AVERAGE = re.compile(r"^avg-util-cpu(\d+)-60sec$")
GIB = 1024**3
HEIGHT = 220


def _zoom() -> alt.Parameter:
    """Drag to pan, wheel to zoom the time axis; double-click resets."""
    return alt.selection_interval(bind="scales", encodings=["x"])


def _time(title: str = "") -> alt.X:
    return alt.X("time:T", title=title or None, axis=alt.Axis(format="%H:%M:%S", labelOverlap=True))


def tidy(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Wide columns to long rows (`time`, `series`, `value`); `columns` maps column -> series name."""
    present = {c: name for c, name in columns.items() if c in frame.columns}
    if not present:
        return pd.DataFrame({"time": pd.Series(dtype="datetime64[ns]"), "series": pd.Series(dtype=str),
                             "value": pd.Series(dtype=float)})
    long = frame[list(present)].rename(columns=present).rename_axis("time").reset_index()
    return long.melt(id_vars="time", var_name="series", value_name="value").dropna(subset=["value"])


def cpu_frame(samples: pd.DataFrame, outputs: pd.DataFrame) -> pd.DataFrame:
    """Per-core utilisation and the function's one-minute averages as long rows (`core`, `kind`)."""
    used = tidy(samples, {f: f"cpu{schema.cpu_index(f)}" for f in schema.cpu_fields(samples.columns)})
    used["kind"] = "utilisation"
    averages = {c: f"cpu{CPU_AVERAGE.match(c).group(1)}" for c in outputs.columns if CPU_AVERAGE.match(str(c))}
    mean = tidy(outputs, averages)
    mean["kind"] = "1-min average"
    both = pd.concat([used, mean], ignore_index=True).rename(columns={"series": "core"})
    return both


def cpu_lines(data: pd.DataFrame) -> alt.Chart:
    """Figure 1: each core's utilisation (thin) with its one-minute moving average (bold) overlaid."""
    return alt.Chart(data).mark_line().encode(
        x=_time(),
        y=alt.Y("value:Q", title="CPU %", scale=alt.Scale(domain=[0, 100])),
        color=alt.Color("core:N", title="core", sort=alt.SortField("core")),
        strokeDash=alt.StrokeDash("kind:N", title=None, sort=["utilisation", "1-min average"],
                                  scale=alt.Scale(domain=["utilisation", "1-min average"], range=[[1, 0], [6, 3]])),
        strokeWidth=alt.StrokeWidth("kind:N", legend=None, scale=alt.Scale(
            domain=["utilisation", "1-min average"], range=[1, 2.5])),
        opacity=alt.Opacity("kind:N", legend=None, scale=alt.Scale(
            domain=["utilisation", "1-min average"], range=[0.45, 1.0])),
        tooltip=[alt.Tooltip("time:T", format="%H:%M:%S"), "core:N", "kind:N",
                 alt.Tooltip("value:Q", format=".1f", title="%")],
    ).add_params(_zoom()).properties(height=HEIGHT + 60, title=alt.TitleParams(
        "CPU utilisation per core", subtitle="thin: utilisation of each sample; dashed: the function's "
        "one-minute moving average", subtitleFontSize=11, anchor="start"))


def cpu_heatmap(data: pd.DataFrame) -> alt.Chart:
    """The compact view for many cores: one row per core, colour = utilisation."""
    used = data[data["kind"] == "utilisation"]
    return alt.Chart(used).mark_rect().encode(
        x=_time(),
        y=alt.Y("core:N", title=None, sort=alt.SortField("core")),
        color=alt.Color("value:Q", title="CPU %", scale=alt.Scale(domain=[0, 100], scheme="inferno")),
        tooltip=[alt.Tooltip("time:T", format="%H:%M:%S"), "core:N", alt.Tooltip("value:Q", format=".1f")],
    ).properties(height=max(HEIGHT, 12 * used["core"].nunique()), title="CPU utilisation per core")


def memory_chart(samples: pd.DataFrame) -> alt.Chart:
    """Figure 2: virtual memory used, buffers, cached and free, stacked, in GiB."""
    parts = {"virtual_memory-used": "used", "virtual_memory-buffers": "buffers",
             "virtual_memory-cached": "cached", "virtual_memory-free": "free"}
    data = tidy(samples, parts)
    data["value"] = data["value"] / GIB
    return alt.Chart(data).mark_area(opacity=0.8).encode(
        x=_time(),
        y=alt.Y("value:Q", title="GiB", stack="zero"),
        color=alt.Color("series:N", title=None, sort=list(parts.values()),
                        scale=alt.Scale(domain=list(parts.values()),
                                        range=["#d62728", "#ff9896", "#ffbb78", "#98df8a"])),
        order=alt.Order("order:Q"),
        tooltip=[alt.Tooltip("time:T", format="%H:%M:%S"), "series:N", alt.Tooltip("value:Q", format=".2f")],
    ).transform_calculate(
        order="indexof(['used', 'buffers', 'cached', 'free'], datum.series)"
    ).add_params(_zoom()).properties(height=HEIGHT, title="Virtual memory")


def line_chart(data: pd.DataFrame, title: str, unit: str, zero: bool = False) -> alt.Chart:
    """One or more series over time (frequency, processes, the function's outputs)."""
    return alt.Chart(data).mark_line().encode(
        x=_time(),
        y=alt.Y("value:Q", title=unit, scale=alt.Scale(zero=zero), axis=alt.Axis(format=",.4~f")),
        color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom", labelLimit=400)),
        tooltip=[alt.Tooltip("time:T", format="%H:%M:%S"), "series:N", alt.Tooltip("value:Q", format=",.2f")],
    ).add_params(_zoom()).properties(height=HEIGHT, title=title)


def output_series(outputs: pd.DataFrame) -> dict[str, str]:
    """The function's numeric outputs that the CPU chart does not already show."""
    return {c: c for c in outputs.columns if not CPU_AVERAGE.match(str(c))}
