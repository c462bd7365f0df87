"""The log format every process shares: one line per event, greppable `key=value` fields.

Apart from runtime.config so the worker can use it without importing the Redis client.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure(level: str) -> None:
    """Log at `level` (one of LEVELS; anything else is INFO) in the shared format."""
    level = level.upper()
    logging.basicConfig(level=level if level in LEVELS else "INFO", format=LOG_FORMAT, force=True)
