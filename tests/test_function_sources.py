"""Multi-file functions (directories, packages, ZIPs), safe unpacking and hot reload."""

import json
import os
import stat
import time
import zipfile
from pathlib import Path

import pytest

from runtime import archive
from runtime.faults import FunctionLoadError
from tests.conftest import errors, make_samples, outputs, publish, running_runtime, runtime_env, wait_for, write_function


def make_zip(path: Path, files: dict[str, str], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for name, text in files.items():
            zipped.writestr(name, text)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zipped.writestr(info, target)
    return path


PACKAGE = {
    "insights/__init__.py": "",
    "insights/maths.py": "def mean(values):\n    return sum(values) / len(values)\n",
    "insights/entry.py": ("from insights.maths import mean\n\n"
                          "def run(input, context):\n    return {'mean': mean([input['cpu_percent-0'], 10.0])}\n"),
}


def test_a_directory_package_runs_with_module_colon_function(client, redis_url, tmp_path):
    for name, text in PACKAGE.items():
        (tmp_path / "fn" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fn" / name).write_text(text)
    sample = make_samples(1)[0]
    publish(client, [sample])
    with running_runtime(runtime_env(redis_url, tmp_path / "fn", FUNCTION_HANDLER="insights.entry:run")):
        wait_for(lambda: client.get("out"))
    assert json.loads(client.get("out")) == {"mean": (sample["cpu_percent-0"] + 10.0) / 2}


def test_modules_importing_each_other_in_a_zip(client, redis_url, tmp_path):
    bundle = make_zip(tmp_path / "function.zip", {
        "helpers.py": "def share(a, b):\n    return 100 * a / (a + b)\n",
        "main.py": ("import helpers\n\ndef handler(input, context):\n"
                    "    return {'egress': helpers.share(input['net_io_counters_eth0-bytes_sent'], "
                    "input['net_io_counters_eth0-bytes_recv'])}\n"),
    })
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, bundle, FUNCTION_HANDLER="main:handler")):
        wait_for(lambda: client.get("out"))
    assert 0 < json.loads(client.get("out"))["egress"] < 100


def test_a_zip_from_a_configmap_binarydata_key_mounted_as_a_directory(client, redis_url, tmp_path):
    mount = tmp_path / "mount"
    mount.mkdir()
    make_zip(mount / "function.zip", {"usermodule.py": "def handler(input, context):\n    return {'zip': 1}\n"})
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, mount)):
        wait_for(lambda: client.get("out"))
    assert json.loads(client.get("out")) == {"zip": 1}


@pytest.mark.parametrize("files, links, message", [
    ({"../escape.py": "x = 1"}, None, "points outside the archive"),
    ({"/etc/cron.d/evil": "x"}, None, "points outside the archive"),
    ({"usermodule.py": "x = 1"}, {"link.py": "/etc/passwd"}, "is a symbolic link"),
], ids=['zip-slip', 'absolute-path', 'symlink'])
def test_hostile_archives_are_refused(tmp_path, files, links, message):
    bundle = make_zip(tmp_path / "bad.zip", files, links)
    with pytest.raises(FunctionLoadError, match=message):
        archive.unpack(bundle, tmp_path / "out")
    assert not (tmp_path / "escape.py").exists()
    assert not any((tmp_path / "out").glob("zip-*"))


def test_a_zip_bomb_is_refused_by_what_it_really_unpacks_to(tmp_path):
    bundle = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bundle, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("usermodule.py", "0" * (3 * 1024 * 1024))
    with pytest.raises(FunctionLoadError, match="unpacks to more than 1,048,576 bytes"):
        archive.unpack(bundle, tmp_path / "out", max_bytes=1024 * 1024)
    with pytest.raises(FunctionLoadError, match="3 entries"):
        archive.unpack(make_zip(tmp_path / "many.zip", {f"m{i}.py": "" for i in range(3)}), tmp_path / "o", max_files=2)


def test_a_hostile_zip_keeps_the_last_good_function_running(client, redis_url, tmp_path):
    mount = tmp_path / "mount"
    mount.mkdir()
    bundle = make_zip(mount / "function.zip", {"usermodule.py": "def handler(input, context):\n    return {'v': 1}\n"})
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, mount)):
        wait_for(lambda: client.get("out"))
        make_zip(bundle, {"usermodule.py": "def handler(input, context):\n    return {'v': 2}\n",
                          "../../escape.py": "x = 1"})
        wait_for(lambda: errors(client, "out"), what="the refusal to be recorded")
        publish(client, make_samples(1))
        wait_for(lambda: len(outputs(client, "out")) == 2)
    assert [o for _, o in outputs(client, "out")] == [{"v": 1}, {"v": 1}]
    assert "points outside the archive" in errors(client, "out")[0]["message"]


def test_an_edit_is_picked_up_by_the_next_invocation(client, redis_url, tmp_path):
    path = write_function(tmp_path, "def handler(input, context):\n    return {'version': 1}\n")
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: client.get("out"))
        old_mtime = json.loads(client.get("out"))
        write_function(tmp_path, "def handler(input, context):\n"
                                 "    return {'version': 2, 'mtime': context.function_getmtime}\n")
        os.utime(path, (time.time() + 120, time.time() + 120))
        publish(client, make_samples(1))
        wait_for(lambda: len(outputs(client, "out")) == 2)
    second = outputs(client, "out")[1][1]
    assert old_mtime == {"version": 1} and second["version"] == 2
    assert second["mtime"] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
    assert client.hget("out:status", "function_version").startswith(second["mtime"])


def test_broken_code_keeps_the_last_good_version_until_fixed(client, redis_url, tmp_path):
    path = write_function(tmp_path, "def handler(input, context):\n    return {'version': 1}\n")
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: client.get("out"))
        write_function(tmp_path, "def handler(input, context):\n    return {'version': 2\n")
        wait_for(lambda: errors(client, "out"), what="the syntax error to be recorded")
        assert "usermodule.py, line 2: SyntaxError" in client.hget("out:status", "function_error")
        publish(client, make_samples(1))
        wait_for(lambda: len(outputs(client, "out")) == 2)
        assert outputs(client, "out")[1][1] == {"version": 1}
        write_function(tmp_path, "def handler(input, context):\n    return {'version': 3}\n")
        publish(client, make_samples(1))
        wait_for(lambda: len(outputs(client, "out")) == 3)
    assert outputs(client, "out")[2][1] == {"version": 3}
    assert client.hget("out:status", "function_error") == ""


def test_a_configmap_symlink_swap_is_seen(client, redis_url, tmp_path):
    """Kubernetes updates a mounted ConfigMap by re-pointing `..data`; the file's own path never changes."""
    mount = tmp_path / "opt"
    (mount / "..2026_01").mkdir(parents=True)
    (mount / "..2026_01" / "usermodule.py").write_text("def handler(input, context):\n    return {'v': 1}\n")
    (mount / "..data").symlink_to("..2026_01")
    (mount / "usermodule.py").symlink_to("..data/usermodule.py")
    publish(client, make_samples(1))
    with running_runtime(runtime_env(redis_url, mount / "usermodule.py")):
        wait_for(lambda: client.get("out"))
        (mount / "..2026_02").mkdir()
        (mount / "..2026_02" / "usermodule.py").write_text("def handler(input, context):\n    return {'v': 2}\n")
        (mount / "..data_tmp").symlink_to("..2026_02")
        os.replace(mount / "..data_tmp", mount / "..data")  # atomic, as the kubelet does
        publish(client, make_samples(1))
        wait_for(lambda: len(outputs(client, "out")) == 2)
    assert outputs(client, "out")[1][1] == {"v": 2}


def test_a_file_in_a_function_directory_changing_reloads_its_siblings(client, redis_url, tmp_path):
    for name, text in PACKAGE.items():
        (tmp_path / "fn" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fn" / name).write_text(text)
    env = runtime_env(redis_url, tmp_path / "fn", FUNCTION_HANDLER="insights.entry:run")
    publish(client, make_samples(1))
    with running_runtime(env):
        wait_for(lambda: client.get("out"))
        (tmp_path / "fn" / "insights" / "maths.py").write_text("def mean(values):\n    return -1.0\n")
        publish(client, make_samples(1))
        wait_for(lambda: len(outputs(client, "out")) == 2)
    assert outputs(client, "out")[1][1] == {"mean": -1.0}
