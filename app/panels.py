"""The page's panels: each draws one part of a snapshot with Streamlit; no Redis reads here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import pandas as pd
import streamlit as st

from app import charts, export, render, views
from app.alerts_view import AlertsSnapshot, ChartAlerts
from app.data import Snapshot
from app.timeline import Window
from runtime import schema, status

CHART_WIDTH = 440  # px: two side by side from ~1,000 px of page, one per row below, never squeezed


def stamp(window: Window) -> str:
    """The window as words: its start and end, dates only when they differ."""
    fmt = "%d %b %H:%M:%S" if window.start.date() != window.end.date() else "%H:%M:%S"
    return f"{window.start:{fmt}} – {window.end:{fmt}} ({window.end:%d %b %Y})"


def _pair(series: pd.Series | None) -> tuple[float | None, float | None]:
    values = series.dropna() if series is not None else pd.Series(dtype=float)
    if values.empty:
        return None, None
    return float(values.iloc[-1]), (float(values.iloc[-2]) if len(values) > 1 else None)


def kpi(column, label: str, series: pd.Series | None, fmt: str, unit: str, points: bool = False) -> None:
    """A latest value with its change; for CPU and memory a rise is bad (red), in percentage points."""
    current, previous = _pair(series)
    if current is None:
        column.metric(label, "–", width="content")
        return
    delta = None
    if previous is not None and f"{abs(current - previous):{fmt}}".strip("0.,") != "":
        delta = f"{current - previous:+{fmt}}{' pp' if points else unit}"
    column.metric(label, f"{current:{fmt}}{unit}", delta, delta_color="inverse" if points else "off",
                  width="content")


def kpis(snapshot: Snapshot, view: views.View) -> None:
    latest = snapshot.latest_raw
    cpu = latest[schema.cpu_fields(latest.columns)].mean(axis=1) if not latest.empty else None
    rates = view.samples
    entries: list[tuple[str, pd.Series | None, str, str, bool]] = [
        ("CPU (mean of cores)", cpu, ".1f", " %", True),
        ("Memory used", latest.get(schema.MEMORY_PERCENT), ".1f", " %", True),
        ("Network in", _scaled(rates.get(views.net("bytes_recv"))), ".1f", " KiB/s", False),
        ("Network out", _scaled(rates.get(views.net("bytes_sent"))), ".1f", " KiB/s", False),
        ("CPU frequency", _ghz(latest.get(schema.CPU_FREQ)), ".2f", " GHz", False),
        ("Processes", latest.get(schema.N_PIDS), ",.0f", "", False),
    ]
    if "load_avg-1" in latest:
        entries.append(("Load (1 min)", latest.get("load_avg-1"), ".2f", "", False))
    if "swap_memory-percent" in latest:
        entries.append(("Swap used", latest.get("swap_memory-percent"), ".1f", " %", True))
    row = st.container(horizontal=True, wrap=True, gap="medium")  # wraps in narrow windows, never cuts a value
    for entry in entries:
        kpi(row, *entry)


def _scaled(series: pd.Series | None) -> pd.Series | None:
    return None if series is None else series / 1024


def _ghz(series: pd.Series | None) -> pd.Series | None:
    return None if series is None else series / 1000


def cpu_panel(view: views.View, window: Window, cpu_view: str, alerts: ChartAlerts) -> None:
    cpu = charts.cpu_frame(view.samples, view.outputs)
    cores = cpu["core"].nunique() if not cpu.empty else 0
    heatmap = cpu_view == "heatmap" or (cpu_view == "auto" and cores > 8)
    if heatmap:  # gaps show as empty cells; rules across the cells' rows would hide them
        render.show(st, charts.cpu_heatmap(cpu, window, view.bucket))
    else:
        lines = charts.annotated(charts.cpu_lines(cpu, window), view.events, window)
        render.show(st, alerts.on(lines, "sample", schema.cpu_fields(view.samples.columns)))


def _gib_per_percent(samples: pd.DataFrame) -> float | None:
    """GiB in one percent of the latest memory total: memory-percent thresholds on the GiB chart."""
    total = samples.get(schema.MEMORY_FIELDS[0])
    total = total.dropna() if total is not None else pd.Series(dtype=float)
    return float(total.iloc[-1]) / charts.GIB / 100 if not total.empty and total.iloc[-1] > 0 else None


def host_panels(view: views.View, window: Window, alerts: ChartAlerts) -> None:
    small, events = view.samples, view.events
    net = views.net
    memory = charts.memory_chart(small, window)
    pairs = [
        (lambda: memory),
        (lambda: charts.line_chart(charts.tidy(small, {schema.CPU_FREQ: "frequency"}), window,
                                   "CPU frequency", "MHz")),
        (lambda: charts.line_chart(charts.tidy(small, {net("bytes_recv"): "in", net("bytes_sent"): "out"}),
                                   window, "Network throughput", "bytes/s", zero=True, fmt=".3~s")),
        (lambda: charts.line_chart(charts.tidy(small, {net("packets_recv"): "in", net("packets_sent"): "out"}),
                                   window, "Network packets", "packets/s", zero=True, fmt=",.4~s")),
        (lambda: charts.line_chart(charts.tidy(small, {net(n): n for n in ("errin", "errout", "dropin", "dropout")}),
                                   window, "Network errors and drops", "per second", zero=True)),
        (lambda: charts.line_chart(charts.tidy(small, {
            views.RATE_PREFIX + "cpu_stats-ctx_switches": "context switches",
            views.RATE_PREFIX + "cpu_stats-interrupts": "interrupts"}),
            window, "Context switches and interrupts", "per second", zero=True, fmt=",.4~s")),
        (lambda: charts.line_chart(charts.tidy(small, {schema.N_PIDS: "processes"}), window,
                                   "Number of processes", "processes")),
    ]
    builders = [lambda b=b: charts.annotated(b(), events, window) for b in pairs]
    builders[0] = lambda: alerts.on(charts.annotated(memory, events, window), "sample", [schema.MEMORY_PERCENT],
                                    _gib_per_percent(small))
    for index, field in ((1, schema.CPU_FREQ), (6, schema.N_PIDS)):  # charts of a sample field in its own unit
        builders[index] = lambda b=pairs[index], f=field: alerts.on(charts.annotated(b(), events, window),
                                                                    "sample", [f])
    _grid(builders)


def _grid(builders: list[Callable[[], object]]) -> None:
    """Charts of one width that wrap: two per row on a wide page, one per row on a narrow one."""
    row = st.container(horizontal=True, wrap=True, gap="medium")
    for builder in builders:
        render.show(row, builder(), width=CHART_WIDTH)


def extra_panels(snapshot: Snapshot, view: views.View, window: Window) -> None:
    """Load, swap, CPU time split, disks, file systems, temperatures: where the collector sends them."""
    small, columns = view.samples, view.samples.columns
    builders = []
    if load := views.group(columns, "load"):
        builders.append(lambda: charts.line_chart(charts.tidy(small, {c: f"{n} min" for c, n in load.items()}),
                                                  window, "Load average", "load", zero=True))
    if swap := views.group(columns, "swap"):
        builders.append(lambda: charts.line_chart(charts.tidy(small, {c: "swap used" for c in swap}), window,
                                                  "Swap", "% used", zero=True))
    if split := views.group(columns, "cpu_times"):
        builders.append(lambda: charts.area_chart(charts.tidy(small, split, drop_missing=True), window,
                                                  "CPU time split", "% of CPU time"))
    if disk_bytes := views.disk_rates(columns, ("read_bytes", "write_bytes")):
        builders.append(lambda: charts.line_chart(charts.tidy(small, disk_bytes), window, "Disk I/O",
                                                  "bytes/s", zero=True, fmt=".3~s"))
    if disk_ops := views.disk_rates(columns, ("read_count", "write_count")):
        builders.append(lambda: charts.line_chart(charts.tidy(small, disk_ops), window, "Disk operations",
                                                  "ops/s", zero=True))
    if temps := views.group(columns, "temperatures"):
        builders.append(lambda: charts.line_chart(charts.tidy(small, temps), window, "Temperatures", "°C"))
    if mounts := views.group(snapshot.samples.columns, "filesystems"):
        latest = snapshot.samples[list(mounts)].ffill().tail(1)
        builders.append(lambda: charts.usage_bars(charts.tidy(latest, mounts, drop_missing=True),
                                                  "File systems"))
    if builders:
        st.subheader("More from the host")
        _grid(builders)


def top_processes(top: dict | None) -> None:
    if not top:
        return
    st.subheader("Top processes")
    st.caption(f"as of {top.get('timestamp', '?')}")
    left, right = st.columns(2)
    for column, key, title in ((left, "by_cpu", "by CPU"), (right, "by_memory", "by memory")):
        rows = top.get(key)
        table = pd.DataFrame(rows if isinstance(rows, list) else [])
        column.caption(title)
        column.dataframe(table, hide_index=True, width="stretch",
                         column_config={"cpu_percent": st.column_config.NumberColumn("CPU %", format="%.1f"),
                                        "memory_percent": st.column_config.NumberColumn("memory %", format="%.1f"),
                                        "rss": st.column_config.NumberColumn("RSS", format="bytes")})


def outputs_panel(view: views.View, snapshot: Snapshot, window: Window, alerts: ChartAlerts) -> None:
    other = charts.output_series(view.outputs)
    if not other and snapshot.errors.empty:
        st.info("The function has stored no numeric outputs in this window yet.")
        return
    drawn = charts.line_chart(charts.tidy(view.outputs, other), window, "Function outputs", "value")
    marked = charts.with_errors(charts.annotated(drawn, view.events, window), snapshot.errors, window)
    render.show(st, alerts.on(marked, "output", other))


def alerts_panel(alerts: AlertsSnapshot, status_key: str) -> None:
    """Firing and pending alerts first; the evaluator's state, its rule problems and recent transitions."""
    for problem in alerts.problems:
        st.warning(problem)
    _evaluator_state(alerts, status_key)
    states = alerts.states
    firing = int((states["phase"] == "firing").sum())
    if not states.empty:
        words = f"{firing} alert{'s' * (firing != 1)} firing, {len(states) - firing} pending"
        icon = ":material/notifications_active:" if firing else ":material/schedule:"
        (st.error if firing else st.warning)(words, icon=icon)
        st.dataframe(states[["phase", "severity", "rule", "host", "since", "value", "op", "threshold"]],
                     hide_index=True, width="stretch",
                     column_config={"since": st.column_config.DatetimeColumn(format="D MMM HH:mm:ss"),
                                    "value": st.column_config.NumberColumn(format="%.2f"),
                                    "threshold": st.column_config.NumberColumn(format="%.2f")})
    elif alerts.evaluator.present:
        st.caption(f"No alerts firing or pending ({len(alerts.evaluator.rules)} rules).")
    if not alerts.recent.empty:
        with st.expander(f"Recent alerts ({len(alerts.recent)})"):
            recent = alerts.recent.iloc[::-1][["time", "phase", "severity", "rule", "host", "value", "summary"]]
            st.dataframe(recent, hide_index=True, width="stretch",
                         column_config={"time": st.column_config.DatetimeColumn(format="D MMM HH:mm:ss"),
                                        "value": st.column_config.NumberColumn(format="%.2f")})


def _evaluator_state(alerts: AlertsSnapshot, status_key: str) -> None:
    evaluator = alerts.evaluator
    if not evaluator.present:
        st.info(f"No alert evaluator running: no status at `{status_key}`. Start `python -m runtime.alerts` "
                "(rules in alerts.yaml) to have alerts evaluated and shown here.")
        return
    if not evaluator.running:
        age = "never" if evaluator.heartbeat_age is None else f"{evaluator.heartbeat_age:,.0f} s ago"
        st.warning(f"Alert evaluator not running or stuck: last heartbeat {age}. The alerts below may be "
                   "out of date; start `python -m runtime.alerts`.")
    if evaluator.problem:
        st.warning(f"Alert evaluator problem: {evaluator.problem}")
    if evaluator.rules_error:
        st.warning(f"Alert rules not loaded: {evaluator.rules_error}")
    for problem in evaluator.problems:
        st.warning(f"Alert rule `{problem.get('rule', '?')}`: {problem.get('message', '')}")
    for url, state in evaluator.webhooks.items():
        if state.get("state") == "failing":
            st.warning(f"Alert webhook {url} failing since {state.get('since', '?')}: {state.get('last_error', '')}")


def downloads(snapshot: Snapshot) -> None:
    """The window's samples and outputs as they were read (not averaged), CSV and Parquet, built on click."""
    st.subheader("Export this window")
    st.caption(f"{stamp(snapshot.window)}: {len(snapshot.samples):,} samples, {len(snapshot.outputs):,} outputs.")
    columns = st.columns(4)
    slot = 0
    for name, frame in (("samples", snapshot.samples), ("outputs", snapshot.outputs)):
        for label, (suffix, mime, encode) in export.FORMATS.items():
            build = lambda encode=encode, frame=frame: encode(frame)  # noqa: E731 (runs on click)
            columns[slot].download_button(f"{name} ({label})", build, file_name=f"{name}.{suffix}", mime=mime,
                                          on_click="ignore", disabled=frame.empty)
            slot += 1


def health(snapshot: Snapshot, output_key: str | None, starting: bool) -> None:
    """Runtime health from the status contract (runtime/status.py); never raises on odd values."""
    st.subheader("Runtime health")
    current: status.Status = snapshot.status
    if not output_key:
        st.info("No output key configured (REDIS_OUTPUT_KEY): the runtime's outputs and health are not shown.")
        return
    if snapshot.outputs_from_plain_key:
        st.info("Outputs come from a plain key (a runtime without an output stream, like the course's): "
                "their history is what this dashboard has seen since it started.")
        return
    if not current.present:
        if starting:
            st.info("The embedded runtime is starting: its status appears within a few seconds.")
        else:
            st.warning(f"Runtime not running: no status at `{output_key}:status` yet. "
                       "Start it with `python -m runtime`.")
        return
    _health_metrics(current)


def _age(moment, now) -> str:
    age = status.seconds_since(moment, now)
    if age is None:
        return "never"
    return f"{age:,.0f} s ago" if age >= 0 else f"{-age:,.0f} s ahead (clocks differ)"


def _health_metrics(current: status.Status) -> None:
    now = datetime.now(timezone.utc)
    if current.stale(now):
        st.warning(f"Runtime not running or stuck: last heartbeat {_age(current.heartbeat, now)}.")
    if current.problem:
        st.warning(f"Runtime problem: {current.problem}")
    row = st.container(horizontal=True, wrap=True, gap="large")
    row.metric("Last execution", _age(current.last_execution, now), help=str(current.last_execution or "never"),
               width="content")
    row.metric("Lag", "–" if current.lag_seconds is None else f"{current.lag_seconds * 1000:,.0f} ms", width="content")
    row.metric("Invocations", f"{current.invocations:,}", width="content")
    row.metric("Errors", f"{current.errors:,}", width="content")
    row.metric("State", current.state or "?", help=f"mode: {current.mode or '?'}", width="content")
    st.caption(f"Function version: {current.function_version or 'unknown'}")
    if current.env_durable is False:
        st.warning(f"context.env is not durable (kept in memory only, lost on restart): {current.env_error}")
    if current.function_error:
        st.error(f"The function does not load: {current.function_error}")
    if current.unreadable:
        st.caption(f"Status fields that could not be read: {', '.join(current.unreadable)}")
    if current.last_error:
        error = current.last_error
        with st.expander(f"Latest error: {error.get('fault')} at {error.get('time')}"):
            st.text(error.get("message", ""))
            st.code(error.get("traceback") or "(no traceback)", language="text")
