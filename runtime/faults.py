"""Error records: one fixed shape for every fault, with the user's own traceback frames only."""

from __future__ import annotations

import enum
import traceback
from pathlib import Path
from typing import Any

from runtime.status import ERROR_MESSAGE_MAX, ERROR_OUTPUT_MAX, ERROR_TRACEBACK_MAX, now_text

RUNTIME_DIR = Path(__file__).resolve().parent


class Fault(str, enum.Enum):
    """What went wrong; the status counts errors by these names."""

    HANDLER_ERROR = "handler_error"  # the handler raised (SystemExit included)
    OUTPUT_NOT_JSON = "output_not_json"
    OUTPUT_TOO_LARGE = "output_too_large"
    INPUT_INVALID = "input_invalid"  # the sample is not a JSON object
    FUNCTION_LOAD = "function_load"  # the module cannot be imported or has no usable entry point
    TIMEOUT = "timeout"  # the handler ran past HANDLER_TIMEOUT and its worker was killed
    WORKER_DIED = "worker_died"  # the handler ended its process (os._exit, a crash, out of memory)


class FunctionLoadError(Exception):
    """The user's function cannot be loaded; the message names the file, the line and the cause."""


def user_traceback(error: BaseException) -> str:
    """The traceback without the runtime's own frames, so users see only their code."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not Path(f.filename).resolve().is_relative_to(RUNTIME_DIR)]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(error), error)
    return "".join(lines)


def describe(error: BaseException) -> str:
    """`Type: message`, the way Python prints the last line of a traceback."""
    return "".join(traceback.format_exception_only(type(error), error)).strip()


def storable(text: str) -> str:
    """`text` as Redis can store it: a lone surrogate (bytes that were not UTF-8) escaped as `\\udcff`."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cut(text: str, limit: int, keep: str = "head") -> str:
    """`text` within `limit` characters, storable, saying how much was cut; `keep` the head or the tail."""
    text = storable(text)
    if len(text) <= limit:
        return text
    note = f"[{len(text) - limit:,} characters cut]"
    return f"{text[:limit]} {note}" if keep == "head" else f"{note}\n{text[-limit:]}"


def record(fault: Fault, message: str, sample_id: str | None, timestamp: str | None,
           trace: str = "", output: str = "") -> dict[str, Any]:
    """The error record stored in the errors stream and as the status's last error, each text capped."""
    return {
        "fault": fault.value,
        "message": cut(message or "", ERROR_MESSAGE_MAX),
        "sample_id": sample_id or "",
        "sample_timestamp": storable(timestamp or ""),
        "time": now_text(),
        "traceback": cut(trace, ERROR_TRACEBACK_MAX, keep="tail"),  # the tail: where it was raised
        "output": cut(output, ERROR_OUTPUT_MAX, keep="tail"),
    }
