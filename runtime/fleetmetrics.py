"""Per-host figures on /metrics: a `host` label where it matters, with a cap on the series.

The fleet's hosts share the runtime's totals (observe.Metrics) and add labelled series for the
figures one looks at per host: invocations, errors and the latest lag. Only the first
HOST_SERIES_MAX hosts followed get series of their own; the rest share `host="_other"`, so a registry
of thousands cannot blow up the scrape. A host's series go when the host is dropped. Hosts never
write `runtime_ready`: the fleet says whether it is ready, once.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from runtime.observe import Metrics

HOST_SERIES_MAX = 100
OTHER_HOSTS = "_other"


class FleetMetrics:
    """The labelled families, the hosts' counts, and which hosts have series of their own."""

    def __init__(self, metrics: Metrics) -> None:
        self.base = metrics
        registry = metrics.registry
        self.invocations = Counter("runtime_host_invocations", "Handler invocations per host", ["host"],
                                   registry=registry)
        self.errors = Counter("runtime_host_errors", "Error records per host and fault", ["host", "fault"],
                              registry=registry)
        self.lag = Gauge("runtime_host_lag_seconds", "Sample time to output stored, the latest commit of each host",
                         ["host"], registry=registry)
        self.hosts = Gauge("runtime_hosts", "Hosts by what this replica does with them: held (followed here), "
                           "unheld (valid, followed by no replica), skipped (invalid ids)", ["state"],
                           registry=registry)
        self.labelled: set[str] = set()

    def for_host(self, host: str) -> HostMetrics:
        if host not in self.labelled and len(self.labelled) < HOST_SERIES_MAX:
            self.labelled.add(host)
        return HostMetrics(self, host if host in self.labelled else OTHER_HOSTS)

    def drop(self, host: str) -> None:
        """Remove a host's series (a host no longer followed here)."""
        if host not in self.labelled:
            return
        self.labelled.discard(host)
        for family in (self.invocations, self.lag):
            try:
                family.remove(host)
            except KeyError:
                pass
        for labels in [labels for labels in self.errors._metrics if labels[0] == host]:  # noqa: SLF001
            self.errors.remove(*labels)


class _Both:
    """Counts into the runtime's total and into one host's series."""

    def __init__(self, total, host_series) -> None:
        self.total, self.host_series = total, host_series

    def inc(self, amount: float = 1) -> None:
        self.total.inc(amount)
        self.host_series.inc(amount)

    def observe(self, value: float) -> None:
        self.total.observe(value)
        self.host_series.set(value)


class _Faults:
    def __init__(self, fleet: FleetMetrics, label: str) -> None:
        self.fleet, self.label = fleet, label

    def labels(self, fault: str) -> _Both:
        return _Both(self.fleet.base.errors.labels(fault=fault), self.fleet.errors.labels(host=self.label, fault=fault))


class _Ignored:
    """`runtime_ready` as a host would set it: the fleet's readiness is set once, by the fleet."""

    def set(self, value: float) -> None:
        pass


class HostMetrics:
    """What a host's Runtime writes (the observe.Metrics attributes), routed to the totals and its series."""

    def __init__(self, fleet: FleetMetrics, label: str) -> None:
        base = fleet.base
        self.invocations = _Both(base.invocations, fleet.invocations.labels(host=label))
        self.lag = _Both(base.lag, fleet.lag.labels(host=label))
        self.errors = _Faults(fleet, label)
        self.duration, self.gaps, self.loop_errors, self.function = base.duration, base.gaps, base.loop_errors, \
            base.function
        self.hosts_skipped = base.hosts_skipped
        self.ready = _Ignored()
