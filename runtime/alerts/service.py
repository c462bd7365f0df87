"""The evaluator: read every new sample and output once, step each rule's state, commit, send.

    read    one XREAD over every host's input (and output) stream, from the committed cursors;
            a host without a stream is polled (its plain key, when the value changed)
    step    each rule that applies to the host, at the entry's time; runtime figures on a timer
    commit  transitions + states + cursors in one transaction fenced by the lease (store.py)
    send    receivers are woken; they deliver from the transitions stream in their own threads
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import redis

from runtime import schema
from runtime.alerts import sources
from runtime.alerts.config import AlertsConfig
from runtime.alerts.evaluate import AlertState, Phase, Transition, retire, step
from runtime.alerts.metrics import AlertsMetrics
from runtime.alerts.notify import Receiver, start_receivers
from runtime.alerts.rules import Rule
from runtime.alerts.sources import HostKeys
from runtime.alerts.store import AlertStore, Batch, Checkpoint, HostCursor
from runtime.alerts.values import json_object, value_of
from runtime.alerts.watch import Coverage, RuleWatcher
from runtime.config import BACKOFF_CAP_SECONDS
from runtime.keytypes import KeyTypeError
from runtime.lease import Lease, LeaseLost
from runtime.observe import Health
from runtime.status import HEARTBEAT_SECONDS, now_text

log = logging.getLogger(__name__)

HOSTS_SECONDS = 2.0  # how soon a new host is followed
TIMER_SECONDS = 1.0  # how often the runtime's figures (lag, errors, seconds since a sample) are looked at
BLOCK_SECONDS = 1.0  # longest wait for new entries: the timer's resolution, and how soon a stop is noticed
READ_COUNT = 512  # entries per stream per read
SOURCE_FIELDS = {"sample": schema.SAMPLE_FIELD, "extra": schema.EXTRA_FIELD}


class Evaluator:
    def __init__(self, config: AlertsConfig, client: redis.Redis, stop: threading.Event,
                 metrics: AlertsMetrics | None = None) -> None:
        self.config, self.client, self.stop = config, client, stop
        self.keys = config.keys.alerts
        self.lease = Lease(client, self.keys.lease, config.lease_seconds)
        self.store = AlertStore(client, self.keys, self.lease)
        self.watcher = RuleWatcher(config.rules_path)
        self.coverage = Coverage(config.grace_seconds)
        self.metrics = metrics or AlertsMetrics()
        self.health = Health()
        self.checkpoint: Checkpoint | None = None
        self.hosts: list[HostKeys] = []
        self.invalid_hosts = 0
        self.receivers: list[Receiver] | None = None
        self._retired: dict[str, Rule] = {}  # rules of the previous file, to end their alerts
        self._hosts_read = self._timer_ran = self._reported = 0.0
        self._logged: set[tuple[str, str]] = set()  # problems already logged
        self.problem: str | None = None  # what keeps the evaluator from storing anything

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        """Evaluate until `stop` is set; Redis outages are waited out, any other failure is logged."""
        backoff = 0.1
        try:
            while not self.stop.is_set():
                self.health.progress()
                try:
                    self._step()
                    backoff = 0.1
                except KeyTypeError as error:  # someone's key where ours should be: nothing was written
                    self._stalled(str(error))
                    self.stop.wait(1.0)
                except redis.RedisError as error:
                    self._forget("redis_unavailable", error)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_CAP_SECONDS)
                    self.health.progress()  # an outage is waited out: a restart would not cure it
                except Exception as error:  # noqa: BLE001 - the outermost step: record it and go on
                    log.exception("evaluation_failed error=%s", error)
                    self._forget("evaluation_failed", error)
                    self.stop.wait(1.0)
            if self.lease.held:
                self.client.hset(self.keys.status, mapping={"state": "stopped", "heartbeat": now_text()})
        except redis.RedisError:
            pass
        finally:
            try:
                self.lease.release()
            except redis.RedisError:
                pass
        log.info("stopped")

    def _forget(self, event: str, error: BaseException) -> None:
        """What we hold may not be what is stored: read the stored checkpoint again."""
        self.health.ready = False
        self.checkpoint = None
        if isinstance(error, redis.RedisError):
            log.warning("%s url=%s error=%s", event, self.config.redis.safe_url(), error)

    def _stalled(self, problem: str) -> None:
        """Nothing can be stored until this is fixed: say so in the log (once) and the status."""
        self.checkpoint = None
        if problem != self.problem:
            log.error("stalled problem=%s", problem)
        self.problem = problem
        try:
            self.client.hset(self.keys.status, mapping={"problem": problem, "heartbeat": now_text()})
        except redis.RedisError as error:
            log.warning("status_not_written error=%s", error)

    def _step(self) -> None:
        if not self.lease.hold():
            self.checkpoint = None
            self.health.ready = True  # a standby is healthy: it takes over when the active one goes
            self.metrics.show_firing(set())
            self.stop.wait(self.lease.millis / 3000)
            return
        self._reload_rules()
        if self.checkpoint is None:
            self._restore()
        self._refresh_hosts()
        batch = Batch()
        self._retire(batch)
        self._read(batch)
        self._poll(batch)
        self._timer(batch)
        if batch:
            self._commit(batch)
        if self.problem is not None and self.checkpoint is not None:
            log.info("problem_solved was=%s", self.problem)
            self.problem, self._reported = None, 0.0
        self._report()

    def _reload_rules(self) -> None:
        before = self.watcher.rules
        if self.watcher.changed():
            self._retired.update({rule.name: rule for rule in before})
            self.coverage.track(self.watcher.rules)

    def _restore(self) -> None:
        self.checkpoint = self.store.load()
        self._show_firing()
        if self.receivers is None:
            self.receivers = start_receivers(self.config, self.client, self.lease, self.stop, self.metrics.delivered)
        self._hosts_read = 0.0
        self.health.ready = True
        log.info("resumed alerts=%d hosts=%d", len(self.checkpoint.states), len(self.checkpoint.cursors))

    def _refresh_hosts(self) -> None:
        if time.monotonic() - self._hosts_read < HOSTS_SECONDS:
            return
        self._hosts_read = time.monotonic()
        hosts, self.invalid_hosts = sources.discover(self.client, self.config.keys)
        new = [h.host for h in hosts if h.host not in {known.host for known in self.hosts}]
        if new:
            log.info("hosts_followed new=%s total=%d invalid=%d", new, len(hosts), self.invalid_hosts)
        self.hosts = hosts

    # --- read -----------------------------------------------------------------------------------

    def _cursor(self, batch: Batch, host: HostKeys) -> HostCursor:
        cursor = batch.cursors.get(host.host) or self.checkpoint.cursors.get(host.host)
        if cursor is None:
            cursor = batch.cursors[host.host] = self._first_cursor(host)
        return cursor

    def _first_cursor(self, host: HostKeys) -> HostCursor:
        """A host never read before: from its first entries (START_FROM=earliest) or its newest; no
        input stream yet: polling its plain key."""
        newest = sources.newest_id(self.client, host.keys.input_stream)
        if self.config.start_from_earliest or newest is None:
            return HostCursor("0-0" if newest else None, "0-0")
        output = sources.newest_id(self.client, host.output_stream) if host.output_stream else None
        return HostCursor(newest, output or "0-0", schema.stream_id_millis(newest))

    def _read(self, batch: Batch) -> None:
        """One XREAD over every followed stream; blocks a while (well within the lease) when nothing is new."""
        streams: dict[str, str] = {}
        owners: dict[str, tuple[HostKeys, str]] = {}
        wants_output = any(r.source == "output" for r in self.watcher.rules)
        for host in self.hosts:
            cursor = self._cursor(batch, host)
            if cursor.input and not cursor.input.startswith(sources.POLL_PREFIX):
                streams[host.keys.input_stream] = cursor.input
                owners[host.keys.input_stream] = (host, "input")
            if wants_output and host.output_stream:
                streams[host.output_stream] = cursor.output or "0-0"
                owners[host.output_stream] = (host, "output")
        wait = min(BLOCK_SECONDS, self.config.lease_seconds / 3)  # the lease is renewed between reads
        if not streams:
            self.stop.wait(wait)
            return
        block = None if batch else int(wait * 1000)
        for stream, entries in self.client.xread(streams, count=READ_COUNT, block=block) or ():
            host, kind = owners[stream]
            for entry_id, fields in entries:
                (self._on_input if kind == "input" else self._on_output)(batch, host, entry_id, fields)

    def _on_input(self, batch: Batch, host: HostKeys, entry_id: str, fields: dict[str, str]) -> None:
        at_ms = schema.stream_id_millis(entry_id)
        found = {source: json_object(fields.get(name)) for source, name in SOURCE_FIELDS.items()}
        self._evaluate(batch, host.host, found, at_ms)
        cursor = self._cursor(batch, host)
        batch.cursors[host.host] = HostCursor(entry_id, cursor.output, at_ms)

    def _on_output(self, batch: Batch, host: HostKeys, entry_id: str, fields: dict[str, str]) -> None:
        self._evaluate(batch, host.host, {"output": json_object(fields.get(schema.OUTPUT_FIELD))},
                       schema.stream_id_millis(entry_id))
        cursor = self._cursor(batch, host)
        batch.cursors[host.host] = HostCursor(cursor.input, entry_id, cursor.last_sample_ms)

    def _poll(self, batch: Batch) -> None:
        """Hosts without an input stream (the course's collector): the plain key, when its value changed."""
        for host in self.hosts:
            cursor = self._cursor(batch, host)
            if cursor.input and not cursor.input.startswith(sources.POLL_PREFIX):
                continue
            if self.client.exists(host.keys.input_stream):
                batch.cursors[host.host] = HostCursor("0-0", cursor.output, cursor.last_sample_ms)
                continue
            raw = self.client.get(host.keys.input)
            if raw is None or sources.poll_cursor(raw) == cursor.input:
                continue
            at_ms = sources.server_ms(self.client)
            self._evaluate(batch, host.host, {"sample": json_object(raw)}, at_ms)
            batch.cursors[host.host] = HostCursor(sources.poll_cursor(raw), cursor.output, at_ms)

    def _timer(self, batch: Batch) -> None:
        """The runtime's figures, about once a second: they change without a sample (a collector that died)."""
        rules = [r for r in self.watcher.rules if r.source == "runtime"]
        if not rules or time.monotonic() - self._timer_ran < TIMER_SECONDS:
            return
        self._timer_ran = time.monotonic()
        now_ms = sources.server_ms(self.client)
        figures = sources.runtime_figures(self.client, self.hosts, now_ms)
        for host in self.hosts:
            found = figures.get(host.host, {})
            last = self._cursor(batch, host).last_sample_ms
            if "seconds_since_sample" not in found and last is not None:  # polled: when its value last changed
                found["seconds_since_sample"] = max(now_ms - last, 0) / 1000
            self._evaluate(batch, host.host, {"runtime": found}, now_ms)

    # --- step -----------------------------------------------------------------------------------

    def _evaluate(self, batch: Batch, host: str, found: dict[str, dict | None], at_ms: int) -> None:
        """Step every rule whose source is among `found` and that applies to `host`."""
        for source, fields in found.items():
            if fields:
                self.coverage.saw_names(source, fields)
        for rule in self.watcher.rules:
            if rule.source not in found or not rule.applies_to(host):
                continue
            value = value_of(rule, found[rule.source])
            self.coverage.saw(rule, value)
            key = (rule.name, host)
            before = batch.states.get(key) or self.checkpoint.states.get(key) or AlertState()
            after, transition = step(rule, host, before, value, at_ms)
            if after != before:
                batch.states[key] = after
            if transition is not None:
                batch.transitions.append(transition)

    def _retire(self, batch: Batch) -> None:
        """End the alerts of rules that were removed, or no longer apply to their host."""
        rules = self.watcher.by_name()
        if not self.checkpoint.states or (self.watcher.file_error and not rules):
            return
        now_ms = None
        for (name, host), state in list(self.checkpoint.states.items()):
            rule = rules.get(name)
            if rule is not None and rule.applies_to(host):
                continue
            now_ms = now_ms or sources.server_ms(self.client)
            batch.transitions.append(retire(name, host, state, now_ms, self._retired.get(name)))
            batch.states[(name, host)] = AlertState()

    # --- commit ---------------------------------------------------------------------------------

    def _commit(self, batch: Batch) -> None:
        try:
            ids = self.store.commit(batch)
        except (LeaseLost, redis.WatchError) as lost:
            log.warning("commit_dropped transitions=%d reason=%s", len(batch.transitions), lost or "lease moved")
            self.checkpoint = None
            return
        for key, state in batch.states.items():
            if state.phase == Phase.INACTIVE:
                self.checkpoint.states.pop(key, None)
            else:
                self.checkpoint.states[key] = state
        self.checkpoint.cursors.update(batch.cursors)
        for entry_id, transition in zip(ids, batch.transitions):
            self._announce(entry_id, transition)
        if batch.transitions:
            self._show_firing()
            for receiver in self.receivers or ():
                receiver.wake.set()

    def _announce(self, entry_id: str, transition: Transition) -> None:
        self.metrics.transitions.labels(transition.phase.value).inc()
        level = logging.WARNING if transition.phase == Phase.FIRING else logging.INFO
        log.log(level, "alert_%s rule=%s host=%s value=%s id=%s summary=%s", transition.phase.value,
                transition.rule, transition.host or "-", transition.value, entry_id, transition.summary)

    def _show_firing(self) -> None:
        rules = self.watcher.by_name()
        self.metrics.show_firing({(name, host, rules[name].severity if name in rules else "none")
                                  for (name, host), state in self.checkpoint.states.items()
                                  if state.phase == Phase.FIRING})

    # --- report ---------------------------------------------------------------------------------

    def problems(self) -> list[dict[str, str]]:
        """Rules refused and rules whose value has not appeared, as the status lists them."""
        hosts = [host.host for host in self.hosts]
        found = [*self.watcher.problems, *self.coverage.problems(self.watcher.rules, hosts)]
        return [{"rule": p.rule, "message": p.message} for p in found]

    def _report(self) -> None:
        """The evaluator's status, for the page: rules, their problems, what fires; every HEARTBEAT_SECONDS."""
        if self.checkpoint is None or time.monotonic() - self._reported < HEARTBEAT_SECONDS:
            return
        self._reported = time.monotonic()
        problems = self.problems()
        self.metrics.problems.set(len(problems))
        for problem in problems:
            if (problem["rule"], problem["message"]) not in self._logged:
                log.error("rule_problem rule=%s %s", problem["rule"], problem["message"])
        self._logged = {(p["rule"], p["message"]) for p in problems}
        phases = [s.phase for s in self.checkpoint.states.values()]
        self.client.hset(self.keys.status, mapping={
            "state": "running", "pid": str(os.getpid()), "heartbeat": now_text(),
            "rules_file": str(self.config.rules_path), "rules_error": self.watcher.file_error or "",
            "rules": json.dumps([rule.describe() for rule in self.watcher.rules]),
            "rule_problems": json.dumps(problems), "hosts": str(len(self.hosts)),
            "hosts_invalid": str(self.invalid_hosts), "firing": str(phases.count(Phase.FIRING)),
            "pending": str(phases.count(Phase.PENDING)), "problem": self.problem or "",
        })

    def describe(self) -> str:
        """Why the evaluator is not ready, for /readyz."""
        return "Redis unreachable" if self.checkpoint is None else "starting"
