"""The alert state machine: inactive -> pending -> firing -> resolved, with `for` durations.

Time is the time of what was observed, in milliseconds of the Redis server's clock: a sample's
stream entry id, or the server's TIME for the runtime's figures. Replaying the same samples gives
the same transitions, which is what makes them storable exactly once.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass

from runtime.alerts.rules import Rule


class Phase(str, enum.Enum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"  # a transition only: a resolved alert is inactive again


NOTIFIED = (Phase.FIRING, Phase.RESOLVED)  # what Alertmanager receivers know about


@dataclass(frozen=True)
class AlertState:
    """One rule on one host; only pending and firing alerts are stored."""

    phase: Phase = Phase.INACTIVE
    active_ms: int | None = None  # the condition has held since
    value: float | None = None

    def to_json(self) -> str:
        return json.dumps({"phase": self.phase.value, "active_ms": self.active_ms, "value": self.value})

    @classmethod
    def from_json(cls, text: str) -> AlertState:
        """Raises ValueError (or TypeError, KeyError) for anything but a stored state."""
        data = json.loads(text)
        phase = Phase(data["phase"])
        if phase not in (Phase.PENDING, Phase.FIRING):
            raise ValueError(f"a stored state is pending or firing, not {phase.value}")
        value = data.get("value")
        return cls(phase, int(data["active_ms"]), None if value is None else float(value))


@dataclass(frozen=True)
class Transition:
    rule: str
    host: str
    phase: Phase  # pending, firing, resolved, or inactive (pending that cleared before `for`)
    at_ms: int
    active_ms: int
    value: float | None
    threshold: float
    op: str
    severity: str
    summary: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.host)

    def fields(self) -> dict[str, str]:
        """As a stream entry: every value text."""
        data = asdict(self)
        data["phase"] = self.phase.value
        data["value"] = "" if self.value is None else repr(self.value)
        data["fingerprint"] = self.fingerprint
        return {key: str(value) for key, value in data.items()}


def fingerprint(rule: str, host: str) -> str:
    """A stable id of one alert (rule and host), 16 hex digits like Alertmanager's."""
    return hashlib.sha256(f"{rule}\0{host}".encode()).hexdigest()[:16]


def step(rule: Rule, host: str, state: AlertState, value: float | None, at_ms: int
         ) -> tuple[AlertState, Transition | None]:
    """The next state after observing `value` at `at_ms`, and the transition if the phase changed."""
    if value is None:  # no data: nothing changes, as long as it is missing
        return state, None
    if rule.breached(value):
        if state.phase == Phase.INACTIVE:
            state = AlertState(Phase.PENDING, at_ms, value)
            if rule.for_seconds > 0:
                return state, _transition(rule, host, state, Phase.PENDING, at_ms)
        if state.phase == Phase.PENDING and at_ms - state.active_ms >= rule.for_seconds * 1000:
            state = AlertState(Phase.FIRING, state.active_ms, value)
            return state, _transition(rule, host, state, Phase.FIRING, at_ms)
        return AlertState(state.phase, state.active_ms, value), None
    if state.phase == Phase.INACTIVE:
        return state, None
    ended = Phase.RESOLVED if state.phase == Phase.FIRING else Phase.INACTIVE
    return AlertState(), _transition(rule, host, AlertState(state.phase, state.active_ms, value), ended, at_ms)


def _transition(rule: Rule, host: str, state: AlertState, phase: Phase, at_ms: int) -> Transition:
    return Transition(rule=rule.name, host=host, phase=phase, at_ms=at_ms, active_ms=state.active_ms,
                      value=state.value, threshold=rule.threshold, op=rule.op, severity=rule.severity,
                      summary=rule.render(state.value, host))


def retire(name: str, host: str, state: AlertState, at_ms: int, rule: Rule | None) -> Transition:
    """The end of an alert whose rule was removed or no longer applies to its host."""
    phase = Phase.RESOLVED if state.phase == Phase.FIRING else Phase.INACTIVE
    summary = f"rule {name} was removed or no longer applies to this host"
    return Transition(rule=name, host=host, phase=phase, at_ms=at_ms, active_ms=state.active_ms or at_ms,
                      value=state.value, threshold=rule.threshold if rule else float("nan"),
                      op=rule.op if rule else "", severity=rule.severity if rule else "none", summary=summary)
