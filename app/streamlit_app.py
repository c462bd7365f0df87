"""Live host metrics and the function's outputs: `streamlit run app`.

With no REDIS_URL / REDIS_HOST set, the app starts the embedded stack (Valkey + collector + runtime)
by itself; with Redis configured it only reads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `streamlit run app` from anywhere

import redis  # noqa: E402
import streamlit as st  # noqa: E402

from app import charts, data, embedded  # noqa: E402
from runtime import schema  # noqa: E402
from runtime import status as status_times  # noqa: E402

st.set_page_config(page_title="Host metrics", page_icon="📈", layout="wide")

settings = data.DashboardSettings.from_env(os.environ)


@st.cache_resource(show_spinner="Starting the embedded Valkey server, collector and runtime…")
def embedded_stack():
    return embedded.start_embedded_stack()


@st.cache_resource
def metrics_store(redis_settings, keys) -> data.MetricsStore:
    return data.MetricsStore(redis_settings, keys)


if settings.embedded:
    stack, redis_settings = embedded_stack()
else:
    stack, redis_settings = None, settings.redis

@st.cache_data(ttl=5, show_spinner=False)
def known_hosts(_store: data.MetricsStore, registry: str) -> list[str]:
    try:
        return sorted(_store.client.hkeys(registry))
    except redis.RedisError:
        return []


base_store = metrics_store(redis_settings, settings.keys)
hosts = known_hosts(base_store, settings.keys.hosts)

# --- sidebar: connection, keys, controls ---------------------------------------------------------
with st.sidebar:
    st.header("Host metrics")
    if stack is not None:
        st.success("Embedded stack: Valkey, collector and runtime started by this app.")
        for label, value in embedded.describe(stack).items():
            st.text(f"{label}: {value}")
    else:
        st.info("Reading from a configured Redis; this app starts nothing.")
        st.text(f"Redis: {redis_settings.safe_url()}")
    host = None
    if hosts:  # collectors with HOST_ID publish per host
        host = st.selectbox("Host", hosts, help="Hosts whose collectors publish with HOST_ID")
    keys = settings.keys.for_host(host) if host else settings.keys
    st.text(f"input key: {keys.input}")
    st.text(f"output key: {keys.output or '(none: set REDIS_OUTPUT_KEY)'}")
    window_label = st.select_slider("Time window", options=list(data.WINDOWS), value="15 min")
    live = st.toggle("Live", value=True, help=f"Refresh every {settings.refresh_seconds:g} s")
    cpu_view = st.radio("CPU view", ["auto", "lines", "heatmap"], horizontal=True,
                        help="auto: lines up to 8 cores, a heatmap beyond")

seconds = data.WINDOWS[window_label]
store = metrics_store(redis_settings, keys)


def kpi(column, label: str, series, fmt: str, unit: str = "") -> None:
    values = series.dropna() if series is not None else None
    if values is None or values.empty:
        column.metric(label, "–")
        return
    current = float(values.iloc[-1])
    delta = current - float(values.iloc[-2]) if len(values) > 1 else None
    column.metric(label, f"{current:{fmt}}{unit}", None if delta is None else f"{delta:+{fmt}}{unit}")


def health(snapshot: data.Snapshot) -> None:
    status = snapshot.status
    st.subheader("Runtime health")
    if not keys.output:
        st.info("No output key configured (REDIS_OUTPUT_KEY): the runtime's outputs and health are not shown.")
        return
    if snapshot.outputs_from_plain_key:
        st.info("Outputs come from a plain key (a runtime without an output stream, like the course's): "
                "their history is what this dashboard has seen since it started.")
        return
    if not status:
        st.warning(f"Runtime not running: no status at `{keys.status}` yet. "
                   "Start it with `python -m runtime`.")
        return
    if snapshot.runtime_stale:
        st.warning(f"Runtime not running or stuck: last heartbeat {status.get('heartbeat', 'never')}.")
    columns = st.columns(5)
    last_execution = status.get("last_execution", "")
    age = ""
    if last_execution:
        seconds = status_times.seconds_since(status_times.parse_instant(last_execution))  # a zoned instant
        age = f"{seconds:.0f} s ago" if seconds is not None else ""
    columns[0].metric("Last execution", age or "never", help=last_execution)
    columns[1].metric("Lag", f"{float(status.get('lag_seconds', 'nan')) * 1000:.0f} ms"
                      if status.get("lag_seconds") else "–")
    columns[2].metric("Invocations", f"{int(status.get('invocations', 0)):,}")
    columns[3].metric("Errors", f"{int(status.get('errors', 0)):,}")
    columns[4].metric("State", status.get("state", "?"), help=f"mode: {status.get('mode', '?')}")
    st.caption(f"Function version: {status.get('function_version', 'unknown')}")
    if status.get("env_durable") == "0":
        st.warning(f"context.env is not durable (kept in memory only, lost on restart): {status.get('env_error')}")
    if status.get("function_error"):
        st.error(f"The function does not load: {status['function_error']}")
    if snapshot.last_error:
        error = snapshot.last_error
        with st.expander(f"Latest error: {error.get('fault')} at {error.get('time')}"):
            st.text(error.get("message", ""))
            st.code(error.get("traceback") or "(no traceback)", language="text")


run_every = settings.refresh_seconds if live else None


@st.fragment(run_every=run_every)
def live_panels() -> None:
    try:
        snapshot = store.snapshot()
    except redis.AuthenticationError:
        st.error(f"Redis at {redis_settings.safe_url()} refused the password. Set REDIS_PASSWORD "
                 "(or the password in REDIS_URL) to the server's.")
        return
    except redis.RedisError as error:
        st.error(f"Cannot reach Redis at {redis_settings.safe_url()} ({error}). Start the server, fix "
                 "REDIS_URL / REDIS_HOST / REDIS_PORT, or unset them to let this app start its own.")
        return
    samples = data.window(snapshot.samples, seconds)
    if samples.empty:
        if snapshot.latest_sample:
            st.info(f"Only the plain `{keys.input}` key is written (no `{keys.input_stream}`): "
                    f"latest sample at {snapshot.latest_sample[schema.TIMESTAMP]}. Charts need the stream; "
                    "run `python -m runtime.collector` for history.")
        else:
            st.info(f"No samples yet in `{keys.input_stream}`. The collector publishes one every "
                    "INTERVAL seconds; start it with `python -m runtime.collector` if it is not running.")
        health(snapshot)
        return
    if snapshot.malformed_samples or snapshot.malformed_outputs:
        st.caption(f"Skipped malformed entries: {snapshot.malformed_samples} samples, "
                   f"{snapshot.malformed_outputs} outputs.")
    cpu_columns = schema.cpu_fields(samples.columns)
    kpis = st.columns(4)
    kpi(kpis[0], "CPU (mean of cores)", samples[cpu_columns].mean(axis=1), ".1f", " %")
    kpi(kpis[1], "Memory used", samples.get(schema.MEMORY_PERCENT), ".1f", " %")
    kpi(kpis[2], "CPU frequency", samples.get(schema.CPU_FREQ), ",.0f", " MHz")
    kpi(kpis[3], "Processes", samples.get(schema.N_PIDS), ",.0f")

    small = data.downsample(samples, seconds)
    outputs = data.downsample(data.window(snapshot.outputs, seconds), seconds)
    cpu = charts.cpu_frame(small, outputs)
    heatmap = cpu_view == "heatmap" or (cpu_view == "auto" and len(cpu_columns) > 8)
    st.altair_chart(charts.cpu_heatmap(cpu) if heatmap else charts.cpu_lines(cpu), width="stretch")

    left, right = st.columns(2)
    left.altair_chart(charts.memory_chart(small), width="stretch")
    right.altair_chart(charts.line_chart(charts.tidy(small, {schema.CPU_FREQ: "frequency"}),
                                         "CPU frequency", "MHz"), width="stretch")
    left, right = st.columns(2)
    left.altair_chart(charts.line_chart(charts.tidy(small, {schema.N_PIDS: "processes"}),
                                        "Number of processes", "processes"), width="stretch")
    other = charts.output_series(outputs)
    if other:
        right.altair_chart(charts.line_chart(charts.tidy(outputs, other), "Function outputs", "value"),
                           width="stretch")
    else:
        right.info("The function has stored no numeric outputs in this window yet.")
    health(snapshot)
    if len(hosts) > 1:
        st.subheader("All hosts")
        st.dataframe(data.host_overview(store.client, settings.keys), hide_index=True,
                     column_config={"CPU %": st.column_config.NumberColumn(format="%.1f"),
                                    "memory %": st.column_config.NumberColumn(format="%.1f")})


live_panels()
