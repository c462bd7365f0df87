"""The fleet: many hosts on one runtime process, replicas sharing the hosts, a registry that cannot be abused."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime

import psutil
import pytest
import redis

from runtime import schema
from runtime.config import RuntimeConfig
from runtime.fleet import Fleet, env_phase
from runtime.fleetpool import pool_of
from runtime.loop import make_invoker
from runtime.fleetmetrics import HOST_SERIES_MAX, OTHER_HOSTS, FleetMetrics
from runtime.observe import Metrics
from runtime.status import HEARTBEAT_SECONDS
from tests.conftest import free_port, make_samples, runtime_env, spawn, wait_for, write_function
from tests.test_operations import http_get

BASE = schema.Keys(input="metrics", output="out")
# Counts its own invocations in the env: any lost, repeated or reordered sample, or an env reset, shows.
COUNTING = """
import time

def handler(input, context):
    if context.input_key.endswith(":slow"):
        time.sleep(30)
    n = context.env.get("n", 0) + 1
    context.env["n"] = n
    return {"n": n, "stamp": input["timestamp"], "key": context.input_key}
"""


def host_names(count: int, prefix: str = "node") -> list[str]:
    return [f"{prefix}-{i:02d}" for i in range(count)]


def publish_round(client: redis.Redis, hosts: list[str], template: dict) -> None:
    """One sample for every host, as collectors with HOST_ID publish them (stream, latest, registry)."""
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        keys = BASE.for_host(host)
        payload = schema.encode_sample(dict(template, timestamp=schema.format_timestamp(datetime.now())))
        pipe.xadd(keys.input_stream, schema.sample_entry(payload))
        pipe.set(keys.input, payload)
        pipe.hset(BASE.hosts, host, "seen")
    pipe.execute()


@contextmanager
def publishing(client: redis.Redis, hosts: list[str], period: float = 0.1):
    """Publish a round every `period` in a thread until the block ends."""
    stop = threading.Event()
    template = make_samples(1)[0]

    def run() -> None:
        while not stop.wait(period):
            publish_round(client, hosts, template)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def assert_each_sample_handled_once_in_order(client: redis.Redis, host: str) -> None:
    keys = BASE.for_host(host)
    inputs = [entry_id for entry_id, _ in client.xrange(keys.input_stream)]
    stored = [(fields[schema.SAMPLE_ID_FIELD], json.loads(fields[schema.OUTPUT_FIELD]))
              for _, fields in client.xrange(keys.output_stream)]
    assert [sample_id for sample_id, _ in stored] == inputs, f"{host}: outputs are not the inputs once each"
    assert [output["n"] for _, output in stored] == list(range(1, len(inputs) + 1)), f"{host}: env not continuous"
    assert {output["key"] for _, output in stored} == {keys.input}


def all_handled(client: redis.Redis, hosts: list[str]) -> bool:
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        keys = BASE.for_host(host)
        pipe.xlen(keys.input_stream)
        pipe.xlen(keys.output_stream)
    counts = pipe.execute()
    return all(counts[i] == counts[i + 1] for i in range(0, len(counts), 2))


def holders(client: redis.Redis, hosts: list[str]) -> Counter:
    """How many hosts each replica holds."""
    return Counter(client.mget([BASE.for_host(host).lease for host in hosts]))


def fair(client: redis.Redis, hosts: list[str], replicas: int) -> bool:
    held = holders(client, hosts)
    share = -(-len(hosts) // replicas)
    return None not in held and len(held) == replicas and max(held.values()) <= share


def start_runtime(processes: list, redis_url: str, function, log_path, **extra: str):
    log = open(log_path, "a")
    env = runtime_env(redis_url, function, LOG_LEVEL=os.environ.get("FLEET_TEST_LOG", "WARNING"), **extra)
    processes.append(spawn("runtime", env, stderr=log))
    return processes[-1]


def test_three_replicas_share_sixty_hosts_and_survive_a_kill_and_an_addition(client, redis_url, processes,
                                                                             tmp_path):
    hosts = host_names(60)
    function = write_function(tmp_path, COUNTING)
    publish_round(client, hosts, make_samples(1)[0])
    replicas = [start_runtime(processes, redis_url, function, tmp_path / "runtime.log") for _ in range(3)]
    with publishing(client, hosts):
        wait_for(lambda: fair(client, hosts, 3), timeout=60, what="three replicas holding 20 hosts each")
        wait_for(lambda: all(client.xlen(BASE.for_host(h).output_stream) for h in hosts), timeout=60,
                 what="outputs for every host")
        replicas[0].send_signal(signal.SIGKILL)
        replicas[0].wait(10)
        wait_for(lambda: fair(client, hosts, 2), timeout=60, what="the dead replica's hosts taken over")
        start_runtime(processes, redis_url, function, tmp_path / "runtime.log")
        wait_for(lambda: fair(client, hosts, 3), timeout=60, what="hosts handed to the added replica")
        time.sleep(1)  # samples handled by the rebalanced replicas
    wait_for(lambda: all_handled(client, hosts), timeout=90, what="every sample handled")
    for host in hosts:
        assert_each_sample_handled_once_in_order(client, host)
        assert not client.xlen(BASE.for_host(host).errors)


def test_a_handler_that_hangs_for_one_host_costs_only_that_hosts_invocations(client, redis_url, processes,
                                                                               tmp_path):
    hosts = host_names(5)
    function = write_function(tmp_path, COUNTING)
    template = make_samples(1)[0]
    publish_round(client, hosts + ["slow"], template)
    start_runtime(processes, redis_url, function, tmp_path / "runtime.log", HANDLER_TIMEOUT="1")
    wait_for(lambda: all(client.xlen(BASE.for_host(h).output_stream) for h in hosts), timeout=60)
    for _ in range(3):
        publish_round(client, hosts + ["slow"], template)
        wait_for(lambda: all_handled(client, hosts), timeout=60)
    wait_for(lambda: client.xlen(BASE.for_host("slow").errors) >= 2, timeout=60, what="the slow host's timeouts")
    publish_round(client, hosts, template)
    wait_for(lambda: all_handled(client, hosts), timeout=60)
    for host in hosts:  # their contexts came back from their checkpoints after each worker restart
        assert_each_sample_handled_once_in_order(client, host)
    faults = {fields["fault"] for _, fields in client.xrange(BASE.for_host("slow").errors)}
    assert faults == {"timeout"}


def test_a_replica_killed_and_started_again_resumes_every_host_exactly_once(client, redis_url, processes,
                                                                            tmp_path):
    hosts = host_names(20)
    function = write_function(tmp_path, COUNTING)
    publish_round(client, hosts, make_samples(1)[0])
    first = start_runtime(processes, redis_url, function, tmp_path / "runtime.log", LEASE_SECONDS="30")
    with publishing(client, hosts, period=0.05):
        wait_for(lambda: all(client.xlen(BASE.for_host(h).output_stream) > 3 for h in hosts), timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # Its leases would last 30 s: the restarted runtime takes them at once, its predecessor being gone.
        start_runtime(processes, redis_url, function, tmp_path / "runtime.log", LEASE_SECONDS="30")
        wait_for(lambda: None not in holders(client, hosts) and len(holders(client, hosts)) == 1
                 and first_holder_gone(client, hosts, first.pid), timeout=20, what="the leases taken over")
    wait_for(lambda: all_handled(client, hosts), timeout=60, what="every sample handled")
    for host in hosts:
        assert_each_sample_handled_once_in_order(client, host)


def test_a_replica_on_another_node_that_dies_has_its_hosts_taken_over_at_the_next_tick(client, redis_url, processes,
                                                                                     tmp_path):
    """No pid to check across nodes: its process has no connection left in Redis, so the other replica
    takes its hosts at its next tick, not when the 30 s leases lapse; every sample once, in order."""
    hosts = host_names(10)
    function = write_function(tmp_path, COUNTING)
    publish_round(client, hosts, make_samples(1)[0])
    env = runtime_env(redis_url, function, LOG_LEVEL="WARNING", LEASE_SECONDS="30")
    elsewhere = spawn("runtime", env, host="elsewhere", stderr=open(tmp_path / "runtime.log", "a"))
    processes.append(elsewhere)
    here = start_runtime(processes, redis_url, function, tmp_path / "runtime.log", LEASE_SECONDS="30")
    with publishing(client, hosts, period=0.1):
        wait_for(lambda: fair(client, hosts, 2), timeout=60, what="two replicas holding 5 hosts each")
        elsewhere.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: all(holder and f":{here.pid}:" in holder for holder in holders(client, hosts)), timeout=30,
                 what="the hosts taken over")
        assert time.monotonic() - killed_at < HEARTBEAT_SECONDS + 3  # a tick or so, far from 30 s
    wait_for(lambda: all_handled(client, hosts), timeout=60, what="every sample handled")
    for host in hosts:
        assert_each_sample_handled_once_in_order(client, host)


def first_holder_gone(client: redis.Redis, hosts: list[str], pid: int) -> bool:
    return all(f":{pid}:" not in holder for holder in holders(client, hosts))


def test_hosts_cost_no_thread_process_or_connection_each(client, redis_url, processes, tmp_path):
    function = write_function(tmp_path, COUNTING)
    runtime = start_runtime(processes, redis_url, function, tmp_path / "runtime.log")
    publish_round(client, ["first"], make_samples(1)[0])
    wait_for(lambda: client.xlen(BASE.for_host("first").output_stream), timeout=60)
    before = footprint(client, runtime.pid)
    hosts = host_names(80)
    publish_round(client, hosts, make_samples(1)[0])
    wait_for(lambda: all(client.xlen(BASE.for_host(h).output_stream) for h in hosts), timeout=60)
    threads, children, connections = footprint(client, runtime.pid)
    # A thread or a pooled connection may come and go with the work at hand, never one per host.
    assert children == before[1] and threads <= before[0] + 2 and connections <= before[2] + 2, (before, (
        threads, children, connections))


def footprint(client: redis.Redis, pid: int) -> tuple[int, int, int]:
    """Threads, processes in the tree and Redis connections of the runtime."""
    process = psutil.Process(pid)
    children = process.children(recursive=True)
    connections = sum(1 for entry in client.client_list() if entry.get("name", "").startswith("runtime"))
    return process.num_threads(), len(children), connections


def test_invalid_registry_ids_are_skipped_and_counted_and_the_others_run(client, redis_url, processes, tmp_path):
    raw = redis.Redis.from_url(redis_url)
    bad = [b"state", b"lease", b"stream", b"hosts", b"a:b", b"with space", b"x" * 300, b"bad-\xff", b"\xc3("]
    raw.hset(BASE.hosts, mapping={name: b"1" for name in bad})
    port = free_port()
    function = write_function(tmp_path, COUNTING)
    runtime = start_runtime(processes, redis_url, function, tmp_path / "runtime.log", HTTP_PORT=str(port))
    publish_round(client, ["good"], make_samples(1)[0])
    wait_for(lambda: client.xlen(BASE.for_host("good").output_stream), timeout=60)
    assert runtime.poll() is None
    expected = [f"runtime_hosts_skipped_total {len(bad)}.0", f'runtime_hosts{{state="skipped"}} {len(bad)}.0',
                'runtime_host_invocations_total{host="good"} 1.0', "runtime_ready 1.0"]
    wait_for(lambda: all(line in http_get(port, "/metrics")[1] for line in expected), timeout=30,
             what=f"{expected} in /metrics")
    wait_for(lambda: http_get(port, "/readyz")[0] == 200, timeout=30, what="/readyz 200")
    for name in ("state", "lease", "stream", "hosts"):  # nothing written where those ids would point
        assert not client.exists(f"out:{name}:state") and not client.exists(f"out:{name}:stream")
    assert client.type("out:state") in ("none", "string")


def test_a_host_whose_stream_is_not_a_stream_is_set_aside_and_the_others_run(client, redis_url, processes,
                                                                            tmp_path):
    function = write_function(tmp_path, COUNTING)
    publish_round(client, ["good"], make_samples(1)[0])
    client.set(BASE.for_host("broken").input_stream, "not a stream")
    client.hset(BASE.hosts, "broken", "seen")
    start_runtime(processes, redis_url, function, tmp_path / "runtime.log")
    wait_for(lambda: client.xlen(BASE.for_host("good").output_stream), timeout=60)
    wait_for(lambda: client.hget(BASE.for_host("broken").status, "state") == "stalled", timeout=30)
    assert "metrics:broken:stream" in client.hget(BASE.for_host("broken").status, "problem")
    publish_round(client, ["good"], make_samples(1)[0])
    wait_for(lambda: client.xlen(BASE.for_host("good").output_stream) == 2, timeout=30)


def test_hosts_over_max_hosts_wait_with_a_status_that_says_why(client, redis_url, processes, tmp_path):
    hosts = host_names(5)
    port = free_port()
    function = write_function(tmp_path, COUNTING)
    publish_round(client, hosts, make_samples(1)[0])
    start_runtime(processes, redis_url, function, tmp_path / "runtime.log", MAX_HOSTS="3", HTTP_PORT=str(port))
    wait_for(lambda: sum(client.xlen(BASE.for_host(h).output_stream) for h in hosts) == 3, timeout=60)
    waiting = [h for h in hosts if not client.xlen(BASE.for_host(h).output_stream)]
    assert len(waiting) == 2
    for host in waiting:
        wait_for(lambda: client.hget(BASE.for_host(host).status, "state") == "stalled", timeout=30)
        assert "MAX_HOSTS=3" in client.hget(BASE.for_host(host).status, "problem")
    assert 'runtime_hosts{state="unheld"} 2.0' in http_get(port, "/metrics")[1]


def test_a_silent_host_is_dropped_and_its_lease_released(client, redis_url, processes, tmp_path):
    function = write_function(tmp_path, COUNTING)
    publish_round(client, ["quiet", "busy"], make_samples(1)[0])
    start_runtime(processes, redis_url, function, tmp_path / "runtime.log", HOST_TTL="10")
    wait_for(lambda: client.exists(BASE.for_host("quiet").lease), timeout=60)
    with publishing(client, ["busy"], period=0.5):
        wait_for(lambda: not client.hexists(BASE.hosts, "quiet"), timeout=60, what="the silent host dropped")
        wait_for(lambda: not client.exists(BASE.for_host("quiet").lease), timeout=10, what="its lease released")
        assert client.hexists(BASE.hosts, "busy") and client.exists(BASE.for_host("busy").lease)
    publish_round(client, ["quiet"], make_samples(1)[0])  # it speaks again: followed again
    wait_for(lambda: client.xlen(BASE.for_host("quiet").output_stream) == 2, timeout=60)


def test_hosts_adopted_together_store_their_envs_spread_over_the_period():
    """One round carrying every host's env took seconds at 1,000 hosts: each host has its own phase."""
    phases = [env_phase(name) for name in host_names(1000)]
    assert all(0 <= phase < 1 for phase in phases)
    tenths = Counter(int(phase * 10) for phase in phases)
    assert len(tenths) == 10 and max(tenths.values()) < 150  # about 100 hosts in each tenth of the period


def test_a_hosts_commits_store_its_env_at_the_hosts_period(client, redis_url, tmp_path):
    config = RuntimeConfig.from_env(runtime_env(redis_url, write_function(tmp_path, COUNTING), HANDLER_TIMEOUT="0"))
    fleet = Fleet(config, client, threading.Event(), pool_of(make_invoker(config)))
    host = fleet._adopt("node-0001")  # noqa: SLF001
    assert host.runtime.config.env_checkpoint_seconds == config.host_env_checkpoint_seconds == 10.0
    assert config.env_checkpoint_seconds == 1.0  # the plain keys' runtime keeps its own


def test_host_series_are_capped_and_go_with_their_host():
    metrics = FleetMetrics(Metrics())
    views = [metrics.for_host(f"h{i}") for i in range(HOST_SERIES_MAX + 50)]
    for view in views:
        view.invocations.inc()
        view.errors.labels(fault="timeout").inc()
    series = {s.labels["host"] for s in metrics.invocations.collect()[0].samples}
    assert len(series) == HOST_SERIES_MAX + 1 and OTHER_HOSTS in series
    assert metrics.base.invocations._value.get() == HOST_SERIES_MAX + 50  # noqa: SLF001 - the total counts all
    metrics.drop("h0")
    assert "h0" not in {s.labels["host"] for s in metrics.errors.collect()[0].samples}
    views[0].ready.set(0)  # a host never writes runtime_ready
    metrics.base.ready.set(1)
    assert metrics.base.ready._value.get() == 1  # noqa: SLF001


def test_hosts_run_in_process_with_handler_timeout_zero_each_with_its_own_context(client, redis_url, processes,
                                                                                   tmp_path):
    hosts = host_names(4)
    function = write_function(tmp_path, COUNTING)
    template = make_samples(1)[0]
    publish_round(client, hosts, template)
    runtime = start_runtime(processes, redis_url, function, tmp_path / "runtime.log", HANDLER_TIMEOUT="0")
    for _ in range(3):
        publish_round(client, hosts, template)
    wait_for(lambda: all(client.xlen(BASE.for_host(h).output_stream) == 4 for h in hosts), timeout=60)
    assert len(psutil.Process(runtime.pid).children()) == 0  # no worker at all
    for host in hosts:
        assert_each_sample_handled_once_in_order(client, host)


@pytest.fixture(autouse=True)
def _no_strays(processes):
    yield
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
