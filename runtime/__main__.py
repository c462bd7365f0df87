"""`python -m runtime`: configuration from the environment, probes up first, then the runtime."""

from __future__ import annotations

import logging
import sys

from runtime.config import RuntimeConfig, connect, start_role
from runtime.hosts import HostSupervisor
from runtime.observe import Metrics, Probes, StartingHealth, serve
from runtime.requirements import RequirementsError, install
from runtime.worker import adopt_orphans

log = logging.getLogger("runtime")


def main() -> int:
    """Exit 2 on bad configuration, 3 when the requirements do not install; SIGTERM finishes the invocation."""
    started = start_role("runtime", RuntimeConfig.from_env)
    if started is None:
        return 2
    config, stop = started
    adopt_orphans()  # before any worker: what a handler's processes leave behind comes back to us
    log.info("starting redis=%s input=%s output=%s function=%s handler=%s timeout=%gs", config.redis.safe_url(),
             config.keys.input, config.keys.output, config.function_path, config.handler_name,
             config.handler_timeout)
    probes = Probes(StartingHealth(), Metrics(), lambda: "starting")
    start_http(config, probes)
    extra_paths = []
    if config.requirements is not None and config.requirements.exists():
        probes.describe = lambda: "installing requirements"
        try:
            extra_paths.append(str(install(config.requirements, config.work_dir / "packages")))
        except RequirementsError as error:
            log.error("requirements_failed %s", error)
            print(f"runtime: {error}", file=sys.stderr)
            return 3
        sys.path[:0] = extra_paths
    supervisor = HostSupervisor(config, connect(config.redis, client_name="runtime"), stop, extra_paths,
                                probes.metrics)
    probes.health, probes.describe = supervisor.health, supervisor.describe
    supervisor.run()
    return 0


def start_http(config: RuntimeConfig, probes: Probes) -> None:
    if config.http_port is None:
        return
    try:
        serve(config.http_port, probes)
    except OSError as error:  # the runtime's job is the samples: go on without probes
        log.error("http_not_started port=%d error=%s; set HTTP_PORT to a free port", config.http_port, error)


if __name__ == "__main__":  # handler workers are spawned processes that import this module too
    sys.exit(main())
