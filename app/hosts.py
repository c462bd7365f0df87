"""Many hosts: the registry read in one round trip, a table sorted by CPU or staleness, paged."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pandas as pd
import redis

from runtime import schema, status

HOST_ID = re.compile(r"^[A-Za-z0-9._-]{1,253}$")  # node names, as the collector accepts them
# Suffixes of derived keys: an id equal to one would make its keys land on another's (common contract).
RESERVED = frozenset(getattr(schema, "RESERVED_HOST_IDS", (
    "stream", "hosts", "state", "status", "errors", "lease", "top", "rollup", "alerts", "extra")))
PAGE_SIZE = 25
COLUMNS = ["host", "CPU %", "memory %", "last seen", "seen s ago", "stale"]
SORTS = {"CPU (busiest first)": ("CPU %", False), "staleness (silent longest first)": ("seen s ago", False),
         "name": ("host", True)}


def valid_host(host: str) -> bool:
    """A node-name id whose keys cannot land on another key (no `:`, spaces, reserved suffixes, bytes)."""
    if not isinstance(host, str) or not HOST_ID.match(host) or host in RESERVED:
        return False
    try:
        schema.Keys().for_host(host)
    except ValueError:
        return False
    return True


def registered_hosts(client: redis.Redis, keys: schema.Keys) -> tuple[dict[str, str], int]:
    """The registry's valid host ids -> last-seen text, and how many invalid ids were skipped."""
    registry = client.hgetall(keys.hosts)
    valid = {host: seen for host, seen in registry.items() if valid_host(host)}
    return valid, len(registry) - len(valid)


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


def sorted_page(overview: pd.DataFrame, sort: str, page: int, size: int = PAGE_SIZE) -> pd.DataFrame:
    """One page of the table in the chosen order; hosts without a value sort last."""
    column, ascending = SORTS[sort]
    ordered = overview.sort_values(column, ascending=ascending, na_position="last", kind="stable")
    return ordered.iloc[page * size:(page + 1) * size]


def page_count(rows: int, size: int = PAGE_SIZE) -> int:
    return max(1, -(-rows // size))
