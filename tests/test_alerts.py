"""The evaluator against a real Valkey server: transitions stored once, per host, rules that change."""

import json
import os
import signal
import urllib.request

import pytest
import redis

from runtime.alerts.evaluate import AlertState, step
from runtime.alerts.rules import load_rules
from runtime.observe import Probes, serve
from tests.alerts_support import (KEYS, add_sample, alerts_env, cursor_of, running_evaluator, status_of,
                                  transitions, write_rules)
from tests.conftest import REPO_DIR, free_port, runtime_env, spawn, wait_for

MEMORY_RULES = """
rules:
  - {name: mem, value: virtual_memory-percent, op: ">", threshold: 50, for: 10s}
  - {name: cpu, value: cpu_percent-*, aggregate: max, op: ">", threshold: 50, severity: critical}
"""


def test_transitions_follow_the_samples_with_for_durations(client, redis_url, tmp_path):
    rules = write_rules(tmp_path, MEMORY_RULES)
    for i, (mem, cpu) in enumerate([(10, 10), (60, 60), (60, 10), (60, 10), (10, 10)]):
        add_sample(client, 1 + 5 * i, **{"virtual_memory-percent": mem, "cpu_percent-0": cpu, "cpu_percent-1": 0})
    with running_evaluator(alerts_env(redis_url, rules)):
        wait_for(lambda: cursor_of(client).get("input") == "21000-0", what="all samples read")
    assert transitions(client) == [("mem", "", "pending", 6000), ("cpu", "", "firing", 6000),
                                   ("cpu", "", "resolved", 11000), ("mem", "", "firing", 16000),
                                   ("mem", "", "resolved", 21000)]
    assert client.hgetall(KEYS.states) == {}  # nothing pending or firing any more


def test_states_hold_what_fires_now_and_metrics_show_it(client, redis_url, tmp_path):
    rules = write_rules(tmp_path, MEMORY_RULES)
    add_sample(client, 1, **{"virtual_memory-percent": 70, "cpu_percent-0": 99})
    port = free_port()
    with running_evaluator(alerts_env(redis_url, rules)) as evaluator:
        serve(port, Probes(evaluator.health, evaluator.metrics, evaluator.describe))  # a daemon thread
        wait_for(lambda: client.hlen(KEYS.states) == 2, what="two active alerts")
        states = {name: json.loads(text) for name, text in client.hgetall(KEYS.states).items()}
        assert states["cpu@"]["phase"] == "firing" and states["mem@"]["phase"] == "pending"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert 'alerts_firing{host="",rule="cpu",severity="critical"} 1.0' in metrics
        assert 'rule="mem"' not in metrics.split("alerts_firing")[2]  # pending is not firing


def test_extras_and_outputs_are_values_too(client, redis_url, tmp_path):
    rules = write_rules(tmp_path, """
rules:
  - {name: load, source: extra, value: load_avg-1, op: ">", threshold: 4}
  - {name: cache, source: output, value: percent-memory-cache, op: ">", threshold: 60}
""")
    add_sample(client, 1, extra={"load_avg-1": 7.5}, **{"virtual_memory-percent": 10})
    client.xadd("out:stream", {"sample_id": "1000-0", "timestamp": "t", "output": json.dumps(
        {"percent-memory-cache": 75.0})}, id="1500-0")
    with running_evaluator(alerts_env(redis_url, rules, REDIS_OUTPUT_KEY="out")):
        wait_for(lambda: len(transitions(client)) == 2, what="two transitions")
    assert sorted(transitions(client)) == [("cache", "", "firing", 1500), ("load", "", "firing", 1000)]


def test_each_host_has_its_own_alerts_and_rules_can_name_hosts(client, redis_url, tmp_path):
    rules = write_rules(tmp_path, """
rules:
  - {name: mem, value: virtual_memory-percent, op: ">", threshold: 50}
  - {name: web-mem, value: virtual_memory-percent, op: ">", threshold: 50, hosts: "web-*"}
""")
    client.hset("metrics:hosts", mapping={"web-1": "1", "db-1": "1", "bad:id": "1"})
    add_sample(client, 1, stream="metrics:web-1:stream", **{"virtual_memory-percent": 70})
    add_sample(client, 2, stream="metrics:db-1:stream", **{"virtual_memory-percent": 80})
    with running_evaluator(alerts_env(redis_url, rules)):
        wait_for(lambda: len(transitions(client)) == 3, what="three transitions")
        wait_for(lambda: status_of(client).get("hosts_invalid") == "1", what="the invalid host counted")
    assert sorted(transitions(client)) == [("mem", "db-1", "firing", 2000), ("mem", "web-1", "firing", 1000),
                                           ("web-mem", "web-1", "firing", 1000)]


def test_the_plain_key_is_polled_when_there_is_no_stream(client, redis_url, tmp_path):
    rules = write_rules(tmp_path, MEMORY_RULES.replace("for: 10s", "for: 0s"))
    client.set("metrics", json.dumps({"timestamp": "t", "virtual_memory-percent": 70}))
    with running_evaluator(alerts_env(redis_url, rules)):
        wait_for(lambda: [t[2] for t in transitions(client)] == ["firing"], what="firing from the plain key")
        client.set("metrics", json.dumps({"timestamp": "t2", "virtual_memory-percent": 20}))
        wait_for(lambda: [t[2] for t in transitions(client)] == ["firing", "resolved"], what="resolved")


def test_a_bad_rule_and_a_value_that_never_appears_are_reported_and_the_rest_work(client, redis_url, tmp_path):
    rules = write_rules(tmp_path, """
rules:
  - {name: mem, value: virtual_memory-percent, op: ">", threshold: 50}
  - {name: typo, value: virtual_memory-percnt, op: ">", threshold: 50}
  - {name: broken, value: n_pids, op: "more than", threshold: 50}
  - {name: elsewhere, value: virtual_memory-percent, op: ">", threshold: 50, hosts: "web-*"}
""")
    add_sample(client, 1, **{"virtual_memory-percent": 70})
    with running_evaluator(alerts_env(redis_url, rules)):
        wait_for(lambda: transitions(client) == [("mem", "", "firing", 1000)], what="the good rule firing")
        problems = wait_for(lambda: [p for p in json.loads(status_of(client).get("rule_problems", "[]"))
                                     if p["rule"] == "typo"] and json.loads(status_of(client)["rule_problems"]),
                            what="the problems in the status")
    messages = {p["rule"]: p["message"] for p in problems}
    assert messages["broken"].startswith("'op' must be one of")
    assert "'virtual_memory-percnt' has not appeared in the samples" in messages["typo"]
    assert "names there like it: virtual_memory-percent" in messages["typo"]
    assert messages["elsewhere"] == "no host matches 'hosts: web-*' (followed: local)"


def test_a_broken_file_keeps_the_rules_loaded_before(client, redis_url, tmp_path):
    rules = write_rules(tmp_path, MEMORY_RULES.replace("for: 10s", "for: 0s"))
    add_sample(client, 1, **{"virtual_memory-percent": 70})
    with running_evaluator(alerts_env(redis_url, rules)):
        wait_for(lambda: len(transitions(client)) == 1, what="firing")
        rules.write_text("rules: [ {name: oops")
        wait_for(lambda: "is not YAML" in status_of(client).get("rules_error", ""), what="the file error")
        add_sample(client, 2, **{"virtual_memory-percent": 10})
        wait_for(lambda: [t[2] for t in transitions(client)] == ["firing", "resolved"], what="old rules still run")


def test_a_configmap_symlink_swap_reloads_the_rules_and_ends_removed_alerts(client, redis_url, tmp_path):
    """Kubernetes updates a ConfigMap volume by pointing `..data` at a new directory."""
    for name, threshold in (("v1", 50), ("v2", 95)):
        (tmp_path / name).mkdir()
        write_rules(tmp_path / name, f"rules:\n  - {{name: mem-{name}, value: virtual_memory-percent, op: '>', "
                                     f"threshold: {threshold}}}\n")
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "alerts.yaml").symlink_to("..data/alerts.yaml")
    add_sample(client, 1, **{"virtual_memory-percent": 70})
    with running_evaluator(alerts_env(redis_url, tmp_path / "alerts.yaml")):
        wait_for(lambda: transitions(client) == [("mem-v1", "", "firing", 1000)], what="v1 firing")
        (tmp_path / "..data_tmp").symlink_to("v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        wait_for(lambda: [t[:3] for t in transitions(client)][1:] == [("mem-v1", "", "resolved")],
                 what="the removed rule's alert resolved")
        wait_for(lambda: "mem-v2" in status_of(client).get("rules", ""), what="v2 in the status")
    assert client.hgetall(KEYS.states) == {}


def test_no_sample_for_a_while_fires_on_the_timer(client, redis_url, tmp_path):
    rules = write_rules(tmp_path, """
rules:
  - {name: collector-down, source: runtime, value: seconds_since_sample, op: ">", threshold: 2}
""")
    seconds, micros = client.time()
    add_sample(client, seconds + micros / 1e6, **{"virtual_memory-percent": 10})
    with running_evaluator(alerts_env(redis_url, rules)):
        wait_for(lambda: [t[2] for t in transitions(client)] == ["firing"], what="collector-down firing")
        seconds, micros = client.time()
        add_sample(client, seconds + micros / 1e6 + 0.001, **{"virtual_memory-percent": 10})
        wait_for(lambda: [t[2] for t in transitions(client)] == ["firing", "resolved"], what="resolved by a sample")


def test_runtime_lag_and_errors_come_from_the_runtime_status(client, redis_url, tmp_path):
    rules = write_rules(tmp_path, """
rules:
  - {name: lag, source: runtime, value: lag_seconds, op: ">", threshold: 10}
  - {name: errors, source: runtime, value: errors_per_minute, op: ">=", threshold: 2}
""")
    add_sample(client, 1, **{"virtual_memory-percent": 10})
    client.hset("out:status", mapping={"state": "running", "lag_seconds": "12.5"})
    for _ in range(2):
        client.xadd("out:errors", {"fault": "handler_error", "message": "boom"})
    with running_evaluator(alerts_env(redis_url, rules, REDIS_OUTPUT_KEY="out")):
        wait_for(lambda: sorted(t[:3] for t in transitions(client)) == [("errors", "", "firing"),
                                                                         ("lag", "", "firing")], what="both firing")
        client.hset("out:status", "lag_seconds", "0.002")
        wait_for(lambda: ("lag", "", "resolved") in [t[:3] for t in transitions(client)], what="lag resolved")


def test_a_standby_evaluator_stores_nothing_until_the_active_one_stops(client, redis_url, tmp_path):
    rules = write_rules(tmp_path, MEMORY_RULES.replace("for: 10s", "for: 0s"))
    env = alerts_env(redis_url, rules)
    with running_evaluator(env) as first, running_evaluator(env) as second:
        wait_for(lambda: first.lease.held or second.lease.held, what="one active evaluator")
        for i in range(20):
            add_sample(client, 1 + i, **{"virtual_memory-percent": 70 if i % 2 else 10})
        wait_for(lambda: cursor_of(client).get("input") == "20000-0", what="all samples read")
        assert not (first.lease.held and second.lease.held)
    assert [t[2] for t in transitions(client)] == (["firing", "resolved"] * 10)[:-1]  # the last sample fires


def expected_transitions(rules_path, samples):
    """What the state machine makes of the samples, computed without Redis."""
    rules, states, seen = load_rules(rules_path).rules, {}, []
    for at_ms, sample in samples:
        for rule in rules:
            value = sample.get(rule.value)
            states[rule.name], transition = step(rule, "", states.get(rule.name, AlertState()), value, at_ms)
            if transition:
                seen.append((rule.name, "", transition.phase.value, at_ms))
    return seen


def test_kill_9_of_the_active_evaluator_loses_and_repeats_no_transition(client, redis_url, tmp_path, processes):
    rules = write_rules(tmp_path, """
rules:
  - {name: mem, value: virtual_memory-percent, op: ">", threshold: 50, for: 3s}
  - {name: pids, value: n_pids, op: ">", threshold: 500}
""")
    samples = [(1000 + i * 1000, {"virtual_memory-percent": 70 if (i // 7) % 2 else 10,
                                  "n_pids": 600 if (i // 3) % 2 else 100}) for i in range(12_000)]  # ~6,600 transitions: fewer than the stream keeps
    pipe = client.pipeline(transaction=False)
    for at_ms, sample in samples:
        pipe.xadd("metrics:stream", {"sample": json.dumps({"timestamp": "t", **sample})}, id=f"{at_ms}-0")
    pipe.execute()
    env = alerts_env(redis_url, rules, LOG_LEVEL="WARNING")
    processes.extend([spawn("runtime.alerts", env), spawn("runtime.alerts", env)])  # an active one, a standby
    for point in (1000, 3000, 5000):
        wait_for(lambda: client.xlen(KEYS.transitions) >= point, timeout=120, what=f"{point} transitions")
        active = int(client.get(KEYS.lease).split(":")[1])  # the holder is host:pid:token
        os.kill(active, signal.SIGKILL)
        next(p for p in processes if p.pid == active).wait(10)
        processes.append(spawn("runtime.alerts", env))
    last = f"{samples[-1][0]}-0"
    wait_for(lambda: cursor_of(client).get("input") == last, timeout=300, what="every sample evaluated")
    assert transitions(client) == expected_transitions(rules, samples)


def test_bad_configuration_is_a_clear_startup_error(redis_url, tmp_path):
    process = spawn("runtime.alerts", {"REDIS_URL": redis_url, "ALERT_WEBHOOKS": "ftp://example.org/x"},
                    stderr=-1)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert b"ALERT_WEBHOOKS: 'ftp://example.org/x' is not an http:// or https:// URL" in stderr


def test_the_process_answers_probes_and_stops_on_sigterm(client, redis_url, tmp_path, processes):
    rules = write_rules(tmp_path, MEMORY_RULES)
    port = free_port()
    processes.append(spawn("runtime.alerts", alerts_env(redis_url, rules, HTTP_PORT=str(port))))
    wait_for(lambda: _get(f"http://127.0.0.1:{port}/readyz") == 200, what="ready")
    assert _get(f"http://127.0.0.1:{port}/healthz") == 200
    wait_for(lambda: status_of(client).get("state") == "running", what="the status written")
    processes[-1].send_signal(signal.SIGTERM)
    assert processes[-1].wait(15) == 0
    assert status_of(client)["state"] == "stopped"


def _get(url: str) -> int | None:
    try:
        return urllib.request.urlopen(url, timeout=2).status
    except OSError:
        return None


@pytest.mark.parametrize("stored", ["not json", '{"phase": "resolved", "active_ms": 1}', '{"phase": "firing"}'],
                         ids=["not-json", "not-an-active-phase", "no-since"])
def test_a_malformed_stored_state_starts_that_alert_inactive(client, redis_url, tmp_path, stored):
    rules = write_rules(tmp_path, MEMORY_RULES.replace("for: 10s", "for: 0s"))
    client.hset(KEYS.states, "mem@", stored)
    add_sample(client, 1, **{"virtual_memory-percent": 70})
    with running_evaluator(alerts_env(redis_url, rules)):
        wait_for(lambda: transitions(client) == [("mem", "", "firing", 1000)], what="firing from inactive")
    assert json.loads(client.hget(KEYS.states, "mem@"))["phase"] == "firing"


def test_catching_up_a_backlog_is_not_a_dead_collector(client, redis_url, tmp_path):
    """Seconds since the last sample count from the newest sample published, not from how far the
    evaluator has read: after a restart it may have hours of samples to catch up."""
    rules = write_rules(tmp_path, """
rules:
  - {name: collector-down, source: runtime, value: seconds_since_sample, op: ">", threshold: 60}
  - {name: mem, value: virtual_memory-percent, op: ">", threshold: 50}
""")
    seconds, _ = client.time()
    count, step_ms = 30_000, 100  # 50 minutes of samples, the newest one now
    first_ms = seconds * 1000 - count * step_ms
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.xadd("metrics:stream", {"sample": json.dumps({"timestamp": "t", "virtual_memory-percent": 10})},
                  id=f"{first_ms + i * step_ms}-0")
    pipe.execute()
    with running_evaluator(alerts_env(redis_url, rules)):
        last = f"{first_ms + (count - 1) * step_ms}-0"
        wait_for(lambda: cursor_of(client).get("input") == last, timeout=120, what="the backlog read")
    assert transitions(client) == []


def test_with_the_real_collector_and_runtime_every_kind_of_value_fires(client, redis_url, tmp_path, processes):
    rules = write_rules(tmp_path, """
rules:
  - {name: memory-used, value: virtual_memory-percent, op: ">", threshold: 0}
  - {name: cpu-any, value: cpu_percent-*, aggregate: max, op: ">=", threshold: 0}
  - {name: cache, source: output, value: percent-memory-cache, op: ">=", threshold: 0}
  - {name: lag, source: runtime, value: lag_seconds, op: ">=", threshold: 0}
  - {name: collector-down, source: runtime, value: seconds_since_sample, op: ">", threshold: 3}
""")
    env = runtime_env(redis_url, REPO_DIR / "usermodule.py", INTERVAL="0.5", START_FROM="latest")
    processes.append(spawn("runtime.collector", env))
    processes.append(spawn("runtime", env))
    processes.append(spawn("runtime.alerts", alerts_env(redis_url, rules, REDIS_OUTPUT_KEY="out", START_FROM="latest")))
    fired = lambda: {t[0] for t in transitions(client) if t[2] == "firing"}  # noqa: E731
    wait_for(lambda: fired() == {"memory-used", "cpu-any", "cache", "lag"}, timeout=60, what="four rules firing")
    processes[0].send_signal(signal.SIGTERM)  # the collector stops
    assert processes[0].wait(15) == 0
    wait_for(lambda: "collector-down" in fired(), timeout=30, what="collector-down firing")


@pytest.mark.parametrize("key, webhooks", [(KEYS.states, ""), (KEYS.cursors, ""), (KEYS.transitions, ""),
                                           (KEYS.transitions, "http://127.0.0.1:9/never")],
                         ids=["states", "cursors", "transitions", "transitions-with-a-webhook"])
def test_a_key_of_the_wrong_type_stores_nothing_until_it_is_fixed(client, redis_url, tmp_path, key, webhooks):
    """Redis applies the rest of a MULTI/EXEC when one command fails: the commit must check first."""
    rules = write_rules(tmp_path, MEMORY_RULES.replace("for: 10s", "for: 0s"))
    client.set(key, "in the way")
    add_sample(client, 1, **{"virtual_memory-percent": 70})
    with running_evaluator(alerts_env(redis_url, rules, ALERT_WEBHOOKS=webhooks)):
        problem = wait_for(lambda: status_of(client).get("problem"), what="the problem in the status")
        assert f"key {key!r} is a string" in problem
        assert key == KEYS.transitions or client.xlen(KEYS.transitions) == 0
        client.delete(key)
        wait_for(lambda: cursor_of(client).get("input") == "1000-0", what="the sample evaluated")
        wait_for(lambda: status_of(client).get("problem") == "", what="the problem cleared")
    assert transitions(client) == [("mem", "", "firing", 1000)]


def test_a_redis_restart_is_waited_out_and_no_transition_is_lost_or_repeated(own_valkey, tmp_path):
    server = own_valkey()
    client = redis.Redis(port=server.port, decode_responses=True)
    rules = write_rules(tmp_path, MEMORY_RULES.replace("for: 10s", "for: 0s"))
    env = alerts_env(f"redis://127.0.0.1:{server.port}", rules)
    with running_evaluator(env) as evaluator:
        add_sample(client, 1, **{"virtual_memory-percent": 70})
        wait_for(lambda: len(transitions(client)) == 1, what="firing")
        server.stop()
        wait_for(lambda: not evaluator.health.ready, what="the outage noticed")
        assert evaluator.health.alive
        server = own_valkey()
        client = redis.Redis(port=server.port, decode_responses=True)
        add_sample(client, 2, **{"virtual_memory-percent": 10})
        add_sample(client, 3, **{"virtual_memory-percent": 90})
        wait_for(lambda: cursor_of(client).get("input") == "3000-0", timeout=60, what="evaluating again")
    assert transitions(client) == [("mem", "", "firing", 1000), ("mem", "", "resolved", 2000),
                                   ("mem", "", "firing", 3000)]
