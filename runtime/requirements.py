"""Installing a function's extra packages at start, as the reference runtime does with NEW_REQUERIMENTS."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("runtime.requirements")


class RequirementsError(RuntimeError):
    """The requirements file could not be installed; the message carries pip's own explanation."""


def install(requirements: Path, target: Path) -> Path:
    """pip-install `requirements` into `target` (writable, outside a read-only image) and return it."""
    target.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
               "--upgrade", "--target", str(target), "-r", str(requirements)]
    log.info("installing requirements=%s target=%s", requirements, target)
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RequirementsError(f"installing {requirements} failed (pip exit code {result.returncode}):\n"
                                f"{pip_explanation(result.stderr or result.stdout)}")
    log.info("installed requirements=%s", requirements)
    return target


PROGRESS = ("Collecting ", "Downloading ", "Using cached ", "Requirement already", "Obtaining ", "Processing ",
            "Looking in ", "Installing collected", "Preparing metadata", "Getting requirements")
EXPLANATION_LINES = 40


def pip_explanation(output: str) -> str:
    """pip's own account of a failure: every line but progress chatter, the last EXPLANATION_LINES of them."""
    lines = [line for line in output.strip().splitlines() if line.strip() and not line.lstrip().startswith(PROGRESS)]
    return "\n".join(lines[-EXPLANATION_LINES:])
