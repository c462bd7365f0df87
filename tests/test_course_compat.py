"""Functions written for the course's reference runtime run unchanged: its context methods, its input, its NaN."""

import json
import math

import pytest

from tests.conftest import (errors, fixture_path, make_samples, outputs, publish, running_runtime, runtime_env,
                            wait_for, write_function)

CONTEXT_METHODS = '''
from datetime import datetime

def handler(input, context):
    if input["timestamp"].endswith("help"):
        context.help()
        raise RuntimeError("asked for help")
    env = dict(context.env)
    env["n"] = env.get("n", 0) + 1
    context.set_env(env)
    before = context.last_execution
    context.confirm_execution()
    return {"n": context.env["n"], "confirmed": isinstance(context.last_execution, datetime),
            "moved": before is None or context.last_execution > before}
'''


@pytest.mark.parametrize("timeout", ["5", "0"], ids=["worker", "in-process"])
def test_set_env_and_confirm_execution_work_and_the_env_survives_a_restart(client, redis_url, tmp_path, timeout):
    path = write_function(tmp_path, CONTEXT_METHODS)
    samples = make_samples(6)
    publish(client, samples[:3])
    with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT=timeout)):
        wait_for(lambda: len(outputs(client, "out")) == 3)
    publish(client, samples[3:])
    with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT=timeout)):
        wait_for(lambda: len(outputs(client, "out")) == 6)
    assert [o for _, o in outputs(client, "out")] == [{"n": n, "confirmed": True, "moved": True} for n in range(1, 7)]
    assert json.loads(client.get("out:state"))["env"] == {"n": 6}
    assert not errors(client, "out")


def test_help_prints_the_fields_into_the_invocations_captured_output(client, redis_url, tmp_path):
    path = write_function(tmp_path, CONTEXT_METHODS)
    publish(client, [dict(make_samples(1)[0], timestamp="help")])
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: errors(client, "out"))
    (record,) = errors(client, "out")
    for name in ("host", "port", "input_key", "output_key", "function_getmtime", "last_execution", "env",
                 "set_env(new)", "confirm_execution()"):
        assert name in record["output"]


ITERATING = '''
import json
import pandas as pd

def handler(input, context):
    names = [name for name in input]
    return {"iterated": len(names), "len": len(input), "json": len(json.loads(json.dumps(input))),
            "series": len(pd.Series(input)), "dict": len(dict(input)), "items": len(list(input.items())),
            "frame": pd.DataFrame([input]).shape[1],
            "sent1": input["net_io_counters_eth0-bytes_sent1"], "recv1": input.get("net_io_counters_eth0-bytes_recv1"),
            "has_alias": "net_io_counters_eth0-bytes_sent1" in input, "missing": input.get("no such field", -1),
            "sum_net": sum(v for k, v in input.items() if k.startswith("net_io_counters_eth0-bytes"))}
'''


def test_a_handler_iterating_the_input_sees_exactly_the_published_fields(client, redis_url, tmp_path):
    path = write_function(tmp_path, ITERATING)
    sample = json.loads(fixture_path("metrics-course-8cpu.json").read_text())
    publish(client, [sample])
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: outputs(client, "out"))
    (_, output), = outputs(client, "out")
    published = len(sample)
    assert {k: output[k] for k in ("iterated", "len", "json", "series", "dict", "items")} == dict.fromkeys(
        ("iterated", "len", "json", "series", "dict", "items"), published)
    assert output["frame"] == published
    assert output["sent1"] == sample["net_io_counters_eth0-bytes_sent"]
    assert output["recv1"] == sample["net_io_counters_eth0-bytes_recv"]
    assert output["has_alias"] is True and output["missing"] == -1
    assert output["sum_net"] == sample["net_io_counters_eth0-bytes_sent"] + sample["net_io_counters_eth0-bytes_recv"]


def test_a_sample_with_the_assignment_names_answers_the_course_names_too(client, redis_url, tmp_path):
    path = write_function(tmp_path, ITERATING.replace("bytes_sent1", "bytes_sent").replace("bytes_recv1", "bytes_recv"))
    sample = json.loads(fixture_path("metrics-assignment-names-2cpu.json").read_text())
    publish(client, [sample])
    with running_runtime(runtime_env(redis_url, path)):
        wait_for(lambda: outputs(client, "out"))
    (_, output), = outputs(client, "out")
    assert output["iterated"] == output["series"] == len(sample)
    assert output["sent1"] == sample["net_io_counters_eth0-bytes_sent1"]


NON_FINITE = '''
import numpy as np

def handler(input, context):
    values = context.env.setdefault("values", [])
    mean = sum(values) / len(values) if values else float("nan")  # a mean of nothing, on the first sample
    values.append(input["cpu_percent-0"])
    return {"mean": mean, "np_nan": np.float64("nan"), "np_inf": np.array([np.inf])[0], "inf": float("-inf"),
            "list": np.array([1.0, np.nan])}
'''


@pytest.mark.parametrize("timeout", ["5", "0"], ids=["worker", "in-process"])
def test_nan_and_infinity_outputs_are_stored_as_the_reference_stores_them(client, redis_url, tmp_path, timeout):
    path = write_function(tmp_path, NON_FINITE)
    samples = make_samples(2)
    publish(client, samples)
    with running_runtime(runtime_env(redis_url, path, HANDLER_TIMEOUT=timeout)):
        wait_for(lambda: len(outputs(client, "out")) == 2)
    assert not errors(client, "out")
    first = client.xrange("out:stream")[0][1]["output"]
    assert first == ('{"mean": NaN, "np_nan": NaN, "np_inf": Infinity, "inf": -Infinity, "list": [1.0, NaN]}')
    latest = json.loads(client.get("out"))
    assert latest["mean"] == samples[0]["cpu_percent-0"] and math.isnan(latest["np_nan"])
