"""From a snapshot to what the charts draw: rates, downsampled frames, gaps and events, in pandas."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from app import timeline
from app.data import Snapshot
from app.entries import ENTRY_MS
from runtime import schema

RATE_PREFIX = "rate:"  # column prefix of per-second rates computed from cumulative counters
COUNTERS = {field: RATE_PREFIX + field for field in (*schema.NET_FIELDS, *schema.CPU_STATS_FIELDS)}
# Extended metrics beside the course's sample (common contract); cumulative ones become rates.
DISK_COUNTER = re.compile(rf"^{re.escape(schema.DISK_IO_PREFIX)}(.+)-({'|'.join(schema.DISK_IO_COUNTERS)})$")
EXTRA_GROUPS = {
    "load": re.compile(r"^load_avg-(1|5|15)$"),
    "swap": re.compile(rf"^({re.escape(schema.SWAP_PERCENT)})$"),
    "cpu_times": re.compile(r"^cpu_times_percent-(user|system|iowait|steal)$"),  # idle: the rest
    "filesystems": re.compile(rf"^{re.escape(schema.DISK_USAGE_PREFIX)}(.+)-percent$"),
    "temperatures": re.compile(rf"^{re.escape(schema.TEMPERATURE_PREFIX)}(.+)$"),
}


@dataclass
class View:
    """The window's data ready to draw."""

    samples: pd.DataFrame  # downsampled, gaps broken, rates included
    outputs: pd.DataFrame
    bucket: float  # seconds each drawn point (or heatmap cell) covers
    events: pd.DataFrame  # time, end, kind, label: gaps, restarts, version changes


def net(field_name: str) -> str:
    return RATE_PREFIX + schema.NET_PREFIX + field_name


def rate_columns(columns: pd.Index) -> dict[str, str]:
    """Counter column -> rate column, for the course's counters and the extras' disk counters."""
    rates = {c: r for c, r in COUNTERS.items() if c in columns}
    rates.update({c: RATE_PREFIX + c for c in columns if DISK_COUNTER.match(str(c))})
    return rates


def group(columns: pd.Index, name: str) -> dict[str, str]:
    """Extra columns of one group -> their short series names."""
    pattern = EXTRA_GROUPS[name]
    return {c: pattern.match(str(c)).group(1) for c in columns if pattern.match(str(c))}


def disk_rates(columns: pd.Index, counters: tuple[str, ...]) -> dict[str, str]:
    """Rate columns of the disks' counters named like `sda read_bytes`."""
    found = {}
    for column in columns:
        match = DISK_COUNTER.match(str(column).removeprefix(RATE_PREFIX))
        if str(column).startswith(RATE_PREFIX) and match and match.group(2) in counters:
            found[column] = f"{match.group(1)} {match.group(2).split('_')[0]}"
    return found


def gap_events(index: pd.DatetimeIndex, interval: float | None) -> pd.DataFrame:
    rows = [{"time": before, "end": after, "kind": "gap",
             "label": f"no samples for {(after - before).total_seconds():,.0f} s"}
            for before, after in timeline.gaps(index, interval)]
    return pd.DataFrame(rows, columns=["time", "end", "kind", "label"])


def build(snapshot: Snapshot) -> View:
    """Rates from counters (before averaging), then one downsampling for everything drawn."""
    samples = snapshot.samples.drop(columns=[ENTRY_MS, "count"], errors="ignore")
    interval = timeline.typical_interval(samples.index)
    rates = timeline.counter_rates(samples, rate_columns(samples.columns), interval)
    wide = samples.join(rates) if not rates.empty else samples
    small = timeline.downsample(wide, snapshot.window, interval)
    outputs = snapshot.outputs.drop(columns=[ENTRY_MS], errors="ignore")
    small_outputs = timeline.downsample(outputs, snapshot.window, timeline.typical_interval(outputs.index))
    events = pd.concat([frame for frame in (gap_events(samples.index, interval), snapshot.events)
                        if not frame.empty] or [gap_events(samples.index[:0], None)], ignore_index=True)
    averaged = len(samples) > timeline.MAX_POINTS
    bucket = timeline.bucket_seconds(snapshot.window.seconds, interval) if averaged else (interval or 1.0)
    return View(small, small_outputs, bucket, events)
