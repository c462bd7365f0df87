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

from app.charts import relayer
from runtime import schema
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
    problems: tuple[str, ...] = ()  # what could not be read (a key of the wrong type, Redis away)


def read_alerts(client: redis.Redis, keys: schema.Keys, now: datetime | None = None) -> AlertsSnapshot:
    """The page's one call, one round trip: status, states, recent transitions, periods (open ones end at
    `now`), thresholds. Never raises for Redis: a key that cannot be read reads as empty, with a problem."""
    names = keys.alerts
    problems: list[str] = []
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(names.status).hgetall(names.states).xrevrange(names.transitions, count=RECENT)
        replies = pipe.execute(raise_on_error=False)
    except (redis.RedisError, OSError) as error:  # Redis away: one note, not one per key
        problems.append(f"Alerts not read: {type(error).__name__}: {str(error)[:200]}")
        replies = [{}, {}, []]
    empty: list[Any] = [{}, {}, []]
    for index, (key, reply) in enumerate(zip((names.status, names.states, names.transitions), replies)):
        if isinstance(reply, Exception):
            problems.append(f"Alerts not read from `{key}`: {type(reply).__name__}: {str(reply)[:200]}")
            replies[index] = empty[index]
    evaluator = parse_evaluator(_clean(replies[0]))
    states = parse_states(_clean(replies[1]), evaluator)
    recent = parse_transitions(_clean(replies[2]))
    return AlertsSnapshot(evaluator, states, recent, firing_periods(recent, now), rule_thresholds(evaluator),
                          host_alerts(states), tuple(problems))


def _clean(reply: Any) -> Any:
    """Text read with surrogateescape (bytes that were not UTF-8) made printable: U+FFFD for each bad byte."""
    if isinstance(reply, str):
        return reply.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(reply, dict):
        return {_clean(name): _clean(value) for name, value in reply.items()}
    if isinstance(reply, (list, tuple)):
        return [_clean(item) for item in reply]
    return reply


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
    heartbeat_age: float | None = None  # seconds since its last heartbeat
    problem: str = ""  # what the evaluator says is wrong (Redis, lease)


def read_evaluator(client: redis.Redis, keys: schema.Keys) -> EvaluatorView:
    """The evaluator's status hash; malformed fields read as empty, never raise."""
    return parse_evaluator(client.hgetall(keys.alerts.status))


def parse_evaluator(raw: dict[str, str]) -> EvaluatorView:
    """The evaluator's status hash as read; malformed fields read as empty."""
    if not raw:
        return EvaluatorView()
    age = seconds_since(parse_instant(raw.get("heartbeat")))
    webhooks = {name.removeprefix("webhook "): _json(text, {}) for name, text in raw.items()
                if name.startswith("webhook ")}
    fresh = age is not None and age <= STALE_AFTER_SECONDS
    return EvaluatorView(
        present=True, running=raw.get("state") == "running" and fresh, heartbeat_age=age,
        rules=[r for r in _json(raw.get("rules"), []) if isinstance(r, dict)],
        problems=[p for p in _json(raw.get("rule_problems"), []) if isinstance(p, dict)],
        rules_error=raw.get("rules_error", ""), problem=raw.get("problem", ""),
        webhooks={k: v for k, v in webhooks.items() if isinstance(v, dict)})


def rule_thresholds(view: EvaluatorView) -> pd.DataFrame:
    """One row per rule: what it compares, to what, how severe."""
    rows = [{column: rule.get(column if column != "rule" else "name") for column in THRESHOLD_COLUMNS}
            for rule in view.rules]
    for row in rows:  # a status written by hand may hold anything: text where text is drawn, lists as lists
        row.update({column: "" if row[column] is None else str(row[column]) for column in THRESHOLD_COLUMNS
                    if column not in ("threshold", "hosts")})
        row["hosts"] = [str(p) for p in row["hosts"]] if isinstance(row["hosts"], list) else []
    frame = pd.DataFrame(rows, columns=THRESHOLD_COLUMNS)
    frame["threshold"] = pd.to_numeric(frame["threshold"], errors="coerce")
    return frame.dropna(subset=["threshold"])


def read_states(client: redis.Redis, keys: schema.Keys, view: EvaluatorView | None = None) -> pd.DataFrame:
    """Pending and firing alerts now: since when, last value, severity and threshold of their rule."""
    return parse_states(client.hgetall(keys.alerts.states), view or read_evaluator(client, keys))


def parse_states(raw: dict[str, str], view: EvaluatorView) -> pd.DataFrame:
    """The states hash as read: pending and firing alerts with their rule's severity and threshold."""
    rules = {str(rule.get("name")): rule for rule in view.rules}
    rows = []
    for name, text in raw.items():
        rule, _, host = name.partition("@")
        state = _json(text, {})
        if not isinstance(state, dict) or state.get("phase") not in ("pending", "firing"):
            continue
        about = rules.get(rule, {})
        rows.append({"rule": rule, "host": host or "local", "phase": state["phase"],
                     "since": local_time(state.get("active_ms")), "value": _float(state.get("value")),
                     "severity": str(about.get("severity", "none")), "threshold": _float(about.get("threshold")),
                     "op": str(about.get("op", ""))})
    frame = pd.DataFrame(rows, columns=STATE_COLUMNS)
    return frame.sort_values(["phase", "since"], ascending=[True, True], ignore_index=True)


def read_transitions(client: redis.Redis, keys: schema.Keys, count: int = RECENT) -> pd.DataFrame:
    """The newest `count` transitions, oldest first; malformed entries are skipped."""
    return parse_transitions(client.xrevrange(keys.alerts.transitions, count=count))


def parse_transitions(newest_first: list) -> pd.DataFrame:
    """Transitions as XREVRANGE returned them, oldest first; malformed entries are skipped."""
    rows = []
    for _, fields in reversed(newest_first):
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
    """Per host, the rules firing and pending now and the worst severity firing: for the all-hosts table."""
    rows = []
    for host, group in states.groupby("host"):
        firing = group.loc[group.phase == "firing"]
        rows.append({"host": host, "firing": ", ".join(firing["rule"]),
                     "pending": ", ".join(group.loc[group.phase == "pending", "rule"]),
                     "worst": min(firing["severity"], key=_severity_rank, default="")})
    return pd.DataFrame(rows, columns=["host", "firing", "pending", "worst"])


def host_cells(by_host: pd.DataFrame) -> dict[str, str]:
    """Each host's cell in the all-hosts table: `2 firing (critical) · 1 pending`."""
    cells = {}
    for row in by_host.itertuples(index=False):
        parts = [f"{len(row.firing.split(', '))} firing ({row.worst})"] if row.firing else []
        parts += [f"{len(row.pending.split(', '))} pending"] if row.pending else []
        cells[row.host] = " · ".join(parts)
    return cells


def _severity_rank(severity: str) -> int:
    order = list(SEVERITY_COLORS)
    return order.index(severity) if severity in order else len(order)


def for_host(snapshot: AlertsSnapshot, host: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The thresholds of the rules that apply to one host (None: the plain keys) and its firing periods."""
    name = host or "local"
    periods = snapshot.periods[snapshot.periods["host"] == name]
    applies = [not patterns or any(fnmatch.fnmatchcase(host or "", str(p)) for p in patterns)
               for patterns in snapshot.thresholds["hosts"].map(lambda v: v if isinstance(v, list) else [])]
    thresholds = snapshot.thresholds[applies] if len(snapshot.thresholds) else snapshot.thresholds
    return thresholds, periods


def thresholds_for(thresholds: pd.DataFrame, source: str, fields: Iterable[str]) -> pd.DataFrame:
    """The rules that concern a chart: their source's value matches one of the chart's fields."""
    names = list(fields)
    concerns = [row.source == source and any(fnmatch.fnmatchcase(name, str(row.value)) for name in names)
                for row in thresholds.itertuples(index=False)]
    return thresholds[concerns] if len(thresholds) else thresholds


def threshold_layer(thresholds: pd.DataFrame) -> alt.Chart:
    """A dashed horizontal rule at each threshold, coloured by severity: layer it on the chart it concerns."""
    drawn = thresholds.drop(columns=["hosts"], errors="ignore")  # lists: neither hashable nor drawn
    return alt.Chart(drawn).mark_rule(strokeDash=[4, 4], strokeWidth=1.5, clip=True).encode(
        y="threshold:Q",
        color=_severity_color(),
        tooltip=["rule:N", "op:N", alt.Tooltip("threshold:Q", format=",.2f"), "severity:N"],
    )


def firing_layer(periods: pd.DataFrame) -> alt.Chart:
    """Shaded bands over the time axis while an alert fired: layer it under a time chart (which owns the axis).

    Top to bottom in pixels, not through the chart's y scale: with no period yet (every page before an
    alert first fires) a layer in that scale made Vega warn of an infinite extent on every redraw.
    """
    return alt.Chart(periods).mark_rect(opacity=0.15, clip=True).encode(
        x=alt.X("start:T", title=None), x2="end:T", y=alt.YValue(0), y2=alt.Y2Value("height"),
        color=_severity_color(),
        tooltip=["rule:N", "host:N", "severity:N", alt.Tooltip("start:T", format="%H:%M:%S"),
                 alt.Tooltip("end:T", format="%H:%M:%S")],
    )


def with_alerts(chart: alt.Chart | alt.LayerChart, thresholds: pd.DataFrame,
                periods: pd.DataFrame) -> alt.LayerChart:
    """The chart with firing periods shaded under it (always, empty or not: alerts starting and ending do
    not change the spec) and its rules' thresholds over it (a layer while a rule concerns the chart: an
    empty one makes Vega warn of an infinite extent); the title moves to the top."""
    over = [threshold_layer(thresholds)] if len(thresholds) else []
    return relayer(chart, below=[firing_layer(periods)], above=over)


def _severity_color() -> alt.Color:
    return alt.Color("severity:N", title="alert", legend=None,
                     scale=alt.Scale(domain=list(SEVERITY_COLORS), range=list(SEVERITY_COLORS.values())))


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


@dataclass(frozen=True)
class ChartAlerts:
    """One host's thresholds and firing periods, to layer on the charts they concern."""

    thresholds: pd.DataFrame
    periods: pd.DataFrame

    @classmethod
    def of(cls, snapshot: AlertsSnapshot, host: str | None) -> ChartAlerts:
        return cls(*for_host(snapshot, host))

    def on(self, chart: alt.Chart | alt.LayerChart, source: str, fields: Iterable[str],
           scale: float | None = 1.0) -> alt.LayerChart:
        """The chart with its rules' thresholds (times `scale`, none when None) and their periods shaded."""
        concern = thresholds_for(self.thresholds, source, fields)
        # shaded: the periods of this chart's rules and of the runtime's (collector down, lag concern all)
        shown = set(concern["rule"]) | set(self.thresholds.loc[self.thresholds["source"] == "runtime", "rule"])
        periods = self.periods[self.periods["rule"].isin(shown)]
        if scale is None:
            concern = concern.iloc[:0]
        elif scale != 1.0:
            concern = concern.assign(threshold=concern["threshold"] * scale)
        return with_alerts(chart, concern, periods)
