"""The page's alert readers and chart layers, on what a real evaluator stored."""

from datetime import datetime

import altair as alt
import pandas as pd

from app import alerts_view
from app.charts import line_chart, tidy
from app.timeline import Window
from runtime import schema
from tests.alerts_support import KEYS, add_sample, alerts_env, running_evaluator, transitions, write_rules
from tests.conftest import wait_for

RULES = """
rules:
  - {name: mem, value: virtual_memory-percent, op: ">", threshold: 50, severity: critical}
  - {name: pids, value: n_pids, op: ">", threshold: 500, for: 1m}
  - {name: typo, value: n_pid, op: ">", threshold: 500}
"""


def test_states_transitions_periods_and_thresholds_from_a_real_evaluator(client, redis_url, tmp_path):
    rules = write_rules(tmp_path, RULES)
    for at, mem, pids in [(1, 70, 600), (2, 10, 600), (3, 80, 600)]:
        add_sample(client, at, **{"virtual_memory-percent": mem, "n_pids": pids})
    with running_evaluator(alerts_env(redis_url, rules)):
        wait_for(lambda: len(transitions(client)) == 4, what="four transitions")
        view = wait_for(lambda: (v := alerts_view.read_evaluator(client, schema.Keys())).problems and v,
                        what="the missing value reported")
    assert view.present and [p["rule"] for p in view.problems] == ["typo"]
    states = alerts_view.read_states(client, schema.Keys(), view)
    assert states[["rule", "host", "phase", "value", "severity"]].to_dict("records") == [
        {"rule": "mem", "host": "local", "phase": "firing", "value": 80.0, "severity": "critical"},
        {"rule": "pids", "host": "local", "phase": "pending", "value": 600.0, "severity": "warning"}]
    assert states["since"].tolist() == [datetime.fromtimestamp(3), datetime.fromtimestamp(1)]
    recent = alerts_view.read_transitions(client, schema.Keys())
    assert recent[["rule", "phase"]].values.tolist() == [["mem", "firing"], ["pids", "pending"],
                                                         ["mem", "resolved"], ["mem", "firing"]]
    periods = alerts_view.firing_periods(recent, now=datetime.fromtimestamp(10))
    assert periods[["start", "end"]].values.tolist() == [
        [pd.Timestamp(datetime.fromtimestamp(1)), pd.Timestamp(datetime.fromtimestamp(2))],
        [pd.Timestamp(datetime.fromtimestamp(3)), pd.Timestamp(datetime.fromtimestamp(10))]]
    thresholds = alerts_view.rule_thresholds(view)
    memory = alerts_view.thresholds_for(thresholds, "sample", [schema.MEMORY_PERCENT])
    assert memory["rule"].tolist() == ["mem"] and memory["threshold"].tolist() == [50.0]
    assert alerts_view.host_alerts(states).to_dict("records") == [{"host": "local", "firing": "mem",
                                                                   "pending": "pids"}]
    snapshot = alerts_view.read_alerts(client, schema.Keys(), now=datetime.fromtimestamp(10))
    assert snapshot.states.equals(states) and snapshot.periods.equals(periods) and len(snapshot.recent) == 4
    assert snapshot.by_host["firing"].tolist() == ["mem"] and snapshot.thresholds["rule"].tolist() == [
        "mem", "pids", "typo"]


def test_layers_draw_on_a_time_chart_and_keep_the_same_spec():
    samples = pd.DataFrame({schema.MEMORY_PERCENT: [40.0, 60.0]},
                           index=pd.DatetimeIndex([datetime(2026, 1, 1, 12), datetime(2026, 1, 1, 12, 1)], name="time"))
    thresholds = pd.DataFrame([{"rule": "mem", "source": "sample", "value": schema.MEMORY_PERCENT, "op": ">",
                                "threshold": 50.0, "severity": "critical", "hosts": []}])
    periods = pd.DataFrame([{"rule": "mem", "host": "local", "severity": "critical",
                             "start": datetime(2026, 1, 1, 12, 1), "end": datetime(2026, 1, 1, 12, 2)}])
    window = Window.last(180, datetime(2026, 1, 1, 12, 2))
    base = line_chart(tidy(samples, {schema.MEMORY_PERCENT: "memory %"}), window, "Memory", "%")
    chart = alt.layer(alerts_view.firing_layer(periods), base, alerts_view.threshold_layer(thresholds))
    spec = chart.to_dict()
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks == ["rect", "line", "rule"]
    assert spec["layer"][0]["encoding"]["x2"]["field"] == "end"
    empty = alt.layer(alerts_view.firing_layer(periods.iloc[:0]), base,
                      alerts_view.threshold_layer(thresholds.iloc[:0])).to_dict()
    assert [layer["encoding"] for layer in empty["layer"]] == [layer["encoding"] for layer in spec["layer"]]


def test_malformed_alert_entries_are_skipped_not_raised(client):
    client.hset(KEYS.states, mapping={"mem@": "not json", "cpu@h": '{"phase": "firing", "active_ms": "x"}'})
    client.xadd(KEYS.transitions, {"rule": "mem", "at_ms": "soon"})
    client.xadd(KEYS.transitions, {"garbage": "1"})
    client.hset(KEYS.status, mapping={"rules": "[1, {\"name\": \"x\"}", "rule_problems": "{}", "heartbeat": "?"})
    view = alerts_view.read_evaluator(client, schema.Keys())
    assert view.present and not view.running and view.rules == [] and view.problems == []
    states = alerts_view.read_states(client, schema.Keys(), view)
    assert states[["rule", "host", "since"]].to_dict("records") == [{"rule": "cpu", "host": "h", "since": None}]
    assert alerts_view.read_transitions(client, schema.Keys()).empty
    assert alerts_view.firing_periods(alerts_view.read_transitions(client, schema.Keys())).empty
