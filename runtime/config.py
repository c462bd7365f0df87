"""Configuration from the environment, read once in main(); the Redis connection built from it."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from runtime import logs, schema
from runtime.lease import connection_name

T = TypeVar("T")

DEFAULT_INTERVAL = 5.0  # seconds, as in the course's reference runtime and collector
MIN_COLLECTOR_INTERVAL = 0.5
DEFAULT_INPUT_KEY = "metrics"
DEFAULT_OUTPUT_KEY = "metrics-output"  # the stack's and the dashboard's (the runtime has none by default)
DEFAULT_FUNCTION_PATH = "/opt/usermodule.py"  # where the course's Deployment mounts the function
DEFAULT_HANDLER = "handler"
DEFAULT_OUTPUT_MAX_BYTES = 1024 * 1024
DEFAULT_RETENTION_SECONDS = 24 * 3600
DEFAULT_BUFFER_SAMPLES = 17_280  # a day at 5 s, kept by the collector while Redis is away
DEFAULT_BATCH = 256  # samples read and committed together when a backlog builds up
ERRORS_KEPT = 1000  # entries of the errors stream
DEFAULT_HANDLER_TIMEOUT = 30.0
DEFAULT_HTTP_PORT = 8080
DEFAULT_ENV_CHECKPOINT_SECONDS = 1.0  # the env is stored about this often; the samples since replay on restart
# The registered hosts' period when ENV_CHECKPOINT_SECONDS is not set: a thousand hosts storing their env
# every second would keep a core busy encoding it; a takeover replays at most this much per host.
DEFAULT_HOST_ENV_CHECKPOINT_SECONDS = 10.0
# A standby takes over this long after the active runtime was lost with its node; at once when its process
# died (its connections closed). Renewed every 6 s, by commits too: the longer, the fewer wake-ups.
DEFAULT_LEASE_SECONDS = 15.0
DEFAULT_MAX_HOSTS = 2000  # hosts one runtime process follows at most (about 400 MB; see the README's sizing)
DEFAULT_HOST_TTL = 24 * 3600.0  # a host silent this long is dropped from the registry and released

# The block of one XREAD when no sample comes. A stop wakes it at once; the liveness probe expects a
# step at least every STALL_SECONDS (observe.py), and the socket timeout must exceed it.
DEFAULT_BLOCK_SECONDS = 5.0
MAX_BLOCK_SECONDS = 5.0
SOCKET_TIMEOUT_SECONDS = 10.0
BACKOFF_CAP_SECONDS = 10.0
DEFAULT_DASHBOARD_REFRESH = 2.0  # seconds between the page's live refreshes
DASHBOARD_REFRESH_RANGE = (1.0, 10.0)
URL_PASSWORD_BREAKERS = "/#?"  # characters that end a URL's authority part: a password must encode them


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and what it accepts."""


def _number(env: Mapping[str, str], name: str, default: float, minimum: float,
            maximum: float = float("inf")) -> float:
    """A number setting: the default when unset, ConfigError naming the variable when out of range."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number (seconds or a count, e.g. {default:g})") from None
    if not minimum <= value <= maximum:
        bound = f"between {minimum:g} and {maximum:g}" if maximum < float("inf") else f"at least {minimum:g}"
        raise ConfigError(f"{name}={text!r} must be {bound}")
    return value


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, "").strip() or default


def _check_url(url: str) -> None:
    """A URL redis-py will read as written; the message never repeats it (it may hold a password)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, not {parts.scheme!r}://")
    if parts.scheme == "unix":
        return
    after_authority = url[len(parts.scheme) + 3 + len(parts.netloc):]
    try:
        parts.port
    except ValueError:
        after_authority += "@"  # "redis://:pa:ss@host" and the like: a password breaking the port
    if "@" in after_authority:
        raise ConfigError("REDIS_URL: the password seems to hold one of / # ? (or the URL is malformed): "
                          "percent-encode them in the URL (/ as %2F, # as %23, ? as %3F) or pass the password "
                          "in REDIS_PASSWORD instead")


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is: REDIS_URL (redis:// or rediss://), or the course's REDIS_HOST / REDIS_PORT."""

    url: str
    password: str | None = None
    tls_ca: str | None = None  # CA bundle that signed the server's certificate (rediss://)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisSettings:
        password = env.get("REDIS_PASSWORD") or None
        url = env.get("REDIS_URL", "").strip()
        if not url:
            host = env.get("REDIS_HOST", "").strip() or "localhost"
            port = env.get("REDIS_PORT", "").strip() or "6379"
            if not port.isdigit():
                raise ConfigError(f"REDIS_PORT={port!r} is not a port number")
            scheme = "rediss" if env.get("REDIS_TLS", "").lower() in ("1", "true", "yes") else "redis"
            url = f"{scheme}://{host}:{port}"
        _check_url(url)
        return cls(url=url, password=password, tls_ca=env.get("REDIS_TLS_CA", "").strip() or None)

    @property
    def host(self) -> str:
        """The server's host name, as the course's context.host gives it."""
        return urlsplit(self.url).hostname or "localhost"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 6379

    def safe_url(self) -> str:
        """The URL with any password masked, for logs and the dashboard."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        user = quote(parts.username or "", safe="")
        netloc = f"{user}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))


def connect(settings: RedisSettings, client_name: str) -> redis.Redis:
    """A client that retries refused or broken connections with capped, jittered exponential backoff;
    its connections are named `client_name@` this process (lease.connection_name)."""
    retry = Retry(ExponentialWithJitterBackoff(cap=BACKOFF_CAP_SECONDS / 4, base=0.05), retries=3)
    options = dict(
        decode_responses=True,
        encoding_errors="surrogateescape",  # bytes that are not UTF-8 arrive as lone surrogates, not a crash
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        client_name=connection_name(client_name),  # a standby knows by it whether a lease's holder is gone
    )
    if settings.password:
        options["password"] = settings.password
    if settings.tls_ca:
        options["ssl_ca_certs"] = settings.tls_ca
    return redis.Redis.from_url(settings.url, **options)


def start_role(role: str, parse: Callable[[], T]) -> tuple[T, threading.Event] | None:
    """A role's start: its settings and logging from the environment, SIGTERM/SIGINT setting the stop event.

    None (after saying why on stderr, as `<role>: <what is wrong>`) when a setting is bad: exit 2.
    """
    try:
        config = parse()
        configure_logging(os.environ)
    except ConfigError as error:
        print(f"{role}: {error}", file=sys.stderr)
        return None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return config, stop


def configure_logging(env: Mapping[str, str]) -> None:
    """One line per event, greppable `key=value` fields; the level from LOG_LEVEL."""
    level = env.get("LOG_LEVEL", "INFO").upper()
    if level not in logs.LEVELS:
        raise ConfigError(f"LOG_LEVEL={level!r} is not one of {', '.join(logs.LEVELS)}")
    logs.configure(level)


@dataclass(frozen=True)
class RuntimeConfig:
    redis: RedisSettings
    keys: schema.Keys
    interval: float
    function_path: Path
    handler_name: str
    output_max_bytes: int
    retention_seconds: float
    start_from_earliest: bool
    batch_size: int = DEFAULT_BATCH
    handler_timeout: float = DEFAULT_HANDLER_TIMEOUT  # 0: call in-process, without a hard timeout
    work_dir: Path = Path(tempfile.gettempdir()) / "runtime"
    requirements: Path | None = None
    http_port: int | None = DEFAULT_HTTP_PORT  # None: no HTTP server; 0: any free port
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    handler_memory_mb: int = 0  # 0: no limit
    block_seconds: float = DEFAULT_BLOCK_SECONDS
    env_checkpoint_seconds: float = DEFAULT_ENV_CHECKPOINT_SECONDS  # 0: with every commit
    host_env_checkpoint_seconds: float = DEFAULT_HOST_ENV_CHECKPOINT_SECONDS  # the registered hosts' own
    max_hosts: int = DEFAULT_MAX_HOSTS
    host_ttl: float = DEFAULT_HOST_TTL

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RuntimeConfig:
        env = os.environ if env is None else env
        start_from = env.get("START_FROM", "latest").strip().lower()
        if start_from not in ("latest", "earliest"):
            raise ConfigError(f"START_FROM={start_from!r} must be 'latest' or 'earliest'")
        retention = _number(env, "RETENTION_SECONDS", DEFAULT_RETENTION_SECONDS, 1)
        env_checkpoint = _number(env, "ENV_CHECKPOINT_SECONDS", DEFAULT_ENV_CHECKPOINT_SECONDS, 0, 3600)
        host_env_checkpoint = env_checkpoint if env.get("ENV_CHECKPOINT_SECONDS", "").strip() else min(
            DEFAULT_HOST_ENV_CHECKPOINT_SECONDS, retention / 2)
        return cls(
            redis=RedisSettings.from_env(env),
            keys=schema.Keys(
                input=_text(env, "REDIS_INPUT_KEY", DEFAULT_INPUT_KEY),
                output=env.get("REDIS_OUTPUT_KEY", "").strip() or None,
            ),
            interval=_number(env, "INTERVAL", DEFAULT_INTERVAL, 0.01),
            function_path=Path(env.get("FUNCTION_PATH", "").strip() or DEFAULT_FUNCTION_PATH),
            handler_name=env.get("FUNCTION_HANDLER", "").strip() or DEFAULT_HANDLER,
            output_max_bytes=int(_number(env, "OUTPUT_MAX_BYTES", DEFAULT_OUTPUT_MAX_BYTES, 1)),
            retention_seconds=retention,
            start_from_earliest=start_from == "earliest",
            batch_size=int(_number(env, "BATCH_SIZE", DEFAULT_BATCH, 1)),
            handler_timeout=_number(env, "HANDLER_TIMEOUT", DEFAULT_HANDLER_TIMEOUT, 0),
            work_dir=Path(env.get("WORK_DIR", "").strip() or Path(tempfile.gettempdir()) / "runtime"),
            requirements=_requirements_file(env),
            http_port=_http_port(env),
            lease_seconds=_number(env, "LEASE_SECONDS", DEFAULT_LEASE_SECONDS, 1),
            handler_memory_mb=int(_number(env, "HANDLER_MEMORY_MB", 0, 0)),
            block_seconds=_number(env, "BLOCK_SECONDS", DEFAULT_BLOCK_SECONDS, 0.01, MAX_BLOCK_SECONDS),
            env_checkpoint_seconds=env_checkpoint,
            host_env_checkpoint_seconds=host_env_checkpoint,
            max_hosts=int(_number(env, "MAX_HOSTS", DEFAULT_MAX_HOSTS, 1, 100_000)),
            host_ttl=_number(env, "HOST_TTL", DEFAULT_HOST_TTL, 10),
        ).checked()

    def checked(self) -> RuntimeConfig:
        """Refuse settings that together break a promise; each alone was already checked."""
        if self.env_checkpoint_seconds * 2 > self.retention_seconds:
            raise ConfigError(f"ENV_CHECKPOINT_SECONDS={self.env_checkpoint_seconds:g} must be at most half of "
                              f"RETENTION_SECONDS={self.retention_seconds:g}: after a restart the samples since "
                              "the stored env run again from the stream, so the stream must still hold them")
        return self


def _requirements_file(env: Mapping[str, str]) -> Path | None:
    """The reference runtime's NEW_REQUERIMENTS (its spelling), or FUNCTION_REQUIREMENTS."""
    name = env.get("FUNCTION_REQUIREMENTS", "").strip() or env.get("NEW_REQUERIMENTS", "").strip()
    return Path(name) if name else None


def _http_port(env: Mapping[str, str]) -> int | None:
    text = env.get("HTTP_PORT", "").strip().lower()
    if text in ("off", "none", "-1"):
        return None
    if not text:
        return DEFAULT_HTTP_PORT
    if not text.isdigit() or int(text) > 65535:
        raise ConfigError(f"HTTP_PORT={text!r} is not a port number (0 for any free port, off for none)")
    return int(text)


@dataclass(frozen=True)
class CollectorConfig:
    redis: RedisSettings
    keys: schema.Keys
    interval: float
    net_interface: str | None
    procfs_path: str | None
    buffer_samples: int
    retention_seconds: float
    host_id: str | None = None  # publish under per-host keys and register the host

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CollectorConfig:
        env = os.environ if env is None else env
        return cls(
            redis=RedisSettings.from_env(env),
            keys=schema.Keys(input=_text(env, "REDIS_INPUT_KEY", DEFAULT_INPUT_KEY)),
            interval=_number(env, "INTERVAL", DEFAULT_INTERVAL, MIN_COLLECTOR_INTERVAL),
            net_interface=env.get("NET_INTERFACE", "").strip() or None,
            procfs_path=env.get("PROCFS_PATH", "").strip() or None,
            buffer_samples=int(_number(env, "BUFFER_SAMPLES", DEFAULT_BUFFER_SAMPLES, 1)),
            retention_seconds=_number(env, "RETENTION_SECONDS", DEFAULT_RETENTION_SECONDS, 1),
            host_id=_host_id(env),
        )


def _host_id(env: Mapping[str, str]) -> str | None:
    """HOST_ID (on Kubernetes the node's name): the collector then publishes under per-host keys."""
    host = env.get("HOST_ID", "").strip()
    if host:
        try:
            schema.Keys().for_host(host)
        except ValueError as error:
            raise ConfigError(f"HOST_ID: {error}") from None
    return host or None


@dataclass(frozen=True)
class DashboardConfig:
    """The dashboard's own settings, parsed like every other role's."""

    redis: RedisSettings
    keys: schema.Keys
    refresh_seconds: float = DEFAULT_DASHBOARD_REFRESH
    interval: float = DEFAULT_INTERVAL  # the collector's, for "no data since" hints

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DashboardConfig:
        env = os.environ if env is None else env
        return cls(
            redis=RedisSettings.from_env(env),
            keys=schema.Keys(input=_text(env, "REDIS_INPUT_KEY", DEFAULT_INPUT_KEY),
                             output=_text(env, "REDIS_OUTPUT_KEY", DEFAULT_OUTPUT_KEY)),
            refresh_seconds=_number(env, "DASHBOARD_REFRESH", DEFAULT_DASHBOARD_REFRESH, *DASHBOARD_REFRESH_RANGE),
            interval=_number(env, "INTERVAL", DEFAULT_INTERVAL, MIN_COLLECTOR_INTERVAL),
        )
