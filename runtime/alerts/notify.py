"""Webhooks: each firing and resolved transition POSTed in the Alertmanager webhook payload (version 4).

The transitions stream is the queue: a thread per receiver reads at most BATCH entries past the id it
delivered last (kept in Redis, so a restart resends what was not delivered), POSTs them in order and
retries a failing receiver with capped exponential backoff. The evaluator only wakes the threads: a
slow or dead receiver never holds a sample back. Delivery is at least once; a receiver tells repeats
apart by `fingerprint` and `startsAt`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis

from runtime import keytypes, schema
from runtime.alerts.config import AlertsConfig, safe_url
from runtime.alerts.evaluate import NOTIFIED, Phase
from runtime.lease import Lease
from runtime.status import now_text

log = logging.getLogger(__name__)

BATCH = 100
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of an alert that has not ended
RECEIVER = "host-metrics"
WEBHOOK_FIELD = "webhook {url}"  # the evaluator's status: one field per receiver


class PermanentFailure(Exception):
    """The receiver refused the payload (4xx other than 408/429): sending it again cannot help."""


def rfc3339(millis: int) -> str:
    """Server milliseconds as Alertmanager writes times (UTC, milliseconds, Z)."""
    moment = datetime.fromtimestamp(millis / 1000, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alertmanager_payload(fields: Mapping[str, str], external_url: str = "") -> dict[str, Any]:
    """The webhook body Alertmanager sends, for one stored transition (a transitions-stream entry)."""
    status = "resolved" if fields["phase"] == Phase.RESOLVED.value else "firing"
    labels = {"alertname": fields["rule"], "severity": fields["severity"]}
    if fields["host"]:
        labels["host"] = fields["host"]
    annotations = {"summary": fields["summary"], "value": fields["value"],
                   "threshold": f"{fields['op']} {fields['threshold']}"}
    group = {"alertname": fields["rule"]}
    alert = {
        "status": status, "labels": labels, "annotations": annotations,
        "startsAt": rfc3339(int(fields["active_ms"])),
        "endsAt": rfc3339(int(fields["at_ms"])) if status == "resolved" else ZERO_TIME,
        "generatorURL": external_url, "fingerprint": fields["fingerprint"],
    }
    return {
        "version": "4", "groupKey": '{}:{alertname="%s"}' % fields["rule"], "truncatedAlerts": 0,
        "status": status, "receiver": RECEIVER, "groupLabels": group, "commonLabels": labels,
        "commonAnnotations": annotations, "externalURL": external_url, "alerts": [alert],
    }


def delivery_field(url: str) -> str:
    """A receiver's field in the deliveries hash: a digest, so no URL credentials land in Redis."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def post(url: str, body: dict[str, Any], timeout: float) -> None:
    """POST the body as JSON; raises PermanentFailure, or OSError for what is worth retrying."""
    headers = {"Content-Type": "application/json", "User-Agent": "host-metrics-alerts"}
    parts = urlsplit(url)
    if parts.username is not None:  # urllib does not send URL credentials itself: basic auth, as Alertmanager's
        login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            reply.read(64 * 1024)
    except urllib.error.HTTPError as error:
        if 400 <= error.code < 500 and error.code not in (408, 429):
            raise PermanentFailure(f"HTTP {error.code} {error.reason}") from None
        raise


class Receiver(threading.Thread):
    """Delivers the transitions stream to one webhook, in order, while this evaluator holds the lease."""

    def __init__(self, url: str, config: AlertsConfig, client: redis.Redis, lease: Lease,
                 stop: threading.Event, on_result: Callable[[str, bool], None] | None = None) -> None:
        super().__init__(name=f"webhook-{safe_url(url)}", daemon=True)
        self.url, self.shown, self.field = url, safe_url(url), delivery_field(url)
        self.config, self.client, self.lease, self.stop = config, client, lease, stop
        self.keys: schema.AlertKeys = config.keys.alerts
        self.wake = threading.Event()
        self.on_result = on_result or (lambda url, ok: None)
        self.failing_since: str | None = None
        self.state: dict[str, str] = {}  # this receiver's field in the evaluator's status

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if not self.lease.held or not self._deliver_some():
                    self.wake.wait(1.0)
                    self.wake.clear()
            except redis.RedisError as error:
                log.warning("webhook_paused url=%s error=%s", self.shown, error)
                self.stop.wait(1.0)
            except Exception:  # noqa: BLE001 - the outermost step: record and go on
                log.exception("webhook_thread_error url=%s", self.shown)
                self.stop.wait(1.0)

    def _deliver_some(self) -> bool:
        """Send what follows the last delivered id; False when there was nothing."""
        cursor = self.client.hget(self.keys.deliveries, self.field) or "0-0"
        entries = self.client.xrange(self.keys.transitions, min=f"({cursor}", count=BATCH)
        for entry_id, fields in entries:
            if fields.get("phase") in {p.value for p in NOTIFIED} and not self._send(entry_id, fields):
                return True  # stopped, or the lease went elsewhere: the holder sends it
            self.client.hset(self.keys.deliveries, self.field, entry_id)
        return bool(entries)

    def _send(self, entry_id: str, fields: Mapping[str, str]) -> bool:
        """Try until delivered (True) or refused for good (True, logged); False when told to stop."""
        try:
            body = alertmanager_payload(fields, self.config.external_url)
        except (KeyError, ValueError) as error:
            log.error("webhook_skipped url=%s transition=%s error=malformed entry (%s)", self.shown, entry_id, error)
            return True
        delay = BACKOFF_FIRST
        while not self.stop.is_set() and self.lease.held:
            try:
                post(self.url, body, self.config.webhook_timeout)
            except PermanentFailure as error:
                self._record(entry_id, f"refused: {error}; not sent again", delivered=False)
                return True
            except (OSError, ValueError) as error:  # refused, unreachable, timed out, HTTP 5xx
                self._record(entry_id, f"{error}; retrying in {delay:g}s", delivered=False)
                self.stop.wait(delay)
                delay = min(delay * 2, BACKOFF_CAP)
                continue
            self._record(entry_id, "", delivered=True)
            return True
        return False

    def _record(self, entry_id: str, problem: str, delivered: bool) -> None:
        """Failures in the log, the metrics and the evaluator's status, where the page shows them."""
        self.on_result(self.shown, delivered)
        if delivered:
            log.info("webhook_delivered url=%s transition=%s", self.shown, entry_id)
            if self.failing_since is None:
                return
            self.failing_since = None
            self.state.update(state="ok", since=now_text())
        else:
            log.warning("webhook_failed url=%s transition=%s error=%s", self.shown, entry_id, problem)
            self.failing_since = self.failing_since or now_text()
            self.state.update(state="failing", since=self.failing_since, last_error=problem,
                              last_error_at=now_text(), last_error_transition=entry_id)
        try:
            self.client.hset(self.keys.status, WEBHOOK_FIELD.format(url=self.shown), json.dumps(self.state))
        except redis.RedisError as error:
            log.warning("status_not_written error=%s", error)


def start_receivers(config: AlertsConfig, client: redis.Redis, lease: Lease, stop: threading.Event,
                    on_result: Callable[[str, bool], None] | None = None) -> list[Receiver]:
    """A thread per webhook; a webhook never seen before starts after the newest transition."""
    if not config.webhooks:
        return []
    keytypes.check(client, config.keys.alerts.transitions, "stream")  # KeyTypeError: the evaluator reports it
    newest = client.xrevrange(config.keys.alerts.transitions, count=1)
    for url in config.webhooks:
        client.hsetnx(config.keys.alerts.deliveries, delivery_field(url), newest[0][0] if newest else "0-0")
    receivers = [Receiver(url, config, client, lease, stop, on_result) for url in config.webhooks]
    for receiver in receivers:
        receiver.start()
    return receivers
