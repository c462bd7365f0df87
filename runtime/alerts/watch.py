"""Rules that follow their file: reloaded when it changes (an edit, or a ConfigMap's `..data` swap)."""

from __future__ import annotations

import difflib
import logging
import os
import time
from pathlib import Path

from runtime.alerts.rules import Problem, Rule, RuleError, load_rules

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0
MAX_NAMES = 2000  # names remembered per source, to suggest close matches


class RuleWatcher:
    """The current rules; a file that cannot be read keeps the last good rules and says why."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rules: tuple[Rule, ...] = ()
        self.problems: tuple[Problem, ...] = ()
        self.file_error: str | None = None
        self._signature: tuple | None = ()  # () : never looked
        self._checked = 0.0

    def changed(self) -> bool:
        """Reload when the file (followed through symlinks) differs; True when the rules changed."""
        if time.monotonic() - self._checked < CHECK_SECONDS and self._signature != ():
            return False
        self._checked = time.monotonic()
        signature = self._stat()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            loaded = load_rules(self.path)
        except RuleError as error:
            self.file_error = str(error)
            log.error("rules_unusable %s; keeping the %d rules loaded before", error, len(self.rules))
            return False
        self.file_error = None
        before = self.rules
        self.rules, self.problems = loaded.rules, loaded.problems
        for problem in loaded.problems:
            log.error("rule_refused file=%s %s", self.path, problem)
        log.info("rules_loaded file=%s rules=%d refused=%d", self.path, len(self.rules), len(self.problems))
        return self.rules != before

    def _stat(self) -> tuple | None:
        try:
            stat = os.stat(self.path)  # follows the `..data` symlink a ConfigMap update swaps
        except OSError:
            return None
        return stat.st_ino, stat.st_dev, stat.st_mtime_ns, stat.st_size

    def by_name(self) -> dict[str, Rule]:
        """The current rules by name."""
        return {rule.name: rule for rule in self.rules}


class Coverage:
    """Which rules' values have appeared; a rule whose value has not, after a grace period, is reported."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace = grace_seconds
        self.appeared: set[str] = set()
        self.since: dict[str, float] = {}
        self.names: dict[str, set[str]] = {}  # source -> names seen

    def track(self, rules: tuple[Rule, ...]) -> None:
        """Start the grace period of new or changed rules."""
        now = time.monotonic()
        current = {rule.name for rule in rules}
        self.since = {name: self.since.get(name, now) for name in current}
        self.appeared &= current

    def saw(self, rule: Rule, value: float | None) -> None:
        """Note that the rule's value appeared (any host)."""
        if value is not None:
            self.appeared.add(rule.name)

    def saw_names(self, source: str, names: object) -> None:
        """Remember names seen in a source, to suggest one for a rule whose value never appears."""
        known = self.names.setdefault(source, set())
        if len(known) < MAX_NAMES:
            known.update(n for n in names if isinstance(n, str))

    def problems(self, rules: tuple[Rule, ...], hosts: list[str]) -> list[Problem]:
        """A problem for each rule whose value has not appeared within the grace period."""
        now = time.monotonic()
        return [Problem(rule.name, self._missing(rule, hosts)) for rule in rules
                if rule.name not in self.appeared and now - self.since.get(rule.name, now) >= self.grace]

    def _missing(self, rule: Rule, hosts: list[str]) -> str:
        if rule.hosts and not any(rule.applies_to(host) for host in hosts):
            return (f"no host matches 'hosts: {', '.join(rule.hosts)}' (followed: "
                    f"{', '.join(h or 'local' for h in hosts[:10]) or 'none yet'}{', …' if len(hosts) > 10 else ''})")
        where = {"sample": "the samples", "extra": "the samples' extra metrics", "output": "the function's outputs",
                 "runtime": "the runtime's status"}[rule.source]
        text = f"value {rule.value!r} has not appeared in {where} for {self.grace:g} s"
        close = difflib.get_close_matches(rule.value, sorted(self.names.get(rule.source, ())), n=3)
        if close:
            text += f"; names there like it: {', '.join(close)}"
        elif rule.source == "runtime":
            text += " (is the runtime running, and REDIS_OUTPUT_KEY set for the evaluator too?)"
        return text
