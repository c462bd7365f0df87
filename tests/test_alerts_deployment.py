"""The evaluator's manifests: the rules ConfigMap is alerts.yaml, mounted so that edits are reloaded."""

import yaml

from tests.conftest import REPO_DIR

MANIFESTS = REPO_DIR / "manifests"


def test_the_alerts_configmap_holds_exactly_alerts_yaml():
    configmap = yaml.safe_load((MANIFESTS / "alerts-configmap.yaml").read_text())
    assert configmap["data"] == {"alerts.yaml": (REPO_DIR / "alerts.yaml").read_text()}


def test_the_evaluator_reads_its_rules_from_a_directory_mount_and_is_probed():
    deployment = yaml.safe_load((MANIFESTS / "alerts-deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "runtime.alerts"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "rules")
    assert "subPath" not in mount and mount["readOnly"] is True  # a subPath mount never sees ConfigMap updates
    env = {e["name"]: e for e in container["env"]}
    assert env["ALERTS_FILE"]["value"] == mount["mountPath"] + "/alerts.yaml"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_INPUT_KEY", "REDIS_OUTPUT_KEY"} <= set(env)
