"""The rules file: YAML, checked rule by rule, so one bad rule costs only that rule.

    rules:
      - name: cpu-high
        source: sample            # sample | extra | output | runtime
        value: cpu_percent-*      # a name, or a pattern with an aggregate
        aggregate: mean           # mean | max | min | sum
        op: ">"
        threshold: 90
        for: 2m
        severity: warning         # info | warning | critical
        summary: "CPU {value:.0f} % on {host}"
        hosts: all                # all, a pattern, or a list of host ids / patterns
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
import operator
import re
import reprlib
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SOURCES = ("sample", "extra", "output", "runtime")
RUNTIME_FIGURES = ("lag_seconds", "errors_per_minute", "seconds_since_sample")
AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda values: sum(values) / len(values), "max": max, "min": min, "sum": sum,
}
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}
SEVERITIES = ("info", "warning", "critical")
SETTINGS = ("name", "source", "value", "aggregate", "op", "threshold", "for", "severity", "summary", "hosts")
SUMMARY_FIELDS = ("value", "host", "rule", "threshold", "severity")
MAX_FILE_BYTES = 1024 * 1024
MAX_RULES = 500
MAX_FOR_SECONDS = 7 * 24 * 3600
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
HOST_PATTERN = re.compile(r"^[A-Za-z0-9_.\-*?\[\]]{1,253}$")
VALUE_NAME = re.compile(r"^[^\s:{}]{1,256}$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
# A format spec may align, pad and round; no nested fields and no widths that build huge strings.
SAFE_SPEC = re.compile(r"^(.?[<>^=])?[+\- ]?#?0?\d{0,2},?(\.\d{1,2})?[a-zA-Z%]?$")


class RuleError(ValueError):
    """One rule, or the whole file, cannot be used; the message says what and how to fix it."""


@dataclass(frozen=True)
class Rule:
    name: str
    value: str
    op: str
    threshold: float
    source: str = "sample"
    aggregate: str | None = None
    for_seconds: float = 0.0
    severity: str = "warning"
    summary: str = "{rule} on {host}: {value}"
    hosts: tuple[str, ...] = ()  # patterns; empty: every host

    @property
    def pattern(self) -> bool:
        """Whether the value names several fields (a glob) to combine."""
        return any(c in self.value for c in "*?[")

    def applies_to(self, host: str) -> bool:
        """Whether the rule watches this host ("" is the plain keys)."""
        return not self.hosts or any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hosts)

    def breached(self, value: float) -> bool:
        """Whether the value meets the rule's condition."""
        return OPS[self.op](value, self.threshold)

    def render(self, value: float | None, host: str) -> str:
        """The summary with its fields filled in (checked at parse time, so this does not raise)."""
        shown = value if value is not None else math.nan
        return self.summary.format(value=shown, host=host or "local", rule=self.name, threshold=self.threshold,
                                   severity=self.severity)

    def describe(self) -> dict[str, Any]:
        """What the page needs to draw the threshold."""
        return {"name": self.name, "source": self.source, "value": self.value, "aggregate": self.aggregate,
                "op": self.op, "threshold": self.threshold, "for_seconds": self.for_seconds,
                "severity": self.severity, "hosts": list(self.hosts)}


@dataclass(frozen=True)
class Problem:
    rule: str  # the rule's name, or "rule #<n>" when it has none, or "" for the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}" if self.rule else self.message


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    problems: tuple[Problem, ...] = field(default_factory=tuple)


def load_rules(path: Path) -> RuleSet:
    """The rules of a file; RuleError when the file as a whole cannot be read (keep the last good set)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise RuleError(f"{path} is {size:,} bytes, over {MAX_FILE_BYTES:,}: that is not a rules file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleError(f"{path}: no such file; mount the rules there or set ALERTS_FILE") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RuleError(f"{path}: cannot be read ({error})") from None
    return parse_rules(text, str(path))


def parse_rules(text: str, origin: str = "rules") -> RuleSet:
    """Every rule that parses, and a problem for each one that does not."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RuleError(f"{origin} is not YAML: {error}".replace("\n", " ")) from None
    except RecursionError:
        raise RuleError(f"{origin} nests too deeply to be a rules file") from None
    if document is None:
        document = {"rules": []}
    if not isinstance(document, Mapping) or not isinstance(document.get("rules"), list):
        raise RuleError(f"{origin} must be a mapping with a 'rules:' list, got {_kind(document)}")
    entries = document["rules"]
    if len(entries) > MAX_RULES:
        raise RuleError(f"{origin} has {len(entries)} rules, at most {MAX_RULES}")
    rules: list[Rule] = []
    problems: list[Problem] = []
    for index, entry in enumerate(entries, 1):
        label = _label(entry, index)
        try:
            rule = parse_rule(entry)
        except RuleError as error:
            problems.append(Problem(label, str(error)))
            continue
        if any(r.name == rule.name for r in rules):
            problems.append(Problem(label, f"a rule named {rule.name!r} comes earlier; names must be unique"))
            continue
        rules.append(rule)
    return RuleSet(tuple(rules), tuple(problems))


def parse_rule(entry: Any) -> Rule:
    """One rule from its mapping, or RuleError naming the setting that is wrong."""
    if not isinstance(entry, Mapping):
        raise RuleError(f"a rule is a mapping of settings ({', '.join(SETTINGS)}), got {_kind(entry)}")
    unknown = [str(key) for key in entry if key not in SETTINGS]
    if unknown:
        raise RuleError(f"unknown setting {_shown(unknown[0])}{_did_you_mean(unknown[0], SETTINGS)}; "
                        f"settings are {', '.join(SETTINGS)}")
    name = _required_text(entry, "name", NAME, "letters, digits, '-', '_' or '.', at most 128")
    source = _choice(entry, "source", SOURCES, "sample")
    value = _required_text(entry, "value", VALUE_NAME, "a field name or pattern without spaces, ':' or braces")
    if source == "runtime" and value not in RUNTIME_FIGURES:
        raise RuleError(f"value {value!r} is not a runtime figure{_did_you_mean(value, RUNTIME_FIGURES)}; "
                        f"they are {', '.join(RUNTIME_FIGURES)}")
    aggregate = _choice(entry, "aggregate", tuple(AGGREGATES), None)
    if any(c in value for c in "*?[") and aggregate is None:
        raise RuleError(f"value {value!r} is a pattern: say how to combine the fields it matches "
                        f"with 'aggregate: {' | '.join(AGGREGATES)}'")
    rule = Rule(name=name, source=source, value=value, aggregate=aggregate,
                op=_choice(entry, "op", tuple(OPS), None, required=True), threshold=_threshold(entry),
                for_seconds=parse_duration(entry.get("for", 0)), severity=_choice(entry, "severity", SEVERITIES,
                                                                                   "warning"),
                hosts=_hosts(entry.get("hosts", "all")))
    if "summary" in entry:
        rule = dataclasses.replace(rule, summary=_summary(entry["summary"]))
    return rule


def parse_duration(text: Any) -> float:
    """Seconds from 90, "90s", "2m", "1h30m" or "500ms"."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str) and text.strip() and DURATION_PART.sub("", text.strip()) == "":
        seconds = sum(float(n) * UNIT_SECONDS[unit] for n, unit in DURATION_PART.findall(text.strip()))
    else:
        raise RuleError(f"'for: {_shown(text)}' is not a duration; write seconds (90) or e.g. 30s, 2m, 1h30m")
    if not 0 <= seconds <= MAX_FOR_SECONDS:
        raise RuleError(f"'for: {_shown(text)}' must be between 0 and 7 days")
    return seconds


def _threshold(entry: Mapping[str, Any]) -> float:
    value = entry.get("threshold")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RuleError(f"'threshold' must be a finite number, got {_shown(value)}")
    return float(value)


def _hosts(value: Any) -> tuple[str, ...]:
    if value in ("all", "*"):
        return ()
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise RuleError(f"'hosts' must be 'all', a host id or pattern, or a list of them, got {_shown(value)}")
    for pattern in patterns:
        if not HOST_PATTERN.match(pattern):
            raise RuleError(f"'hosts' entry {_shown(pattern)} is not a host id or pattern "
                            "(letters, digits, '-', '.', '_', and * ? [ ])")
    return tuple(patterns)


def _summary(value: Any) -> str:
    """A summary template that may use only {value}, {host}, {rule}, {threshold}, {severity}."""
    if not isinstance(value, str) or len(value) > 1000:
        raise RuleError("'summary' must be text of at most 1000 characters")
    try:
        for _, name, spec, conversion in string.Formatter().parse(value):
            if name is None:
                continue
            if name not in SUMMARY_FIELDS:
                raise RuleError(f"'summary' uses {{{name}}}; it may use only "
                                + ", ".join(f"{{{f}}}" for f in SUMMARY_FIELDS))
            if spec and not SAFE_SPEC.match(spec):
                raise RuleError(f"'summary' format {{{name}:{spec}}} is not allowed; use e.g. {{{name}:.1f}}")
        value.format(value=1.5, host="h", rule="r", threshold=1.0, severity="warning")
    except ValueError as error:
        if isinstance(error, RuleError):
            raise
        raise RuleError(f"'summary' is not a valid template ({error}); write braces as {{{{ }}}}") from None
    return value


def _required_text(entry: Mapping[str, Any], key: str, pattern: re.Pattern, what: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise RuleError(f"'{key}' must be {what}, got {_shown(value)}")
    return value


def _choice(entry: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str | None,
            required: bool = False) -> str | None:
    if key not in entry and not required:
        return default
    value = entry.get(key)
    if value not in choices:
        raise RuleError(f"'{key}' must be one of {', '.join(choices)}, got {_shown(value)}"
                        + (_did_you_mean(value, choices) if isinstance(value, str) else ""))
    return value


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _label(entry: Any, index: int) -> str:
    name = entry.get("name") if isinstance(entry, Mapping) else None
    return name if isinstance(name, str) and NAME.match(name) else f"rule #{index}"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def _shown(value: Any) -> str:
    """A bounded repr: a value in a message may be a file's worth of aliases (a billion laughs)."""
    return _SHORT.repr(value)


def _kind(value: Any) -> str:
    return "an empty file" if value is None else f"a {type(value).__name__}"
