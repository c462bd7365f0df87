"""`python -m runtime.alerts`: the alert evaluator, with /healthz, /readyz and Prometheus /metrics."""

from __future__ import annotations

import logging
import sys

from runtime.alerts.config import AlertsConfig, safe_url
from runtime.alerts.service import Evaluator
from runtime.config import connect, start_role
from runtime.__main__ import start_http
from runtime.observe import Probes

log = logging.getLogger("runtime.alerts")


def main() -> int:
    """Configuration from the environment (as the runtime's, plus ALERTS_FILE and ALERT_WEBHOOKS)."""
    started = start_role("alerts", AlertsConfig.from_env)
    if started is None:
        return 2
    config, stop = started
    log.info("starting redis=%s input=%s output=%s rules=%s webhooks=%s", config.redis.safe_url(),
             config.keys.input, config.keys.output, config.rules_path,
             ",".join(map(safe_url, config.webhooks)) or "-")
    evaluator = Evaluator(config, connect(config.redis, client_name="alerts"), stop)
    start_http(config, Probes(evaluator.health, evaluator.metrics, evaluator.describe))  # reads only http_port
    evaluator.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
