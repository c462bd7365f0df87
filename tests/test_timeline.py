"""Time on the page: windows at the server's now, gaps, counter rates with resets."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from app import timeline


def frame(values, step=5, missing=()):
    index = pd.date_range("2026-11-29 10:00", periods=len(values), freq=f"{step}s", name="time")
    table = pd.DataFrame({"counter": np.asarray(values, dtype="float64")}, index=index)
    return table.drop(index[list(missing)])


def test_a_counter_reset_is_a_gap_not_a_negative_spike():
    rates = timeline.counter_rates(frame([0, 50, 100, 3, 53]), {"counter": "per_s"}, 5.0)["per_s"]
    assert list(rates.iloc[:2]) == [10.0, 10.0]
    assert np.isnan(rates.iloc[2]) and rates.iloc[3] == 10.0
    assert (rates.dropna() >= 0).all()


def test_no_rate_is_drawn_across_a_gap():
    rates = timeline.counter_rates(frame([0, 10, 20, 30, 40, 50, 60], missing=(3, 4)), {"counter": "r"}, 5.0)["r"]
    assert rates.isna().sum() == 1 and rates.dropna().eq(2.0).all()


def test_gaps_are_stretches_longer_than_two_and_a_half_intervals():
    table = frame(range(10), missing=(4, 5))
    assert timeline.typical_interval(table.index) == 5.0
    ((before, after),) = timeline.gaps(table.index, 5.0)
    assert (after - before).total_seconds() == 15
    assert timeline.gaps(frame(range(10), missing=(4,)).index, 5.0) == []  # 10 s is not yet a gap


def test_the_window_ends_at_the_given_now_and_counts_samples_from_the_future():
    now = datetime(2026, 11, 29, 10, 0, 30)
    table = frame(range(5))
    table.loc[pd.Timestamp("9999-12-31 23:59:59")] = 1.0
    table.loc[pd.Timestamp(now + timedelta(hours=1))] = 2.0
    window = timeline.Window.last(60, now)
    assert len(window.clip(table)) == 5 and window.future(table) == 2


def test_an_aware_now_becomes_local_naive_time():
    aware = datetime(2026, 11, 29, 9, 0, tzinfo=timezone.utc)
    assert timeline.local_naive(aware) == aware.astimezone().replace(tzinfo=None)
