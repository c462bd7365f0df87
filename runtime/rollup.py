"""Rollup tiers kept by the collector as samples arrive: the mean of each 10 s and 1 min bucket.

A bucket closes when the first sample of a later bucket arrives (or the collector stops); its entry
goes to `<input>:rollup:<tier>` with the bucket's start as its timestamp, so a day draws from 1,440
entries instead of 86,400 samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from runtime import schema


class Bucket:
    """Running sums of one time bucket's numeric course fields and extras."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.sample_sums: dict[str, list[float]] = {}  # field -> [sum, n]
        self.extra_sums: dict[str, list[float]] = {}

    def add(self, sample: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
        self.count += 1
        _accumulate(self.sample_sums, sample, schema.field_kind)
        _accumulate(self.extra_sums, extra, _extra_kind)

    def entry(self) -> dict[str, str]:
        sample = {schema.TIMESTAMP: schema.format_timestamp(datetime.fromtimestamp(self.start)),
                  **_means(self.sample_sums, schema.field_kind)}
        extra = _means(self.extra_sums, _extra_kind)
        return schema.rollup_entry(sample, extra, self.count)


def _extra_kind(name: str) -> type | None:
    spec = schema.extra_spec(name)
    return spec[0] if spec else None


def _accumulate(sums: dict[str, list[float]], values: Mapping[str, Any], kind) -> None:
    for name, value in values.items():
        if kind(name) is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            total = sums.setdefault(name, [0.0, 0])
            total[0] += value
            total[1] += 1


def _means(sums: dict[str, list[float]], kind) -> dict[str, float | int]:
    """Means in first-seen order; whole-number fields (counters, bytes) stay whole."""
    return {name: (round(total / n) if kind(name) is int else total / n) for name, (total, n) in sums.items()}


class Rollups:
    """One open bucket per tier; `add` returns the entries of the buckets the sample closed."""

    def __init__(self, tiers: Mapping[str, int] = schema.ROLLUP_TIERS) -> None:
        self.tiers = dict(tiers)
        self.open: dict[str, Bucket] = {}

    def add(self, sample: Mapping[str, Any], extra: Mapping[str, Any]) -> list[tuple[str, dict[str, str]]]:
        moment = schema.timestamp_instant(sample[schema.TIMESTAMP]).timestamp()
        closed = []
        for tier, width in self.tiers.items():
            start = math.floor(moment / width) * width
            bucket = self.open.get(tier)
            if bucket is not None and bucket.start != start:  # a later bucket (or the clock went back)
                closed.append((tier, bucket.entry()))
                bucket = None
            if bucket is None:
                bucket = self.open[tier] = Bucket(start)
            bucket.add(sample, extra)
        return closed

    def close_all(self) -> list[tuple[str, dict[str, str]]]:
        """The entries of every open bucket (on stop); a reader merges a bucket written twice by its counts."""
        closed = [(tier, bucket.entry()) for tier, bucket in self.open.items() if bucket.count]
        self.open.clear()
        return closed
