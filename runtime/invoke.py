"""Calling the handler: one invocation's rules, and where it runs (in this process or in a worker).

`call()` is the whole of one invocation: decode the sample, reset the context's fixed fields, call
the handler, encode the result. Both invokers run it: InProcess here (no hard timeout), Worker in a
child process that the runtime kills when an invocation runs past HANDLER_TIMEOUT or that dies on
`os._exit()` — then the runtime re-runs the batch from its checkpoint in a fresh worker.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runtime import envcodec, schema
from runtime.context import Context
from runtime.faults import Fault, describe, record, user_traceback
from runtime.function import FunctionSource


@dataclass(frozen=True)
class FunctionSettings:
    """What an invoker needs to know about the function and the context it gets."""

    path: Path
    handler: str
    unpack_dir: Path
    output_max_bytes: int
    context_fields: dict[str, Any]  # host, port, input_key, output_key
    memory_mb: int = 0  # a worker's data-size limit (RLIMIT_DATA); 0: none


class InvocationLost(Exception):
    """An invocation did not return: it ran past HANDLER_TIMEOUT or its worker process died."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


def call(function: FunctionSource, context: Context, settings: FunctionSettings, raw: str | None,
         problem: str | None, entry_id: str | None) -> dict[str, Any]:
    """Run one invocation; the outcome is a dict of plain values (it may cross a process boundary)."""
    outcome: dict[str, Any] = {"timestamp": None, "output": None, "error": None, "duration": 0.0,
                               "last_execution": None}
    if raw is None:
        outcome["error"] = record(Fault.INPUT_INVALID, problem, entry_id, None)
        return outcome
    try:
        payload = schema.decode_object(raw)
    except schema.SampleError as error:
        outcome["error"] = record(Fault.INPUT_INVALID, str(error), entry_id, None)
        return outcome
    timestamp = payload.get(schema.TIMESTAMP)
    outcome["timestamp"] = timestamp if isinstance(timestamp, str) else None
    for name, value in settings.context_fields.items():  # as the reference does before every call
        setattr(context, name, value)
    context.function_getmtime = function.current.getmtime
    started = time.perf_counter()
    try:
        result = function.current.handler(schema.with_aliases(payload), context)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - sys.exit() in user code must not end the runtime
        outcome["error"] = record(Fault.HANDLER_ERROR, describe(error), entry_id, outcome["timestamp"],
                                  user_traceback(error))
        return outcome
    finally:
        outcome["duration"] = time.perf_counter() - started
    context.last_execution = datetime.now()
    outcome["last_execution"] = context.last_execution.isoformat()
    if result:
        _encode_output(result, outcome, entry_id, settings.output_max_bytes)
    return outcome


def _encode_output(result: Any, outcome: dict[str, Any], entry_id: str | None, max_bytes: int) -> None:
    try:
        text = json.dumps(result, default=_json_default, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as error:
        outcome["error"] = record(Fault.OUTPUT_NOT_JSON, f"the handler's result cannot be stored as JSON: {error}. "
                                  "Return a dict of numbers, strings, lists and dicts", entry_id, outcome["timestamp"])
        return
    if len(text) > max_bytes:
        outcome["error"] = record(Fault.OUTPUT_TOO_LARGE, f"the handler's result is {len(text):,} bytes as JSON, "
                                  f"over OUTPUT_MAX_BYTES={max_bytes:,}", entry_id, outcome["timestamp"])
        return
    outcome["output"] = text


def _json_default(value: Any) -> Any:
    """numpy numbers and arrays, and datetimes, as JSON; anything else is not JSON."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        result = value.tolist()
        if isinstance(result, float) and not math.isfinite(result):
            raise ValueError(f"Out of range float values are not JSON compliant: {result!r}")
        return result
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    raise TypeError(f"{type(value).__name__} {value!r:.80} is not JSON serializable")


EMPTY_ENV = "{}"  # the env of a function that has not run yet, as checkpoint text


def encode_env(env: Any) -> tuple[str | None, str | None]:
    """(the env as checkpoint JSON text, None) or (None, why it cannot be stored).

    Text, not data: the runtime splices it into the checkpoint as it is, so a large env is never
    decoded and encoded again on its way to Redis.
    """
    try:
        return envcodec.dumps(env), None
    except envcodec.NotDurable as error:
        return None, str(error)


def decode_env(text: str | None) -> Any:
    return envcodec.loads(text) if text is not None else {}


class InProcess:
    """Calls the handler in this process: cheapest, but a handler that never returns stalls the loop."""

    def __init__(self, settings: FunctionSettings) -> None:
        self.settings = settings
        self.function = FunctionSource(settings.path, settings.handler, settings.unpack_dir)
        self.context = Context(function_getmtime="", **settings.context_fields)

    @property
    def version(self) -> str | None:
        return self.function.current.version if self.function.current else None

    @property
    def error(self) -> str | None:
        return self.function.error

    def refresh(self) -> bool:
        """Load or reload the function if its files changed; True when a new version is in use."""
        return self.function.refresh()

    def invoke(self, raw: str | None, problem: str | None, entry_id: str | None,
               with_env: bool = False) -> dict[str, Any]:
        outcome = call(self.function, self.context, self.settings, raw, problem, entry_id)
        if with_env:
            outcome["env"] = encode_env(self.context.env)
        return outcome

    def env_data(self) -> tuple[str | None, str | None]:
        return encode_env(self.context.env)

    def restore(self, env_text: str | None, last_execution: datetime | None) -> None:
        self.context.env = decode_env(env_text)
        self.context.last_execution = last_execution

    def close(self) -> None:
        pass
