"""Loading the user's function (a file, a directory or a ZIP), and reloading it when it changes."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runtime import archive
from runtime.faults import FunctionLoadError, describe

log = logging.getLogger(__name__)

Handler = Callable[[dict, Any], Any]


@dataclass(frozen=True)
class LoadedFunction:
    handler: Handler
    path: Path
    getmtime: str  # the function's mtime as `YYYY-MM-DD HH:MM:SS`, what the course's context carries
    version: str  # mtime plus a digest of the source, shown in status


def format_mtime(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _files(path: Path) -> list[Path]:
    """The files of a function: the file itself, or every file below a directory.

    A ConfigMap mounted as a directory keeps its data behind `..data` symlinks that Kubernetes swaps
    on update; the visible names are links into it, and stat() follows them, so edits are seen.
    """
    if not path.is_dir():
        return [path]
    found = []
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        found += [Path(root, n) for n in sorted(names) if not n.startswith(".")]
    return found


def source_identity(path: Path) -> tuple:
    """What changes when any file of the function is edited or its ConfigMap symlink is swapped."""
    identity = []
    for file in _files(path):
        try:
            st = os.stat(file)
        except OSError:
            continue
        identity.append((str(file), st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size))
    return tuple(identity)


def parse_handler(spec: str) -> tuple[str | None, str]:
    """`handler`, `module:function` or `package.module:function` -> (module or None, function)."""
    module, _, function = spec.rpartition(":")
    if not function.isidentifier() or (module and not all(p.isidentifier() for p in module.split("."))):
        raise FunctionLoadError(f"FUNCTION_HANDLER={spec!r} is not `function`, `module:function` "
                                "or `package.module:function`")
    return module or None, function


def load_function(path: Path, handler_spec: str, unpack_dir: Path) -> LoadedFunction:
    """Import the function at `path` (a .py file, a directory or a .zip) and return its entry point."""
    module_name, function_name = parse_handler(handler_spec)
    if not path.exists():
        raise FunctionLoadError(f"{path}: no such file; mount the function there or set FUNCTION_PATH")
    try:
        root, module_file, stamp_files = _locate(path, module_name, unpack_dir)
        digest = hashlib.sha256()
        for file in stamp_files:
            digest.update(file.read_bytes())
        mtime = max(os.stat(f).st_mtime for f in stamp_files)
    except OSError as error:
        raise FunctionLoadError(f"{path}: cannot be read ({error.strerror or error})") from None
    name = module_name or module_file.stem
    module = _import(name, module_file, root)
    handler = _entry_point(module, module_file, function_name)
    version = f"{format_mtime(mtime)} sha256:{digest.hexdigest()[:12]}"
    return LoadedFunction(handler=handler, path=path, getmtime=format_mtime(mtime), version=version)


def _locate(path: Path, module_name: str | None, unpack_dir: Path) -> tuple[Path, Path, list[Path]]:
    """(import root, the entry module's file, the files whose content makes the version)."""
    if path.is_dir():
        archives = [f for f in path.iterdir() if f.suffix == ".zip" and not f.name.startswith(".")]
        if len(archives) == 1 and not any(path.glob("*.py")):
            path = archives[0]  # a ConfigMap's binaryData key mounted as a directory
    if path.suffix == ".zip":
        root, stamps = archive.unpack(path, unpack_dir), [path]
    elif path.is_dir():
        root, stamps = path, [f for f in _files(path) if f.suffix == ".py"]
    elif path.suffix == ".py":
        if module_name is None or module_name == path.stem:
            return path.parent, path, [path]
        root, stamps = path.parent, [path]
    else:
        raise FunctionLoadError(f"{path}: not a .py file, a directory or a .zip; FUNCTION_PATH names the function")
    return root, _module_file(root, module_name, path), stamps


def _module_file(root: Path, module_name: str | None, shown: Path) -> Path:
    if module_name is None:
        candidates = sorted(root.glob("*.py"))
        preferred = [c for c in candidates if c.stem in ("usermodule", "main", "handler")]
        if len(candidates) == 1 or preferred:
            return (preferred or candidates)[0]
        raise FunctionLoadError(f"{shown}: holds {len(candidates)} top-level modules; name the entry point "
                                "with FUNCTION_HANDLER=module:function")
    relative = Path(*module_name.split("."))
    for file in (root / relative.with_suffix(".py"), root / relative / "__init__.py"):
        if file.is_file():
            return file
    raise FunctionLoadError(f"{shown}: has no module {module_name!r} (looked for {relative}.py and "
                            f"{relative}/__init__.py)")


def _import(name: str, module_file: Path, root: Path) -> Any:
    """Import the entry module from its file, fresh: modules loaded before from `root` are dropped."""
    root_text = str(root.resolve())
    for loaded_name, loaded in list(sys.modules.items()):
        origin = getattr(loaded, "__file__", None)
        if origin and os.path.realpath(origin).startswith(root_text + os.sep):
            del sys.modules[loaded_name]  # so sibling modules are re-read on reload
    if root_text not in sys.path:
        sys.path.insert(0, root_text)  # so the function can import modules beside it
    importlib.invalidate_caches()
    is_package = module_file.name == "__init__.py"
    spec = importlib.util.spec_from_file_location(
        name, module_file, submodule_search_locations=[str(module_file.parent)] if is_package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        del sys.modules[name]
        raise FunctionLoadError(f"{error.filename}, line {error.lineno}: SyntaxError: {error.msg}") from None
    except BaseException as error:  # noqa: BLE001 - user code at import time may raise anything, SystemExit too
        del sys.modules[name]
        file, line = _user_frame(error, root)
        raise FunctionLoadError(f"{file or module_file}, line {line}: {describe(error)} "
                                "(raised while importing the module)") from None
    return module


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


def _user_frame(error: BaseException, root: Path) -> tuple[str | None, int | str]:
    """The innermost traceback frame in the function's own files."""
    root_text = str(root.resolve())
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.realpath(f.filename).startswith(root_text + os.sep)]
    return (frames[-1].filename, frames[-1].lineno) if frames else (None, "?")


_NEVER = object()


RETRY_FIRST, RETRY_CAP = 1.0, 30.0  # seconds between attempts to load code that failed to load


class Retry:
    """When to try again a load that failed without its files changing (a race, a full disk)."""

    def __init__(self) -> None:
        self.delay = RETRY_FIRST
        self.at: float | None = None

    def due(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def failed(self) -> None:
        self.delay = RETRY_FIRST if self.at is None else min(self.delay * 2, RETRY_CAP)
        self.at = time.monotonic() + self.delay

    def succeeded(self) -> None:
        self.at, self.delay = None, RETRY_FIRST


class FunctionSource:
    """The current function: loaded once, reloaded when its files change, the last good one kept on error."""

    def __init__(self, path: Path, handler_name: str, unpack_dir: Path) -> None:
        # Absolute once, here: a handler that changes the working directory cannot move the function.
        self.path = Path(os.path.abspath(path))
        self.handler_name = handler_name
        self.unpack_dir = Path(os.path.abspath(unpack_dir))
        self.current: LoadedFunction | None = None
        self.error: str | None = None
        self.retry = Retry()
        self._identity: object = _NEVER

    def refresh(self, retry: bool = False) -> bool:
        """Reload if the files changed, or a failed load is due again (or `retry`); True when a load succeeded."""
        identity = source_identity(self.path)
        if identity == self._identity and not (self.error is not None and (retry or self.retry.due())):
            return False
        again = identity == self._identity
        self._identity = identity
        try:
            loaded = load_function(self.path, self.handler_name, self.unpack_dir)
        except FunctionLoadError as error:
            self.retry.failed()
            if not again or str(error) != self.error:  # a retry failing the same way is not news
                # Debug: the runtime reports the failure itself (log line, status, error record), once.
                log.debug("function_load_failed path=%s keeping=%s error=%s", self.path,
                          self.current.version if self.current else "none", error)
            self.error = str(error)
            return False
        self.retry.succeeded()
        self.current, self.error = loaded, None
        log.info("function_loaded path=%s handler=%s version=%s", self.path, self.handler_name, loaded.version)
        return True
