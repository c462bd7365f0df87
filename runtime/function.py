"""Loading the user's function from a file, and reloading it when the file changes."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runtime.faults import FunctionLoadError, describe

log = logging.getLogger(__name__)

Handler = Callable[[dict, Any], Any]


@dataclass(frozen=True)
class LoadedFunction:
    handler: Handler
    path: Path
    getmtime: str  # the file's mtime as `YYYY-MM-DD HH:MM:SS`, what the course's context carries
    version: str  # mtime plus a digest of the source, shown in status


def format_mtime(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def file_identity(path: Path) -> tuple[int, int, int, int]:
    """What changes when the file is edited or a ConfigMap swaps its symlink (stat follows links)."""
    st = os.stat(path)
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


def load_function(path: Path, handler_name: str) -> LoadedFunction:
    """Import the module at `path` and return its entry point, or FunctionLoadError saying why not."""
    try:
        source = path.read_bytes()
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        raise FunctionLoadError(f"{path}: no such file; mount the function there or set FUNCTION_PATH") from None
    except OSError as error:
        raise FunctionLoadError(f"{path}: cannot be read ({error.strerror})") from None
    if path.suffix != ".py":
        raise FunctionLoadError(f"{path}: not a .py file; FUNCTION_PATH names the module with the handler")
    module_name = path.stem
    directory = str(path.parent.resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)  # so the function can import modules beside it
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise FunctionLoadError(f"{error.filename}, line {error.lineno}: SyntaxError: {error.msg}") from None
    except BaseException as error:  # noqa: BLE001 - user code at import time may raise anything, SystemExit too
        raise FunctionLoadError(f"{path}, line {_user_line(error, path)}: {describe(error)} "
                                "(raised while importing the module)") from None
    handler = _entry_point(module, path, handler_name)
    sys.modules[module_name] = module
    version = f"{format_mtime(mtime)} sha256:{hashlib.sha256(source).hexdigest()[:12]}"
    return LoadedFunction(handler=handler, path=path, getmtime=format_mtime(mtime), version=version)


def _entry_point(module: Any, path: Path, handler_name: str) -> Handler:
    handler = getattr(module, handler_name, None)
    if handler is None:
        found = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise FunctionLoadError(f"{path}: defines no {handler_name!r} (functions found: {', '.join(found) or 'none'}); "
                                "define it or set FUNCTION_HANDLER")
    if not callable(handler):
        raise FunctionLoadError(f"{path}: {handler_name!r} is a {type(handler).__name__}, not a function")
    try:
        inspect.signature(handler).bind(None, None)
    except TypeError:
        raise FunctionLoadError(f"{path}: {handler_name}{inspect.signature(handler)} must accept two arguments, "
                                "(input: dict, context)") from None
    except ValueError:
        pass  # builtins without a signature: let the call decide
    return handler


def _user_line(error: BaseException, path: Path) -> int | str:
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
    return lines[-1] if lines else "?"


_NEVER = object()


class FunctionSource:
    """The current function: loaded once, reloaded when its file changes, the last good one kept on error."""

    def __init__(self, path: Path, handler_name: str) -> None:
        self.path = path
        self.handler_name = handler_name
        self.current: LoadedFunction | None = None
        self.error: str | None = None
        self._identity: object = _NEVER

    def refresh(self) -> bool:
        """Reload if the file changed since the last attempt; True when a new version was loaded."""
        try:
            identity = file_identity(self.path)
        except OSError:
            identity = None
        if identity == self._identity:
            return False
        self._identity = identity
        try:
            loaded = load_function(self.path, self.handler_name)
        except FunctionLoadError as error:
            self.error = str(error)
            log.error("function_load_failed path=%s keeping=%s error=%s", self.path,
                      self.current.version if self.current else "none", self.error)
            return False
        self.current, self.error = loaded, None
        log.info("function_loaded path=%s handler=%s version=%s", self.path, self.handler_name, loaded.version)
        return True
