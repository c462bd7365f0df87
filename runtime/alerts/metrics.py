"""The evaluator's Prometheus metrics: `alerts_firing{rule,host,severity}` and how it is doing."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AlertsMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.firing = Gauge("alerts_firing", "1 while the alert fires", ["rule", "host", "severity"],
                            registry=self.registry)
        self.transitions = Counter("alerts_transitions", "Transitions stored, by phase", ["phase"],
                                   registry=self.registry)
        self.problems = Gauge("alerts_rule_problems", "Rules refused or whose value never appeared",
                              registry=self.registry)
        self.deliveries = Counter("alerts_webhook_deliveries", "Webhook POSTs, by receiver and outcome",
                                  ["receiver", "outcome"], registry=self.registry)
        self._firing: set[tuple[str, str, str]] = set()

    def show_firing(self, firing: set[tuple[str, str, str]]) -> None:
        """Exactly these (rule, host, severity) fire now."""
        for labels in self._firing - firing:
            self.firing.remove(*labels)
        for labels in firing:
            self.firing.labels(*labels).set(1)
        self._firing = set(firing)

    def delivered(self, receiver: str, ok: bool) -> None:
        self.deliveries.labels(receiver, "delivered" if ok else "failed").inc()
