"""The value a rule names: one field, or several combined, from the fields of the rule's source."""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping
from typing import Any

from runtime.alerts.rules import AGGREGATES, Rule


def number(value: Any) -> float | None:
    """A finite number, or None (text, booleans, NaN and infinities are no value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def value_of(rule: Rule, fields: Mapping[str, Any] | None) -> float | None:
    """The rule's value in these fields (a sample, its extras, an output, the runtime figures), or None."""
    if not fields:
        return None
    if not rule.pattern:
        return number(fields.get(rule.value))
    values = [v for name, raw in fields.items()
              if isinstance(name, str) and fnmatch.fnmatchcase(name, rule.value) and (v := number(raw)) is not None]
    return AGGREGATES[rule.aggregate](values) if values else None


def json_object(text: Any) -> dict[str, Any] | None:
    """A JSON object from a stream field, None for anything else (never raises, never executes)."""
    if not isinstance(text, (str, bytes)) or not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
