"""What the window shows, as files to download: samples and outputs, CSV and Parquet."""

from __future__ import annotations

import io

import pandas as pd

from app.entries import ENTRY_MS


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    table = frame.drop(columns=[ENTRY_MS], errors="ignore").copy()
    table.columns = [str(c) for c in table.columns]
    table.index = pd.DatetimeIndex(table.index, name="time")
    return table


def to_csv(frame: pd.DataFrame) -> bytes:
    return _clean(frame).to_csv(date_format="%Y-%m-%d %H:%M:%S.%f").encode("utf-8", "replace")


def to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    _clean(frame).to_parquet(buffer, engine="pyarrow")
    return buffer.getvalue()


FORMATS = {"CSV": ("csv", "text/csv", to_csv), "Parquet": ("parquet", "application/vnd.apache.parquet", to_parquet)}
