"""The rules file and the state machine, without Redis: parsing, bad rules, `for` durations, values."""

import math

import pytest

from runtime.alerts.evaluate import AlertState, Phase, step
from runtime.alerts.rules import RuleError, load_rules, parse_duration, parse_rule, parse_rules
from runtime.alerts.values import value_of
from tests.conftest import REPO_DIR

GOOD = {"name": "r", "value": "virtual_memory-percent", "op": ">", "threshold": 90}


def test_the_shipped_rules_parse_without_a_problem():
    rules = load_rules(REPO_DIR / "alerts.yaml")
    assert rules.problems == ()
    by_name = {rule.name: rule for rule in rules.rules}
    assert by_name["cpu-high"].aggregate == "mean" and by_name["cpu-high"].for_seconds == 120
    assert by_name["memory-high"].value == "virtual_memory-percent" and by_name["memory-high"].threshold == 90
    assert by_name["memory-cache-high"].source == "output" and by_name["memory-cache-high"].value == "percent-memory-cache"
    assert by_name["runtime-lag"].value == "lag_seconds" and by_name["runtime-lag"].threshold == 10
    assert by_name["collector-down"].value == "seconds_since_sample" and by_name["collector-down"].threshold == 30


def test_a_full_rule_parses():
    rule = parse_rule({**GOOD, "value": "cpu_percent-*", "aggregate": "mean", "for": "1m30s", "severity": "critical",
                       "summary": "CPU {value:.1f} % on {host}", "hosts": ["web-*", "db1"], "source": "sample"})
    assert rule.for_seconds == 90 and rule.hosts == ("web-*", "db1")
    assert rule.applies_to("web-3") and rule.applies_to("db1") and not rule.applies_to("db2")
    assert rule.render(93.25, "web-3") == "CPU 93.2 % on web-3"


@pytest.mark.parametrize("text, seconds", [(0, 0), (90, 90), ("30s", 30), ("2m", 120), ("1h30m", 5400),
                                           ("500ms", 0.5), ("1d", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5", "2 minutes", "", True, "8d", [1]])
def test_bad_durations_say_how_to_write_one(text):
    with pytest.raises(RuleError, match="for:"):
        parse_duration(text)


BAD_RULES = {
    "unknown-setting": ({**GOOD, "treshold": 3}, "unknown setting 'treshold' (did you mean 'threshold'?)"),
    "bad-op": ({**GOOD, "op": "=>"}, "'op' must be one of >, >=, <, <=, ==, !="),
    "text-threshold": ({**GOOD, "threshold": "ninety"}, "'threshold' must be a finite number"),
    "nan-threshold": ({**GOOD, "threshold": math.nan}, "'threshold' must be a finite number"),
    "pattern-without-aggregate": ({**GOOD, "value": "cpu_percent-*"}, "is a pattern: say how to combine"),
    "unknown-source": ({**GOOD, "source": "disk"}, "'source' must be one of sample, extra, output, runtime"),
    "unknown-runtime-figure": ({**GOOD, "source": "runtime", "value": "lag_second"},
                               "not a runtime figure (did you mean 'lag_seconds'?)"),
    "bad-severity": ({**GOOD, "severity": "urgent"}, "'severity' must be one of info, warning, critical"),
    "name-with-at": ({**GOOD, "name": "a@b"}, "'name' must be letters, digits"),
    "hosts-not-ids": ({**GOOD, "hosts": ["web:1"]}, "'hosts' entry 'web:1' is not a host id"),
    "summary-attribute": ({**GOOD, "summary": "{value.__class__.__init__.__globals__}"},
                          "'summary' uses {value.__class__.__init__.__globals__}; it may use only"),
    "summary-nested-field": ({**GOOD, "summary": "{value:{host}}"}, "is not allowed"),
    "summary-huge-width": ({**GOOD, "summary": "{value:>999999999}"}, "is not allowed"),
    "summary-wrong-type": ({**GOOD, "summary": "{host:.1f}"}, "'summary' is not a valid template"),
    "summary-unbalanced": ({**GOOD, "summary": "{value"}, "'summary' is not a valid template"),
    "not-a-mapping": ("cpu > 90", "a rule is a mapping of settings"),
}


@pytest.mark.parametrize("entry, message", BAD_RULES.values(), ids=BAD_RULES.keys())
def test_a_bad_rule_is_refused_with_what_to_fix(entry, message):
    with pytest.raises(RuleError) as refused:
        parse_rule(entry)
    assert message in str(refused.value)


def test_one_bad_rule_costs_only_that_rule():
    rules = parse_rules("""
rules:
  - {name: good, value: n_pids, op: ">", threshold: 1000}
  - {name: bad, value: n_pids, op: ">", threshold: lots}
  - {name: good, value: n_pids, op: "<", threshold: 1}
  - {name: also-good, value: virtual_memory-percent, op: ">", threshold: 90}
""")
    assert [r.name for r in rules.rules] == ["good", "also-good"]
    assert [(p.rule, p.message.split(",")[0]) for p in rules.problems] == [
        ("bad", "'threshold' must be a finite number"),
        ("good", "a rule named 'good' comes earlier; names must be unique")]


@pytest.mark.parametrize("text, message", [
    ("rules: [", "is not YAML"),
    ("- a\n- b", "must be a mapping with a 'rules:' list, got a list"),
    ("rules: {a: 1}", "must be a mapping with a 'rules:' list"),
    ("rules: !!python/object/apply:os.system ['echo hi']", "is not YAML"),
], ids=["not-yaml", "a-list", "rules-not-a-list", "python-tag"])
def test_a_file_that_is_not_a_rules_file_is_refused_as_a_whole(text, message):
    with pytest.raises(RuleError, match=message):
        parse_rules(text)


def test_a_billion_laughs_file_is_cheap_to_refuse():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
              for i in range(1, 12)]
    lines.append("rules: [{name: r, value: n_pids, op: '>', threshold: 1, hosts: *a11}]")
    rules = parse_rules("\n".join(lines))
    assert rules.rules == () and "'hosts' must be 'all', a host id or pattern" in rules.problems[0].message


def test_a_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(RuleError, match="no such file; mount the rules there or set ALERTS_FILE"):
        load_rules(tmp_path / "alerts.yaml")


# --- values -------------------------------------------------------------------------------------

def test_values_by_name_and_by_pattern():
    sample = {"cpu_percent-0": 80.0, "cpu_percent-1": 100, "cpu_percent-2": "x", "timestamp": "t",
              "virtual_memory-percent": math.nan}
    mean = parse_rule({**GOOD, "value": "cpu_percent-*", "aggregate": "mean"})
    top = parse_rule({**GOOD, "value": "cpu_percent-*", "aggregate": "max"})
    assert value_of(mean, sample) == 90.0 and value_of(top, sample) == 100
    assert value_of(parse_rule(GOOD), sample) is None  # NaN is no value
    assert value_of(parse_rule({**GOOD, "value": "timestamp"}), sample) is None
    assert value_of(parse_rule({**GOOD, "value": "disk-*", "aggregate": "max"}), sample) is None


# --- the state machine ----------------------------------------------------------------------------

def run(rule, observations):
    """Phases of the transitions after each (seconds, value)."""
    state, seen = AlertState(), []
    for seconds, value in observations:
        state, transition = step(rule, "h", state, value, int(seconds * 1000))
        if transition:
            seen.append((seconds, transition.phase.value))
    return seen, state


def test_for_holds_an_alert_pending_until_the_condition_has_lasted():
    rule = parse_rule({**GOOD, "for": "2m"})
    seen, state = run(rule, [(0, 50), (10, 95), (60, 96), (129, 97), (130, 98), (200, 99), (205, 10)])
    assert seen == [(10, "pending"), (130, "firing"), (205, "resolved")]
    assert state.phase == Phase.INACTIVE


def test_a_condition_that_clears_before_for_never_fires():
    rule = parse_rule({**GOOD, "for": "1m"})
    seen, _ = run(rule, [(0, 95), (30, 95), (40, 10), (50, 95), (100, 95), (110, 95)])
    assert seen == [(0, "pending"), (40, "inactive"), (50, "pending"), (110, "firing")]


def test_without_for_an_alert_fires_at_once_and_missing_values_change_nothing():
    rule = parse_rule(GOOD)
    seen, state = run(rule, [(0, 95), (5, None), (10, 96), (15, None)])
    assert seen == [(0, "firing")] and state.phase == Phase.FIRING and state.value == 96


def test_a_transition_carries_its_summary_and_fingerprint():
    rule = parse_rule({**GOOD, "summary": "memory {value:.0f} % on {host} (over {threshold:g})"})
    _, transition = step(rule, "web-1", AlertState(), 93.4, 5000)
    fields = transition.fields()
    assert fields["summary"] == "memory 93 % on web-1 (over 90)" and fields["phase"] == "firing"
    assert len(fields["fingerprint"]) == 16 and fields["at_ms"] == fields["active_ms"] == "5000"
