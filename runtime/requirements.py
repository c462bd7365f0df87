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
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise RequirementsError(f"installing {requirements} failed (pip exit code {result.returncode}):\n{tail}")
    log.info("installed requirements=%s", requirements)
    return target
