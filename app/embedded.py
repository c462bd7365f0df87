"""The embedded stack the dashboard starts when no Redis is configured: once per app process."""

from __future__ import annotations

import atexit
import os
from pathlib import Path

from runtime.config import RedisSettings
from runtime.stack import LocalStack, StackSettings


def start_embedded_stack() -> tuple[LocalStack, RedisSettings]:
    """Valkey (data on disk under DATA_DIR, default ./.data), collector and runtime with ./usermodule.py."""
    settings = StackSettings.from_env(dict(os.environ))
    stack = LocalStack(settings).start()
    atexit.register(stack.stop)  # Streamlit exits Python on Ctrl-C / SIGTERM: stop the children first
    return stack, RedisSettings(stack.url)


def describe(stack: LocalStack) -> dict[str, str]:
    return {
        "Valkey": stack.url,
        "data": str(Path(stack.settings.data_dir).resolve()),
        "function": str(stack.settings.function_path),
        "interval": f"{stack.settings.interval:g} s",
    }
