"""Time on the page: the window ending at the server's now, gaps, counter rates, downsampling.

Pure pandas on frames indexed by naive local time (the course's timestamps are naive local times);
nothing here talks to Redis or draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from runtime.schema import local_naive

GAP_FACTOR = 2.5  # more than this many typical intervals without a sample is a gap, never bridged
MAX_POINTS = 1000  # per series: about a chart's width in pixels


@dataclass(frozen=True)
class Window:
    """The span the page shows: [start, end], end normally the Redis server's now."""

    start: pd.Timestamp
    end: pd.Timestamp

    @classmethod
    def last(cls, seconds: float, now: datetime) -> Window:
        end = pd.Timestamp(local_naive(now))
        return cls(end - pd.Timedelta(seconds=seconds), end)

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def clip(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows inside the window."""
        if frame.empty:
            return frame
        index = frame.index
        return frame.loc[(index >= self.start) & (index <= self.end)]

    def future(self, frame: pd.DataFrame) -> int:
        """How many rows are stamped after the window's end (a collector clock ahead of the server)."""
        return 0 if frame.empty else int((frame.index > self.end).sum())


def typical_interval(index: pd.DatetimeIndex) -> float | None:
    """The median seconds between consecutive rows, None with fewer than two rows."""
    if len(index) < 2:
        return None
    steps = np.diff(index.asi8) / _ticks_per_second(index)
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else None


def _ticks_per_second(index: pd.DatetimeIndex) -> float:
    return float(pd.Timedelta(seconds=1) / pd.Timedelta(1, unit=index.unit))


def gaps(index: pd.DatetimeIndex, interval: float | None) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """(last row before, first row after) of every stretch longer than GAP_FACTOR intervals."""
    if interval is None or len(index) < 2:
        return []
    steps = np.diff(index.asi8) / _ticks_per_second(index)
    where = np.flatnonzero(steps > GAP_FACTOR * interval)
    return [(index[i], index[i + 1]) for i in where]


def break_gaps(frame: pd.DataFrame, interval: float | None) -> pd.DataFrame:
    """The frame with an empty row inside every gap, so a line stops there instead of ramping across."""
    holes = gaps(frame.index, interval)
    if not holes:
        return frame
    middles = pd.DatetimeIndex([before + (after - before) / 2 for before, after in holes], name=frame.index.name)
    blanks = pd.DataFrame(np.nan, index=middles.as_unit(frame.index.unit), columns=frame.columns)
    return pd.concat([frame, blanks.astype(frame.dtypes.to_dict(), errors="ignore")]).sort_index(kind="stable")


def bucket_seconds(window_seconds: float, interval: float | None, max_points: int = MAX_POINTS) -> float:
    """The time resolution drawn: the samples' own interval, or coarser so a series has ≤ max_points."""
    base = max(interval or 1.0, 1.0)
    return base * max(1, math.ceil(window_seconds / max_points / base))


def downsample(frame: pd.DataFrame, window: Window, interval: float | None,
               max_points: int = MAX_POINTS) -> pd.DataFrame:
    """Numeric columns averaged into buckets of `bucket_seconds`, gaps broken; float64 throughout."""
    numeric = frame.select_dtypes("number").astype("float64")
    if len(numeric) > max_points:
        bucket = bucket_seconds(window.seconds, interval, max_points)
        numeric = numeric.resample(f"{int(bucket)}s").mean().dropna(how="all")
        interval = max(interval or 0.0, bucket)
    return break_gaps(numeric, interval)


def counter_rates(frame: pd.DataFrame, columns: dict[str, str], interval: float | None) -> pd.DataFrame:
    """Per-second rates of cumulative counters (`columns`: counter -> rate name).

    A counter that goes down (a reboot, a wrapped counter) or a step across a gap gives no rate there,
    never a negative or huge spike.
    """
    present = {c: name for c, name in columns.items() if c in frame.columns}
    if not present or len(frame) < 2:
        return pd.DataFrame(index=frame.index[:0], columns=list(present.values()), dtype="float64")
    counters = frame[list(present)].astype("float64")
    seconds = pd.Series(frame.index.asi8 / _ticks_per_second(frame.index), index=frame.index).diff()
    rates = counters.diff().div(seconds, axis=0)
    limit = GAP_FACTOR * interval if interval is not None else math.inf
    bad_step = ((seconds <= 0) | (seconds > limit)).to_numpy()[:, None]
    return rates.mask((rates < 0) | bad_step).iloc[1:].rename(columns=present)
