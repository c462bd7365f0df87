"""Webhooks: the Alertmanager payload, retries with backoff, slow receivers, resending after a restart."""

import base64
import json

from runtime.alerts.evaluate import Phase, Transition
from runtime.alerts.notify import ZERO_TIME, alertmanager_payload
from tests.alerts_support import (KEYS, Receiver, add_sample, alerts_env, running_evaluator, status_of,
                                  transitions, write_rules)
from tests.conftest import free_port, wait_for

RULES = """
rules:
  - {name: mem, value: virtual_memory-percent, op: ">", threshold: 50, severity: critical,
     summary: "memory {value:.0f} % on {host}"}
"""

ALERT_KEYS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
PAYLOAD_KEYS = {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels", "commonLabels",
                "commonAnnotations", "externalURL", "alerts"}


def stored(phase: Phase, at_ms: int, host: str = "web-1") -> dict[str, str]:
    return Transition(rule="mem", host=host, phase=phase, at_ms=at_ms, active_ms=1_000, value=93.5, threshold=90,
                      op=">", severity="critical", summary="memory 94 % on web-1").fields()


def test_the_payload_has_alertmanagers_shape():
    firing = alertmanager_payload(stored(Phase.FIRING, 61_000), "http://dash:8501")
    assert set(firing) == PAYLOAD_KEYS and firing["version"] == "4" and firing["status"] == "firing"
    assert firing["groupKey"] == '{}:{alertname="mem"}' and firing["groupLabels"] == {"alertname": "mem"}
    [alert] = firing["alerts"]
    assert set(alert) == ALERT_KEYS
    assert alert["labels"] == {"alertname": "mem", "severity": "critical", "host": "web-1"}
    assert alert["annotations"]["summary"] == "memory 94 % on web-1"
    assert alert["startsAt"] == "1970-01-01T00:00:01.000Z" and alert["endsAt"] == ZERO_TIME
    assert firing["commonLabels"] == alert["labels"] and firing["externalURL"] == "http://dash:8501"
    resolved = alertmanager_payload(stored(Phase.RESOLVED, 61_000))
    assert resolved["status"] == resolved["alerts"][0]["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] == "1970-01-01T00:01:01.000Z"
    assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]
    assert "host" not in alertmanager_payload(stored(Phase.FIRING, 1, host=""))["alerts"][0]["labels"]


def test_a_failing_receiver_gets_each_transition_once_it_answers(client, redis_url, tmp_path):
    receiver = Receiver(script=[(500, 0), (503, 0), (502, 0)])
    rules = write_rules(tmp_path, RULES)
    try:
        with running_evaluator(alerts_env(redis_url, rules, ALERT_WEBHOOKS=receiver.url)) as evaluator:
            add_sample(client, 1, **{"virtual_memory-percent": 70})
            field = f"webhook {receiver.url}"
            failing = wait_for(lambda: json.loads(status_of(client).get(field, "{}")).get("state") == "failing"
                               and status_of(client)[field], what="the failure in the status")
            assert "HTTP Error 50" in json.loads(failing)["last_error"]
            add_sample(client, 2, **{"virtual_memory-percent": 10})
            wait_for(lambda: len(receiver.bodies) == 2, timeout=30, what="both transitions delivered")
            wait_for(lambda: json.loads(status_of(client)[field])["state"] == "ok", what="ok again")
            assert evaluator.metrics.deliveries.labels(receiver.url, "failed")._value.get() == 3
    finally:
        receiver.close()
    assert receiver.attempts == 5
    assert [b["status"] for b in receiver.bodies] == ["firing", "resolved"]
    assert receiver.bodies[0]["alerts"][0]["annotations"]["summary"] == "memory 70 % on local"


def test_a_slow_receiver_never_holds_samples_back(client, redis_url, tmp_path):
    receiver = Receiver(script=[(200, 3.0)])  # longer than ALERT_WEBHOOK_TIMEOUT=1: a timeout, then retried
    rules = write_rules(tmp_path, RULES)
    try:
        with running_evaluator(alerts_env(redis_url, rules, ALERT_WEBHOOKS=receiver.url)):
            for i in range(10):
                add_sample(client, 1 + i, **{"virtual_memory-percent": 70 if i % 2 == 0 else 10})
            wait_for(lambda: len(transitions(client)) == 10, what="every transition stored while the receiver hangs")
            assert receiver.attempts <= 2
            wait_for(lambda: len(receiver.bodies) >= 10, timeout=60, what="every transition delivered")
    finally:
        receiver.close()
    delivered = [(b["status"], b["alerts"][0]["endsAt"]) for b in receiver.bodies]
    assert [status for status, _ in delivered][-10:] == ["firing", "resolved"] * 5


def test_what_was_not_delivered_is_sent_after_a_restart(client, redis_url, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/alerts"  # nothing listens yet
    rules = write_rules(tmp_path, RULES)
    env = alerts_env(redis_url, rules, ALERT_WEBHOOKS=url)
    with running_evaluator(env):
        add_sample(client, 1, **{"virtual_memory-percent": 70})
        add_sample(client, 2, **{"virtual_memory-percent": 10})
        wait_for(lambda: len(transitions(client)) == 2, what="two transitions stored")
        wait_for(lambda: "failing" in status_of(client).get(f"webhook {url}", ""), what="the failure recorded")
    receiver = Receiver(port=port)
    try:
        with running_evaluator(env):
            wait_for(lambda: len(receiver.bodies) == 2, timeout=30, what="the undelivered transitions sent")
            add_sample(client, 3, **{"virtual_memory-percent": 80})
            wait_for(lambda: len(receiver.bodies) == 3, timeout=30, what="the next one too")
    finally:
        receiver.close()
    assert [b["status"] for b in receiver.bodies] == ["firing", "resolved", "firing"]


def test_a_receiver_that_refuses_the_payload_is_skipped_not_retried_forever(client, redis_url, tmp_path):
    receiver = Receiver(script=[(400, 0)])
    rules = write_rules(tmp_path, RULES)
    try:
        with running_evaluator(alerts_env(redis_url, rules, ALERT_WEBHOOKS=receiver.url)):
            add_sample(client, 1, **{"virtual_memory-percent": 70})
            add_sample(client, 2, **{"virtual_memory-percent": 10})
            wait_for(lambda: len(receiver.bodies) == 1, timeout=30, what="the next transition delivered")
            assert "refused: HTTP 400" in status_of(client)[f"webhook {receiver.url}"]
    finally:
        receiver.close()
    assert receiver.attempts == 2 and receiver.bodies[0]["status"] == "resolved"


def test_webhook_credentials_stay_out_of_redis_and_the_status(client, redis_url, tmp_path):
    receiver = Receiver()
    url = receiver.url.replace("http://", "http://alert:s3cret@")
    rules = write_rules(tmp_path, RULES)
    try:
        with running_evaluator(alerts_env(redis_url, rules, ALERT_WEBHOOKS=url)):
            add_sample(client, 1, **{"virtual_memory-percent": 70})
            wait_for(lambda: len(receiver.bodies) == 1, what="delivered")
    finally:
        receiver.close()
    everything = json.dumps({key: client.dump(key).hex() if client.type(key) != "string" else client.get(key)
                             for key in client.keys("*")}) + json.dumps(status_of(client))
    assert "s3cret" not in everything and "s3cret".encode().hex() not in everything
    assert client.hlen(KEYS.deliveries) == 1
    assert receiver.authorizations == ["Basic " + base64.b64encode(b"alert:s3cret").decode()]  # sent as basic auth
