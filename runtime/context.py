"""The `context` object handed to the user's handler, as the course's reference runtime shapes it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

FIELDS = ("host", "port", "input_key", "output_key", "function_getmtime", "last_execution", "env")
HELP_TEXT = """Context fields:
  host               the Redis host the runtime reads from
  port               the Redis port
  input_key          the key the samples come from
  output_key         the key the handler's result is stored at (None: stored nowhere)
  function_getmtime  the function file's modification time, 'YYYY-MM-DD HH:MM:SS'
  last_execution     datetime of the last stored execution (None before the first)
  env                a dict kept between calls; mutate it, reassign it or call set_env(new)
Methods:
  set_env(new)         replace env
  confirm_execution()  set last_execution to now
  help()               print this text"""


class Context:
    """One object for the life of the runtime, so `context.env = {...}` persists to the next call.

    Attribute access is the course's way; `context["env"]` and `context.get("env")` also work,
    since some functions written for the course read it like a dict.
    """

    def __init__(
        self,
        host: str,
        port: int,
        input_key: str,
        output_key: str | None,
        function_getmtime: str,
        last_execution: datetime | None = None,
        env: dict[str, Any] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.input_key = input_key
        self.output_key = output_key
        self.function_getmtime = function_getmtime
        self.last_execution = last_execution
        self.env = {} if env is None else env

    def __getitem__(self, name: str) -> Any:
        if name not in FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in FIELDS:
            raise KeyError(name)
        setattr(self, name, value)

    def __contains__(self, name: object) -> bool:
        return name in FIELDS

    def set_env(self, new: Any) -> None:
        """Replace `env`, as the reference's method does; the new value is what the checkpoint stores."""
        self.env = new

    def confirm_execution(self) -> None:
        """Set `last_execution` to now, as the reference's method does."""
        self.last_execution = datetime.now()

    @staticmethod
    def help() -> None:
        """Print the context's fields and methods, as the reference's static help() does."""
        print(HELP_TEXT)  # the handler asked for it: it lands in the invocation's captured output

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default) if name in FIELDS else default

    def __repr__(self) -> str:
        return (f"Context(host={self.host!r}, port={self.port!r}, input_key={self.input_key!r}, "
                f"output_key={self.output_key!r}, function_getmtime={self.function_getmtime!r}, "
                f"last_execution={self.last_execution!r}, env=<{len(self.env) if hasattr(self.env, '__len__') else '?'} keys>)")
