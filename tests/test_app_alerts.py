"""Alerts on the page (issue 18): run by Streamlit's AppTest against a real Valkey and a real evaluator."""

import json
from datetime import datetime, timedelta

import redis

from runtime import schema
from runtime.collector import Publisher
from runtime.config import RedisSettings, connect
from tests.alerts_support import KEYS, alerts_env, running_evaluator, write_rules
from tests.conftest import publish, wait_for
from tests.test_app import charts_of, page, recent_samples, title_of, warnings  # noqa: F401 (fixture)

RULES = """
rules:
  - {name: mem, value: virtual_memory-percent, op: ">", threshold: 1, severity: critical}
  - {name: cpu-busy, value: "cpu_percent-*", aggregate: max, op: ">=", threshold: 0, for: 1h}
  - {name: cache, source: output, value: percent-memory-cache, op: ">", threshold: 60}
  - {name: typo, value: n_pid, op: ">", threshold: 500}
"""


def fire(client, redis_url, tmp_path, rules=RULES, count=1):
    """Run a real evaluator over the samples until `mem` fires on every host and `typo` is reported."""
    with running_evaluator(alerts_env(redis_url, write_rules(tmp_path, rules), ALERTS_GRACE_SECONDS="0")):
        wait_for(lambda: sum('"firing"' in v for v in client.hvals(KEYS.states)) >= count
                 and "typo" in (client.hget(KEYS.status, "rule_problems") or ""), what="mem firing, typo reported")


def specs(at):
    return {title_of(spec): spec for spec in (json.loads(c.proto.spec) for c in charts_of(at))}


def marks(spec):
    return [layer.get("mark", {}).get("type") if isinstance(layer.get("mark"), dict) else layer.get("mark")
            for layer in spec.get("layer", [spec])]


def test_a_firing_alert_is_at_the_top_and_its_threshold_and_period_on_the_charts(client, redis_url, page, tmp_path):
    publish(client, recent_samples(30))
    fire(client, redis_url, tmp_path)
    at = page(redis_url)
    assert not at.exception
    (headline,) = at.error
    assert headline.value == "1 alert firing, 1 pending"
    states = at.dataframe[0].value
    assert states[["phase", "severity", "rule", "host"]].values.tolist() == [
        ["firing", "critical", "mem", "local"], ["pending", "warning", "cpu-busy", "local"]]
    assert states["value"].iloc[0] > 1 and states["since"].notna().all()
    assert "Alert rule `typo`" in warnings(at)
    assert any("Recent alerts" in e.label for e in at.expander)
    drawn = specs(at)
    for title in ("CPU utilisation per core", "Virtual memory"):
        assert marks(drawn[title])[0] == "rect" and marks(drawn[title])[-1] == "rule", title
    assert marks(drawn["Number of processes"]) == ["rect", "line"]  # no rule of its own: periods only
    assert marks(drawn["Network throughput"]) == ["line"]


def test_the_page_without_an_evaluator_says_so_and_a_stale_one_is_flagged(client, redis_url, page):
    publish(client, recent_samples(10))
    at = page(redis_url)
    assert not at.exception and not at.error
    assert any("No alert evaluator running" in i.value and KEYS.status in i.value for i in at.info)
    chart_specs = specs(at)
    client.hset(KEYS.status, mapping={"state": "running", "heartbeat": (datetime.now().astimezone()
                                                                         - timedelta(minutes=5)).isoformat()})
    at = page(redis_url)
    assert "Alert evaluator not running or stuck: last heartbeat 300 s ago" in warnings(at)
    client.hset(KEYS.status, "webhook http://127.0.0.1:9/hook", json.dumps(
        {"state": "failing", "since": "2026-11-30 09:00:00", "last_error": "ConnectionRefusedError"}))
    at = page(redis_url)
    assert "Alert webhook http://127.0.0.1:9/hook failing since 2026-11-30 09:00:00: ConnectionRefusedError" \
        in warnings(at)
    assert {t: marks(s) for t, s in specs(at).items()} == {t: marks(s) for t, s in chart_specs.items()}


def test_each_hosts_alert_state_is_a_column_of_the_all_hosts_table(client, redis_url, page, tmp_path):
    for host in ("alpha", "beta"):
        publisher = Publisher(connect(RedisSettings(redis_url), "test"), schema.Keys(), 3600, 100, host=host)
        for sample in recent_samples(5):
            publisher.publish(sample)
    fire(client, redis_url, tmp_path, RULES.replace("}\n  - {name: cpu-busy", ", hosts: beta}\n  - {name: cpu-busy"))
    at = page(redis_url)
    assert not at.exception
    table = at.dataframe[-1].value
    cells = dict(zip(table["host"], table["alerts"]))
    assert cells == {"alpha": "1 pending", "beta": "1 firing (critical) · 1 pending"}


def test_a_poisoned_alerts_key_costs_a_note_not_the_page(client, redis_url, page, tmp_path):
    publish(client, recent_samples(10))
    keys = schema.Keys().alerts
    client.set(keys.states, "not a hash")
    raw = redis.Redis.from_url(redis_url)
    raw.xadd(keys.transitions, {b"rule": b"m\xffem", b"at_ms": b"1000", b"phase": b"firing", b"host": b"\xfe"})
    raw.hset(keys.status, mapping={b"state": b"running", b"rules": b"\xff[", b"rule_problems": b"{\"x\": \xff}"})
    at = page(redis_url)
    assert not at.exception and not at.error
    assert f"Alerts not read from `{keys.states}`: ResponseError: WRONGTYPE" in warnings(at)
    assert len(charts_of(at)) >= 8
    recent = next(e for e in at.expander if "Recent alerts" in e.label)
    assert recent.dataframe[0].value["rule"].tolist() == ["m\ufffdem"]


def test_in_a_browser_thresholds_and_firing_periods_draw_without_vega_warnings(valkey, client, tmp_path, processes):
    from tests.conftest import require_program
    from tests.test_dashboard_browser import ARTIFACTS, browser_page, seed, start_configured_app, vega_warnings

    require_program("chromium", "chromium")
    seed(client)
    rules = write_rules(tmp_path, RULES.replace("n_pid,", "n_pids,"))
    with running_evaluator(alerts_env(valkey.connection_url, rules)):
        wait_for(lambda: '"firing"' in " ".join(client.hvals(KEYS.states)), timeout=60, what="mem firing")
        url = start_configured_app(valkey, tmp_path, processes)
        with browser_page(url) as (page, console):
            page.wait_for_selector("text=firing, 0 pending", timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-alerts.png"), full_page=True)
            assert page.locator('[data-testid="stException"]').count() == 0
            assert not vega_warnings(console), vega_warnings(console)
            assert "No alert evaluator running" not in page.locator("body").inner_text()


def test_in_a_browser_a_pending_alert_with_nothing_fired_draws_without_vega_warnings(valkey, client, tmp_path,
                                                                                    processes):
    """The rules a new user starts with, one of them pending, none fired yet: thresholds on the charts and
    an empty layer of firing bands, which must not put an infinite extent into any scale, on the first
    draw or a live redraw."""
    from tests.conftest import REPO_DIR, require_program
    from tests.test_dashboard_browser import ARTIFACTS, browser_page, seed, start_configured_app, vega_warnings

    require_program("chromium", "chromium")
    seed(client)
    pending = (REPO_DIR / "alerts.yaml").read_text() + (  # the rules a new user starts with, and one pending
        "  - {name: cpu-busy, value: \"cpu_percent-*\", aggregate: max, op: \">=\", threshold: 0, for: 48h}\n")
    with running_evaluator(alerts_env(valkey.connection_url, write_rules(tmp_path, pending))):
        wait_for(lambda: '"pending"' in " ".join(client.hvals(KEYS.states)), timeout=60, what="cpu-busy pending")
        url = start_configured_app(valkey, tmp_path, processes)
        with browser_page(url) as (page, console):
            page.wait_for_selector("text=/0 alerts firing, [1-9][0-9]* pending/", timeout=15_000)
            page.wait_for_timeout(3000)  # a live redraw or two
            page.screenshot(path=str(ARTIFACTS / "dashboard-alerts-pending.png"), full_page=True)
            assert page.locator('[data-testid="stException"]').count() == 0
            assert not vega_warnings(console), vega_warnings(console)
