"""Altair charts to Vega-Lite specs for the page, without re-validating every spec on every tick.

`st.altair_chart` validates each spec against the Vega-Lite JSON schema, which costs more than
building the chart (about 40 ms a chart, 16 charts a tick). The builders' specs are checked once by
the tests (`to_dict()` validates there); the page builds and sends them unvalidated, data apart as DataFrames
that Streamlit turns into Arrow tables, exactly as `st.altair_chart` would.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import altair as alt
import pandas as pd

TITLE_ROOM = 4  # px above and left of a title: the font's line box reaches past Vega's estimate
_LOCK = threading.Lock()  # Altair's data transformer and theme are process-wide settings


def _by_name(data: pd.DataFrame, datasets: dict[str, Any]) -> dict[str, str]:
    """Keep a chart's data apart, named by its content, as Streamlit names datasets."""
    name = hashlib.md5(pd.util.hash_pandas_object(data, index=False).values.tobytes()
                       + ",".join(map(str, data.columns)).encode()).hexdigest()
    datasets[name] = data
    return {"name": name}


alt.data_transformers.register("page_datasets", _by_name)
# Altair also validates every axis, scale and parameter as it is built ("debug mode"): a fifth of a tick's
# CPU spent on the same fixed builders every 2 s. Whole specs are validated by the tests' `to_dict()`.
alt.utils.schemapi.disable_debug_mode()


def spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    """The chart's Vega-Lite spec with its data frames under `datasets`, for `st.vega_lite_chart`."""
    datasets: dict[str, Any] = {}
    with _LOCK, alt.theme.enable("none"), alt.data_transformers.enable("page_datasets", datasets=datasets):
        result = chart.to_dict(validate=False)
    result["datasets"] = datasets
    _sized(result)
    return result


def _sized(result: dict[str, Any]) -> None:
    """The plot keeps the height its builder gave it; title, axes and legends are drawn around it.

    Streamlit's default ("fit") squeezes them into that height, shrinking the plot and pushing the title up
    out of the chart's box, where the SVG clips it.
    """
    result.setdefault("autosize", {"type": "fit-x", "contains": "padding"})
    result.setdefault("padding", {"top": TITLE_ROOM, "left": TITLE_ROOM})


def show(target, chart: alt.TopLevelMixin, width: int | str = "stretch") -> None:
    """Draw a chart with Streamlit's theme, like `st.altair_chart`."""
    target.vega_lite_chart(spec=spec(chart), width=width)
