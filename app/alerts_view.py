"""Alerts for the page: what fires now, recent transitions, rule thresholds and firing periods.

Pure readers (Redis -> DataFrame) and chart layers (DataFrame -> Altair); the evaluator
(`python -m runtime.alerts`) writes everything read here. Times are naive local times, like the
samples' timestamps the charts' time axes use.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import altair as alt
import pandas as pd
import redis

from runtime import schema
from runtime.alerts.config import alert_keys
from runtime.status import STALE_AFTER_SECONDS, parse_instant, seconds_since

RECENT = 200  # transitions read for "recent alerts"
SEVERITY_COLORS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4", "none": "#7f7f7f"}
STATE_COLUMNS = ["rule", "host", "phase", "since", "value", "severity", "threshold", "op"]
TRANSITION_COLUMNS = ["time", "rule", "host", "phase", "value", "severity", "summary", "since", "fingerprint"]
PERIOD_COLUMNS = ["rule", "host", "severity", "start", "end"]
THRESHOLD_COLUMNS = ["rule", "source", "value", "op", "threshold", "severity", "hosts"]


@dataclass(frozen=True)
class AlertsSnapshot:
    """Everything the page draws about alerts, read at once."""

    evaluator: EvaluatorView
    states: pd.DataFrame  # pending and firing now (STATE_COLUMNS)
    recent: pd.DataFrame  # the newest transitions, oldest first (TRANSITION_COLUMNS)
    periods: pd.DataFrame  # firing periods (PERIOD_COLUMNS)
    thresholds: pd.DataFrame  # one row per rule (THRESHOLD_COLUMNS)
    by_host: pd.DataFrame  # per host: the rules firing and pending, for the all-hosts table


def read_alerts(client: redis.Redis, keys: schema.Keys, now: datetime | None = None) -> AlertsSnapshot:
    """The page's one call: status, states, recent transitions, periods (open ones end at `now`), thresholds."""
    evaluator = read_evaluator(client, keys)
    states = read_states(client, keys, evaluator)
    recent = read_transitions(client, keys)
    return AlertsSnapshot(evaluator, states, recent, firing_periods(recent, now), rule_thresholds(evaluator),
                          host_alerts(states))


def local_time(millis: Any) -> datetime | None:
    """Server milliseconds as a naive local time (the samples' clock on the charts)."""
    try:
        return datetime.fromtimestamp(int(millis) / 1000)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True)
class EvaluatorView:
    """The evaluator's status as the page shows it; every field optional."""

    present: bool = False
    running: bool = False
    rules: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)  # {"rule", "message"}
    rules_error: str = ""
    webhooks: dict[str, dict[str, str]] = field(default_factory=dict)  # URL (masked) -> state


def read_evaluator(client: redis.Redis, keys: schema.Keys) -> EvaluatorView:
    """The evaluator's status hash; malformed fields read as empty, never raise."""
    raw = client.hgetall(alert_keys(keys).status)
    if not raw:
        return EvaluatorView()
    age = seconds_since(parse_instant(raw.get("heartbeat")))
    webhooks = {name.removeprefix("webhook "): _json(text, {}) for name, text in raw.items()
                if name.startswith("webhook ")}
    return EvaluatorView(
        present=True, running=raw.get("state") == "running" and age is not None and age <= STALE_AFTER_SECONDS,
        rules=[r for r in _json(raw.get("rules"), []) if isinstance(r, dict)],
        problems=[p for p in _json(raw.get("rule_problems"), []) if isinstance(p, dict)],
        rules_error=raw.get("rules_error", ""), webhooks={k: v for k, v in webhooks.items() if isinstance(v, dict)})


def rule_thresholds(view: EvaluatorView) -> pd.DataFrame:
    """One row per rule: what it compares, to what, how severe."""
    rows = [{column: rule.get(column if column != "rule" else "name") for column in THRESHOLD_COLUMNS}
            for rule in view.rules]
    frame = pd.DataFrame(rows, columns=THRESHOLD_COLUMNS)
    frame["threshold"] = pd.to_numeric(frame["threshold"], errors="coerce")
    return frame.dropna(subset=["threshold"])


def read_states(client: redis.Redis, keys: schema.Keys, view: EvaluatorView | None = None) -> pd.DataFrame:
    """Pending and firing alerts now: since when, last value, severity and threshold of their rule."""
    rules = {rule.get("name"): rule for rule in (view or read_evaluator(client, keys)).rules}
    rows = []
    for name, text in client.hgetall(alert_keys(keys).states).items():
        rule, _, host = name.partition("@")
        state = _json(text, {})
        if not isinstance(state, dict) or state.get("phase") not in ("pending", "firing"):
            continue
        about = rules.get(rule, {})
        rows.append({"rule": rule, "host": host or "local", "phase": state["phase"],
                     "since": local_time(state.get("active_ms")), "value": _float(state.get("value")),
                     "severity": about.get("severity", "none"), "threshold": _float(about.get("threshold")),
                     "op": about.get("op", "")})
    frame = pd.DataFrame(rows, columns=STATE_COLUMNS)
    return frame.sort_values(["phase", "since"], ascending=[True, True], ignore_index=True)


def read_transitions(client: redis.Redis, keys: schema.Keys, count: int = RECENT) -> pd.DataFrame:
    """The newest `count` transitions, oldest first; malformed entries are skipped."""
    rows = []
    for _, fields in reversed(client.xrevrange(alert_keys(keys).transitions, count=count)):
        moment = local_time(fields.get("at_ms"))
        if moment is None or not fields.get("rule"):
            continue
        rows.append({"time": moment, "rule": fields["rule"], "host": fields.get("host") or "local",
                     "phase": fields.get("phase", ""), "value": _float(fields.get("value")),
                     "severity": fields.get("severity", "none"), "summary": fields.get("summary", ""),
                     "since": local_time(fields.get("active_ms")), "fingerprint": fields.get("fingerprint", "")})
    return pd.DataFrame(rows, columns=TRANSITION_COLUMNS)


def firing_periods(transitions: pd.DataFrame, now: datetime | None = None) -> pd.DataFrame:
    """From each firing to its resolution (still firing: to `now`), per rule and host."""
    open_: dict[tuple[str, str], dict[str, Any]] = {}
    periods = []
    for row in transitions.itertuples(index=False):
        key = (row.rule, row.host)
        if row.phase == "firing":
            open_[key] = {"rule": row.rule, "host": row.host, "severity": row.severity, "start": row.time}
        elif row.phase == "resolved":
            start = open_.pop(key, None) or {"rule": row.rule, "host": row.host, "severity": row.severity,
                                             "start": row.since}  # fired before the transitions read
            periods.append({**start, "end": row.time})
    end = now or datetime.now()
    periods.extend({**period, "end": end} for period in open_.values())
    return pd.DataFrame(periods, columns=PERIOD_COLUMNS)


def host_alerts(states: pd.DataFrame) -> pd.DataFrame:
    """Per host, the rules firing and pending now: a column for the all-hosts table."""
    rows = [{"host": host, "firing": ", ".join(group.loc[group.phase == "firing", "rule"]),
             "pending": ", ".join(group.loc[group.phase == "pending", "rule"])}
            for host, group in states.groupby("host")]
    return pd.DataFrame(rows, columns=["host", "firing", "pending"])


def thresholds_for(thresholds: pd.DataFrame, source: str, fields: Iterable[str]) -> pd.DataFrame:
    """The rules that concern a chart: their source's value matches one of the chart's fields."""
    names = list(fields)
    concerns = [row.source == source and any(fnmatch.fnmatchcase(name, str(row.value)) for name in names)
                for row in thresholds.itertuples(index=False)]
    return thresholds[concerns] if len(thresholds) else thresholds


def threshold_layer(thresholds: pd.DataFrame) -> alt.Chart:
    """A dashed horizontal rule at each threshold, coloured by severity: layer it on the chart it concerns."""
    return alt.Chart(thresholds).mark_rule(strokeDash=[4, 4], strokeWidth=1.5, clip=True).encode(
        y="threshold:Q",
        color=_severity_color(),
        tooltip=["rule:N", "op:N", alt.Tooltip("threshold:Q", format=",.2f"), "severity:N"],
    )


def firing_layer(periods: pd.DataFrame) -> alt.Chart:
    """Shaded bands over the time axis while an alert fired: layer it under a time chart."""
    return alt.Chart(periods).mark_rect(opacity=0.15, clip=True).encode(
        x="start:T", x2="end:T",
        color=_severity_color(),
        tooltip=["rule:N", "host:N", "severity:N", alt.Tooltip("start:T", format="%H:%M:%S"),
                 alt.Tooltip("end:T", format="%H:%M:%S")],
    )


def _severity_color() -> alt.Color:
    return alt.Color("severity:N", title="alert", scale=alt.Scale(domain=list(SEVERITY_COLORS),
                                                                  range=list(SEVERITY_COLORS.values())))


def _json(text: Any, default: Any) -> Any:
    if not isinstance(text, str) or not text:
        return default
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return default


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
