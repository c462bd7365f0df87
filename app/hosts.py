"""Many hosts: the registry read in one round trip, a table sorted by CPU or staleness, paged."""

from __future__ import annotations

import json
from datetime import datetime

import pandas as pd
import redis

from runtime import schema, status

PAGE_SIZE = 25
COLUMNS = ["host", "CPU %", "memory %", "last seen", "seen s ago", "stale"]
SORTS = {"CPU (busiest first)": ("CPU %", False), "staleness (silent longest first)": ("seen s ago", False),
         "name": ("host", True)}


def registered_hosts(client: redis.Redis, keys: schema.Keys) -> tuple[dict[str, str], int]:
    """The registry's valid host ids -> last-seen text, and how many invalid ids were skipped."""
    registry = client.hgetall(keys.hosts)
    valid, skipped = schema.valid_host_ids(registry)
    return {host: registry[host] for host in valid}, skipped


def _row(host: str, seen: str, raw: str | None, now: datetime) -> dict:
    try:
        sample = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        sample = {}
    sample = sample if isinstance(sample, dict) else {}
    cpus = [sample[f] for f in schema.cpu_fields(sample) if isinstance(sample[f], (int, float))]
    memory = sample.get(schema.MEMORY_PERCENT)
    age = status.seconds_since(status.parse_instant(seen), now)
    return {"host": host, "CPU %": sum(cpus) / len(cpus) if cpus else None,
            "memory %": memory if isinstance(memory, (int, float)) and not isinstance(memory, bool) else None,
            "last seen": seen, "seen s ago": age,
            "stale": age is None or age > status.STALE_AFTER_SECONDS}


def host_overview(client: redis.Redis, keys: schema.Keys, registry: dict[str, str], now: datetime) -> pd.DataFrame:
    """One row per host: latest CPU and memory (all hosts' keys in one MGET), last seen, stale."""
    hosts = sorted(registry)
    raws = client.mget([keys.for_host(host).input for host in hosts]) if hosts else []
    aware_now = now.astimezone()
    rows = [_row(host, registry[host], raw, aware_now) for host, raw in zip(hosts, raws)]
    return pd.DataFrame(rows, columns=COLUMNS)


def with_alerts(overview: pd.DataFrame, cells: dict[str, str]) -> pd.DataFrame:
    """The table with each host's alert state (firing and pending counts, worst severity) as a column."""
    return overview.assign(alerts=[cells.get(host, "") for host in overview["host"]])


def sorted_page(overview: pd.DataFrame, sort: str, page: int, size: int = PAGE_SIZE) -> pd.DataFrame:
    """One page of the table in the chosen order; hosts without a value sort last."""
    column, ascending = SORTS[sort]
    ordered = overview.sort_values(column, ascending=ascending, na_position="last", kind="stable")
    return ordered.iloc[page * size:(page + 1) * size]


def page_count(rows: int, size: int = PAGE_SIZE) -> int:
    return max(1, -(-rows // size))
