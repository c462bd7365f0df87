"""The evaluator's configuration (from the environment, read once) and the Redis keys it uses."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runtime import schema
from runtime.config import DEFAULT_LEASE_SECONDS, ConfigError, RedisSettings, RuntimeConfig, _number

DEFAULT_RULES_FILE = "alerts.yaml"
DEFAULT_GRACE_SECONDS = 120.0  # a rule whose value has not appeared by then is reported
DEFAULT_WEBHOOK_TIMEOUT = 5.0


@dataclass(frozen=True)
class AlertsConfig:
    redis: RedisSettings
    keys: schema.Keys
    rules_path: Path
    webhooks: tuple[str, ...] = ()
    http_port: int | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    webhook_timeout: float = DEFAULT_WEBHOOK_TIMEOUT
    external_url: str = ""  # where people look at alerts: the dashboard's address, for the payload
    start_from_earliest: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AlertsConfig:
        """The runtime's variables, read as the runtime reads them, plus the evaluator's own."""
        env = os.environ if env is None else env
        runtime = RuntimeConfig.from_env(env)
        return cls(
            redis=runtime.redis,
            keys=runtime.keys,
            rules_path=Path(env.get("ALERTS_FILE", "").strip() or DEFAULT_RULES_FILE),
            webhooks=webhook_urls(env.get("ALERT_WEBHOOKS", "")),
            http_port=runtime.http_port,
            lease_seconds=runtime.lease_seconds,
            grace_seconds=_number(env, "ALERTS_GRACE_SECONDS", DEFAULT_GRACE_SECONDS, 0),
            webhook_timeout=_number(env, "ALERT_WEBHOOK_TIMEOUT", DEFAULT_WEBHOOK_TIMEOUT, 0.1),
            external_url=env.get("ALERTS_EXTERNAL_URL", "").strip(),
            start_from_earliest=runtime.start_from_earliest,
        )


def webhook_urls(text: str) -> tuple[str, ...]:
    """ALERT_WEBHOOKS: http(s) URLs separated by commas or spaces."""
    urls = tuple(part for part in text.replace(",", " ").split() if part)
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"ALERT_WEBHOOKS: {safe_url(url)!r} is not an http:// or https:// URL with a host "
                              "(separate several with commas)")
    if len(set(urls)) != len(urls):
        raise ConfigError("ALERT_WEBHOOKS names the same URL twice: each would get every alert twice")
    return urls


def safe_url(url: str) -> str:
    """A webhook URL with any password masked, for logs and the status."""
    try:
        return RedisSettings(url).safe_url()  # the same masking as Redis URLs
    except ValueError:
        return "(unparsable URL)"
