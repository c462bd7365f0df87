"""Calling the handler: one invocation's rules, and where it runs (in this process or in a worker).

`call()` is the whole of one invocation: decode the sample, reset the context's fixed fields, call
the handler, encode the result. Both invokers run it: InProcess here (no hard timeout), Worker in a
child process that the runtime kills when an invocation runs past HANDLER_TIMEOUT or that dies on
`os._exit()` — then the runtime re-runs the batch from its checkpoint in a fresh worker.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from runtime import envcodec, schema
from runtime.capture import Tail, captured
from runtime.context import Context
from runtime.faults import Fault, describe, record, storable, user_traceback
from runtime.function import FunctionSource
from runtime.status import ERROR_OUTPUT_MAX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FunctionSettings:
    """What an invoker needs to know about the function and the context it gets."""

    path: Path
    handler: str
    unpack_dir: Path
    output_max_bytes: int
    context_fields: dict[str, Any]  # host, port, input_key, output_key
    memory_mb: int = 0  # a worker's data-size limit (RLIMIT_DATA); 0: none


@dataclass(frozen=True)
class Request:
    """One sample to run: its stream id (None when polled) and JSON text, or why the entry is unusable."""

    entry_id: str | None
    raw: str | None
    problem: str | None = None


@dataclass(frozen=True)
class EnvData:
    """`context.env` as checkpoint JSON text, or (text None) why it cannot be stored."""

    text: str | None
    error: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What one invocation came to; plain values, so it crosses the worker boundary as JSON."""

    timestamp: str | None = None  # the sample's own `timestamp` field, when it is a string
    output: str | None = None  # the result as JSON text; None when falsy or failed
    error: dict[str, Any] | None = None  # a faults.record(), when the invocation failed
    duration: float = 0.0  # seconds in the handler
    last_execution: str | None = None  # context.last_execution after the call (ISO), when it ran
    env: EnvData | None = None  # the env after this invocation: set on the last outcome of a batch

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        env = data.get("env")
        return cls(**{**data, "env": EnvData(**env) if env is not None else None})


# An outcome's fields in the order a worker's reply lists them (the env follows, on a batch's last).
OUTCOME_FIELDS = ("timestamp", "output", "error", "duration", "last_execution")


class Invoker(Protocol):
    """Where the handler runs: in this process (InProcess) or in a worker process (worker.Worker)."""

    version: str | None  # the loaded function's version; None while none has ever loaded
    error: str | None  # why the latest load failed, if it did

    def refresh(self) -> bool:
        """Load or reload the function if its files changed; True when a new version is in use."""

    def invoke_batch(self, requests: Sequence[Request], with_env: bool = True) -> Iterator[Outcome]:
        """One Outcome per request, in order, each as it finishes; the last one carries the env if `with_env`.

        Raises InvocationLost at a request that did not return (timeout, dead worker): the requests
        after it are not run, and the env of the batch is gone; the next batch starts from what
        restore() gave last.
        """

    def env_data(self) -> EnvData:
        """The env as it is now."""

    def restore(self, env_text: str | None, last_execution: datetime | None) -> None:
        """Start again from a committed env (JSON text; None: not durable, start empty)."""

    def close(self) -> None:
        """Stop whatever runs the handler."""



class EnvLost(Exception):
    """The worker died between invocations, and the env it held with it: rewind from the checkpoint.

    No sample caused it, so none is charged; `error` is the record that says what happened.
    """

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


class InvocationLost(Exception):
    """An invocation did not return: it ran past HANDLER_TIMEOUT or its worker process died."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error
        self.index: int | None = None  # the batch's invocation it was, where the worker's progress tells
        self.exit_code: int | str | None = None  # of the worker, when it ended


# Bound once, when the runtime imports this module and before any user code runs: a handler that
# replaces json.dumps or sys.modules["json"] changes its own encoding, never how outcomes are encoded.
_dumps, _loads = json.dumps, json.loads
OUTPUT_TAIL = ERROR_OUTPUT_MAX - 64  # room for the note of what was dropped


def call(function: FunctionSource, context: Context, settings: FunctionSettings, request: Request,
         tail: Tail) -> dict[str, Any]:
    """Run one invocation; the outcome is a dict of plain values (it may cross a process boundary)."""
    outcome: dict[str, Any] = {"timestamp": None, "output": None, "error": None, "duration": 0.0,
                               "last_execution": None}
    payload = _decode(request, outcome)
    if payload is None:
        return outcome
    for name, value in settings.context_fields.items():  # as the reference does before every call
        setattr(context, name, value)
    context.function_getmtime = function.current.getmtime
    started = time.perf_counter()
    try:
        with captured(tail):
            result = function.current.handler(schema.with_aliases(payload), context)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - sys.exit() in user code must not end the runtime
        outcome["error"] = record(Fault.HANDLER_ERROR, describe(error), request.entry_id, outcome["timestamp"],
                                  user_traceback(error), tail.text())
        return outcome
    finally:
        outcome["duration"] = time.perf_counter() - started
    if tail.written and log.isEnabledFor(logging.DEBUG):  # prints of a call that worked: only when asked for
        log.debug("handler_output sample=%s chars=%d tail=%r", request.entry_id or "-", tail.written, tail.text())
    context.last_execution = datetime.now()
    outcome["last_execution"] = context.last_execution.isoformat()
    if result:
        _encode_output(result, outcome, request.entry_id, settings.output_max_bytes, tail)
    return outcome


def _decode(request: Request, outcome: dict[str, Any]) -> dict[str, Any] | None:
    """The sample as a dict, with its timestamp noted in `outcome`; None with an error record if unusable."""
    if request.raw is None:
        outcome["error"] = record(Fault.INPUT_INVALID, request.problem, request.entry_id, None)
        return None
    try:
        payload = schema.decode_object(request.raw)
    except schema.SampleError as error:
        outcome["error"] = record(Fault.INPUT_INVALID, str(error), request.entry_id, None)
        return None
    timestamp = payload.get(schema.TIMESTAMP)
    outcome["timestamp"] = storable(timestamp) if isinstance(timestamp, str) else None
    return payload


def _encode_output(result: Any, outcome: dict[str, Any], entry_id: str | None, max_bytes: int, tail: Tail) -> None:
    """The result as the reference stores it: Python's JSON text, NaN and Infinity included."""
    try:
        text = _dumps(result, default=_json_default)
    except (TypeError, ValueError, RecursionError) as error:
        outcome["error"] = record(Fault.OUTPUT_NOT_JSON, f"the handler's result cannot be stored as JSON: {error}. "
                                  "Return a dict of numbers, strings, lists and dicts", entry_id, outcome["timestamp"],
                                  output=tail.text())
        return
    if len(text) > max_bytes:
        outcome["error"] = record(Fault.OUTPUT_TOO_LARGE, f"the handler's result is {len(text):,} bytes as JSON, "
                                  f"over OUTPUT_MAX_BYTES={max_bytes:,}", entry_id, outcome["timestamp"],
                                  output=tail.text())
        return
    outcome["output"] = text


def _json_default(value: Any) -> Any:
    """numpy numbers and arrays, and datetimes, as JSON; anything else is not JSON."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()  # a non-finite float comes out as NaN / Infinity, as for Python floats
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
        return _dumps(envcodec.encode(env), allow_nan=False, separators=(",", ":")), None
    except envcodec.NotDurable as error:
        return None, str(error)
    except RecursionError:  # deeper than Python follows here (its own stack counts too): not durable, no crash
        return None, f"env: nested deeper than {envcodec.MAX_DEPTH} levels, or than Python's recursion limit"
    except Exception as error:  # noqa: BLE001 - a hostile value's own methods (an int past the digit limit…)
        return None, f"env cannot be stored: {type(error).__name__}: {error}"[:500]


def decode_env(text: str | None) -> Any:
    return envcodec.decode(_loads(text)) if text is not None else {}


class InProcess:
    """Calls the handler in this process: cheapest, but a handler that never returns stalls the loop."""

    def __init__(self, settings: FunctionSettings) -> None:
        self.settings = settings
        self.function = FunctionSource(settings.path, settings.handler, settings.unpack_dir)
        self.context = Context(function_getmtime="", **settings.context_fields)
        self.tail = Tail(OUTPUT_TAIL)

    @property
    def version(self) -> str | None:
        return self.function.current.version if self.function.current else None

    @property
    def error(self) -> str | None:
        return self.function.error

    def refresh(self) -> bool:
        """Load or reload the function if its files changed; True when a new version is in use."""
        return self.function.refresh()

    def invoke_batch(self, requests: Sequence[Request], with_env: bool = True) -> Iterator[Outcome]:
        for index, request in enumerate(requests):
            outcome = Outcome(**call(self.function, self.context, self.settings, request, self.tail))
            last = with_env and index == len(requests) - 1
            yield dataclasses.replace(outcome, env=self.env_data()) if last else outcome

    def env_data(self) -> EnvData:
        return EnvData(*encode_env(self.context.env))

    def restore(self, env_text: str | None, last_execution: datetime | None) -> None:
        self.context.env = decode_env(env_text)
        self.context.last_execution = last_execution

    def close(self) -> None:
        pass
