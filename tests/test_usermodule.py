"""The example function against values computed by hand from the fixtures."""

import json
import math
from types import SimpleNamespace

import pytest

import usermodule
from runtime import envcodec, schema
from tests.conftest import fixture_path, fixture_samples, make_samples


def run(samples, context=None):
    context = context or SimpleNamespace(env={})
    return [usermodule.handler(sample, context) for sample in samples], context


def test_first_sample_uses_counters_since_boot():
    (first,), _ = run(fixture_samples()[:1])
    assert first["percent-network-egress"] == pytest.approx(100 * 1234640758 / (1234640758 + 9876614967))
    assert first["percent-memory-cache"] == pytest.approx(100 * (412607354 + 6114063972) / 16767942656)
    assert first["avg-util-cpu0-60sec"] == pytest.approx(7.8)


def test_egress_is_from_counter_deltas_between_samples():
    (_, second), _ = run(fixture_samples()[:2])
    sent, received = 1234712451 - 1234640758, 9876849148 - 9876614967
    assert second["percent-network-egress"] == pytest.approx(100 * sent / (sent + received))


def test_no_traffic_gives_zero_egress():
    sample = fixture_samples()[0]
    outputs, _ = run([sample, dict(sample, timestamp="2026-11-28 14:00:05.250000")])
    assert outputs[1]["percent-network-egress"] == 0.0


def test_cpu_average_covers_the_samples_of_the_last_60_seconds():
    outputs, _ = run(fixture_samples()[:13])
    # 14:00:55.25: every sample since 14:00:00.25 (12 of them).
    values_12 = [7.8, 7.1, 8.0, 7.5, 1.5, 10.6, 14.8, 15.9, 5.3, 5.1, 7.2, 20.8]
    assert outputs[11]["avg-util-cpu0-60sec"] == pytest.approx(sum(values_12) / 12)
    # 14:01:00.25: the 14:00:00.25 sample is 60 s old and drops out; 16.4 comes in.
    assert outputs[12]["avg-util-cpu0-60sec"] == pytest.approx((sum(values_12) - 7.8 + 16.4) / 12)
    assert set(outputs[12]) == {"percent-network-egress", "percent-memory-cache",
                                *(f"avg-util-cpu{i}-60sec" for i in range(4))}


def test_any_interval_works_and_matches_a_recomputed_mean():
    samples = make_samples(300, step_seconds=0.5)
    outputs, _ = run(samples)
    for index in (0, 50, 119, 120, 121, 299):
        now = schema.parse_timestamp(samples[index]["timestamp"])
        window = [s["cpu_percent-2"] for s in samples[: index + 1]
                  if (now - schema.parse_timestamp(s["timestamp"])).total_seconds() < 60]
        assert outputs[index]["avg-util-cpu2-60sec"] == pytest.approx(sum(window) / len(window), abs=1e-9)


def test_reads_the_assignment_names_of_the_network_counters():
    sample = json.loads(fixture_path("metrics-assignment-names-2cpu.json").read_text())
    (output,), _ = run([sample])
    assert output["percent-network-egress"] == pytest.approx(100 * 1234629233 / (1234629233 + 9876695806))
    assert {"avg-util-cpu0-60sec", "avg-util-cpu1-60sec"} <= set(output)


def test_clock_going_back_restarts_the_windows():
    samples = fixture_samples()[:3]
    outputs, _ = run(samples + [dict(samples[0], **{"cpu_percent-0": 50.0})])
    assert outputs[-1]["avg-util-cpu0-60sec"] == 50.0


def test_runs_on_the_reference_runtime_shape_of_context():
    """The course's runtime passes an object with a plain dict env; nothing else is needed."""
    class ReferenceContext:
        host, port, input_key, output_key = "localhost", 6379, "metrics", "out"
        function_getmtime, last_execution = "2026-11-28 14:00:00", None

        def __init__(self):
            self.env = {}

    outputs, _ = run(fixture_samples()[:5], ReferenceContext())
    assert len(outputs) == 5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e999, "50", None, True, 10**400],
                         ids=["nan", "infinity", "1e999", "string", "null", "bool", "huge-int"])
def test_a_bad_value_is_skipped_and_never_poisons_later_outputs_or_the_checkpoint(bad):
    samples = fixture_samples()[:4]
    poisoned = [samples[0], dict(samples[1], **{"cpu_percent-0": bad, "net_io_counters_eth0-bytes_sent": bad,
                                                "virtual_memory-total": bad}), *samples[2:]]
    outputs, context = run(poisoned)
    clean, _ = run([samples[0], dict(samples[1], **{"cpu_percent-0": 7.1}), *samples[2:]])
    assert "avg-util-cpu0-60sec" not in outputs[1] and "percent-network-egress" not in outputs[1]
    assert "percent-memory-cache" not in outputs[1] and "avg-util-cpu1-60sec" in outputs[1]
    without = [samples[0], *samples[2:]]  # what the windows hold: the poisoned sample's CPU 0 skipped
    expected = sum(s["cpu_percent-0"] for s in without) / 3
    assert outputs[-1]["avg-util-cpu0-60sec"] == pytest.approx(expected)
    assert outputs[-1]["percent-network-egress"] == pytest.approx(clean[-1]["percent-network-egress"])
    assert all(math.isfinite(v) for output in outputs for v in output.values())
    envcodec.dumps(context.env)  # the checkpoint stores it, finite
    assert "nan" not in envcodec.dumps(context.env) and "inf" not in envcodec.dumps(context.env)
