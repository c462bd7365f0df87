"""Live host metrics and the function's outputs: `streamlit run app`.

With no REDIS_URL / REDIS_HOST set, the app starts the embedded stack (Valkey + collector + runtime)
by itself; with Redis configured it only reads.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `streamlit run app` from anywhere

import redis  # noqa: E402
import streamlit as st  # noqa: E402

from app import alerts_view, data, embedded, hosts, panels, views  # noqa: E402
from app.stores import known_hosts, metrics_store  # noqa: E402
from runtime.config import ConfigError, RedisSettings  # noqa: E402

log = logging.getLogger(__name__)
STARTING_SECONDS = 30.0  # an embedded stack younger than this is "starting", not "not running"

st.set_page_config(page_title="Host metrics", page_icon="📈", layout="wide")

try:
    settings = data.DashboardSettings.from_env(os.environ)
except ConfigError as error:
    st.error(f"Configuration: {error}. Fix it and restart `streamlit run app`.")
    st.stop()


@st.cache_resource
def ready_since(url: str) -> float:
    """When this app process first saw the embedded stack ready (its runtime needs a few seconds more)."""
    return time.monotonic()


@st.fragment(run_every=0.5)
def wait_for_stack() -> None:
    """While the embedded stack starts, say so; rerun the page once it is ready, or show why it failed."""
    current = embedded.ensure_started()
    if current.state is embedded.State.READY:
        st.rerun(scope="app")
    elif current.state is embedded.State.FAILED:
        st.error(f"{current.message}. Fix the cause (the log is under DATA_DIR) and reload, or set REDIS_URL "
                 "to read a Redis of your own.")
    else:
        st.info(f"{current.message} This takes a few seconds.")


if settings.embedded:
    stack_status = embedded.ensure_started()
    if stack_status.state is not embedded.State.READY:
        wait_for_stack()
        st.stop()
    stack, redis_settings = stack_status.stack, RedisSettings(stack_status.stack.url)
    starting = time.monotonic() - ready_since(stack.url) < STARTING_SECONDS
else:
    stack, redis_settings, starting = None, settings.redis, False

base_store = metrics_store(redis_settings, settings.keys)
registry, invalid_hosts = known_hosts(base_store, settings.keys.hosts)

# --- sidebar: connection, host, window ------------------------------------------------------------
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
    if registry:  # collectors with HOST_ID publish per host; type to search
        host = st.selectbox("Host", sorted(registry), help=f"{len(registry):,} hosts publish with HOST_ID; "
                            "type to search")
    if invalid_hosts:
        st.caption(f"Skipped {invalid_hosts} registered host ids that are not node names.")
    keys = settings.keys.for_host(host) if host else settings.keys
    st.text(f"input key: {keys.input}")
    st.text(f"output key: {keys.output or '(none: set REDIS_OUTPUT_KEY)'}")
    absolute = st.toggle("Pick a time range", help="Show a fixed stretch of the last day instead of the latest")
    if absolute:
        today = datetime.now()
        day = st.date_input("Day", value=today.date(), min_value=(today - timedelta(days=1)).date(),
                            max_value=today.date())
        start_time = st.time_input("From", value=(today - timedelta(hours=1)).time().replace(microsecond=0))
        end_time = st.time_input("To", value=today.time().replace(microsecond=0))
        range_end = datetime.combine(day, end_time)
        seconds = max(60.0, (range_end - datetime.combine(day, start_time)).total_seconds())
    else:
        range_end = None
        window_label = st.segmented_control("Time window", list(data.WINDOWS), default="15 min",
                                            required=True)
        seconds = data.WINDOWS[window_label or "15 min"]
    live = st.toggle("Live", value=not absolute, disabled=absolute,
                     help=f"Refresh every {settings.refresh_seconds:g} s")
    cpu_view = st.radio("CPU view", ["auto", "lines", "heatmap"], horizontal=True,
                        help="auto: lines up to 8 cores, a heatmap beyond")

store = metrics_store(redis_settings, keys)


def read() -> data.Snapshot | None:
    """The snapshot, or None after saying why Redis could not be read."""
    try:
        return store.snapshot(seconds, range_end)
    except redis.AuthenticationError:
        st.error(f"Redis at {redis_settings.safe_url()} refused the password. Set REDIS_PASSWORD "
                 "(or the password in REDIS_URL) to the server's.")
    except redis.ConnectionError as error:
        if starting:
            st.info("The embedded stack is starting: Valkey, the collector and the runtime come up in a few seconds.")
        else:
            st.error(f"Cannot reach Redis at {redis_settings.safe_url()} ({error}). Start the server, fix "
                     "REDIS_URL / REDIS_HOST / REDIS_PORT, or unset them to let this app start its own.")
    except redis.RedisError as error:
        st.error(f"Redis at {redis_settings.safe_url()} answered with an error: {error}")
    return None


def notes(snapshot: data.Snapshot) -> None:
    """What was skipped or is unusual, in one place above the charts."""
    for problem in snapshot.problems:
        st.warning(problem)
    if snapshot.skipped_samples or snapshot.skipped_outputs:
        st.caption(f"Skipped malformed entries: {snapshot.skipped_samples} samples, "
                   f"{snapshot.skipped_outputs} outputs (latest: {snapshot.skip_reason}).")
    if snapshot.future_samples:
        st.warning(f"{snapshot.future_samples} samples are stamped after the server's now "
                   f"({snapshot.window.end:%Y-%m-%d %H:%M:%S}): a collector's clock runs ahead. Not drawn.")
    if snapshot.loading:
        st.caption("Reading older history in the background; the window fills in within seconds.")
    source = "every sample" if snapshot.source == "raw" else f"the collector's {snapshot.source} means"
    state = "Live" if live else "⏸ Paused"
    st.caption(f"{state}: {panels.stamp(snapshot.window)} (server time), from {source}.")


def no_samples(snapshot: data.Snapshot) -> None:
    if starting:
        st.info("The embedded stack is starting: the first samples arrive within a few seconds.")
    elif snapshot.latest_sample:
        st.info(f"Only the plain `{keys.input}` key is written (no `{keys.input_stream}`): latest sample at "
                f"{snapshot.latest_sample.get('timestamp')}. Charts need the stream; run "
                "`python -m runtime.collector` for history.")
    else:
        st.info(f"No samples in this window in `{keys.input_stream}`. The collector publishes one every "
                "INTERVAL seconds; start it with `python -m runtime.collector` if it is not running.")


def draw(snapshot: data.Snapshot, alerts: alerts_view.AlertsSnapshot) -> None:
    notes(snapshot)
    if snapshot.samples.empty:
        no_samples(snapshot)
        panels.health(snapshot, keys.output, starting)
        return
    view = views.build(snapshot)
    chart_alerts = alerts_view.ChartAlerts.of(alerts, host)
    panels.kpis(snapshot, view)
    panels.cpu_panel(view, snapshot.window, cpu_view, chart_alerts)
    panels.host_panels(view, snapshot.window, chart_alerts)
    panels.extra_panels(snapshot, view, snapshot.window)
    panels.top_processes(snapshot.top)
    panels.outputs_panel(view, snapshot, snapshot.window, chart_alerts)
    panels.health(snapshot, keys.output, starting)


def all_hosts(alerts: alerts_view.AlertsSnapshot) -> None:
    st.subheader(f"All hosts ({len(registry):,})")
    left, right = st.columns(2)
    sort = left.selectbox("Sort by", list(hosts.SORTS))
    overview = hosts.with_alerts(hosts.host_overview(store.client, settings.keys, registry,
                                                     data.server_now(store.client)),
                                 alerts_view.host_cells(alerts.by_host))
    pages = hosts.page_count(len(overview))
    page = right.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1) - 1
    st.dataframe(hosts.sorted_page(overview, sort, page), hide_index=True, width="stretch",
                 column_config={"CPU %": st.column_config.NumberColumn(format="%.1f"),
                                "memory %": st.column_config.NumberColumn(format="%.1f"),
                                "seen s ago": st.column_config.NumberColumn(format="%.0f")})


@st.fragment(run_every=settings.refresh_seconds if live else None)
def live_panels() -> None:
    try:
        top = st.container()  # alerts first on the page, read after the samples (their window's end)
        snapshot = read()
        alerts = alerts_view.read_alerts(base_store.client, settings.keys, snapshot and snapshot.window.end)
        with top:
            panels.alerts_panel(alerts, settings.keys.alerts.status)
        if snapshot is None:
            return
        draw(snapshot, alerts)
        if len(registry) > 1:
            all_hosts(alerts)
    except Exception as error:  # data the page cannot draw: say so, forget it, reread on the next tick
        log.exception("a tick could not be drawn")
        st.warning(f"Skipped this tick: the data read could not be used ({type(error).__name__}: "
                   f"{str(error)[:300]}). The page rereads its data on the next tick.")
        store.reset()


live_panels()


def export_section() -> None:
    """Outside the live part, so a button stays the same between ticks; files are built on click."""
    try:
        snapshot = store.snapshot(seconds, range_end)
    except Exception:  # the live part already says why
        return
    panels.downloads(snapshot)


export_section()
