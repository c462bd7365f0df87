"""The loop's pieces on their own: cursor, checkpoint document, settings, health, pip's explanation."""

import json
from datetime import datetime

import pytest

from runtime import cursor
from runtime.checkpoint import Checkpoint, parse
from runtime.config import ConfigError, DashboardConfig, RedisSettings, RuntimeConfig
from runtime.cursor import PollCursor, StreamCursor
from runtime.loop import next_due
from runtime.observe import STALL_SECONDS, Health
from runtime.requirements import pip_explanation


def test_cursors_are_typed_and_round_trip_through_their_text():
    stream = StreamCursor.of("1700000000000-3")
    assert cursor.parse(stream.text()) == stream and stream.entry_id == "1700000000000-3"
    assert stream.just_before() == StreamCursor(1700000000000, 2)
    assert StreamCursor(5, 0).just_before() == StreamCursor(4, 2**64 - 1)
    polled = PollCursor.of_value('{"timestamp": "x"}')
    assert cursor.parse(polled.text()) == polled and polled.entry_id is None
    assert cursor.parse(None) is None and cursor.parse("") is None
    for bad in ("poll", "12", "a-b", 7):
        with pytest.raises(ValueError):
            cursor.parse(bad)


def test_a_checkpoint_document_round_trips_with_its_env_spliced_in():
    checkpoint = Checkpoint(StreamCursor(1, 2), '{"n": 3}', datetime(2026, 11, 30, 8, 0, 0))
    document = checkpoint.to_json()
    assert json.loads(document) == {"cursor": "1-2", "env_cursor": "1-2", "env_durable": True, "env_error": None,
                                    "last_execution": "2026-11-30T08:00:00", "env": {"n": 3}}
    assert parse(document) == checkpoint and checkpoint.replay_from() is None
    older_env = Checkpoint(StreamCursor(1, 9), '{"n": 3}', None, env_cursor=StreamCursor(1, 2))
    assert parse(older_env.to_json()) == older_env and older_env.replay_from() == StreamCursor(1, 2)
    not_durable = Checkpoint(PollCursor("ab"), None, env_error="a socket cannot be stored")
    assert parse(not_durable.to_json()) == not_durable


@pytest.mark.parametrize("url", ["redis://:sEcr/et@host:6379", "redis://:sEcr#et@host:6379",
                                 "redis://:sEcr?et@host:6379", "redis://user:sEcr/x#y@host"])
def test_an_unencoded_password_in_the_url_is_refused_without_repeating_it(url):
    with pytest.raises(ConfigError) as error:
        RedisSettings.from_env({"REDIS_URL": url})
    assert "percent-encode" in str(error.value) and "sEcr" not in str(error.value)


def test_redis_settings_expose_host_and_port():
    assert (RedisSettings.from_env({"REDIS_HOST": "redis", "REDIS_PORT": "6380"}).host,
            RedisSettings.from_env({"REDIS_HOST": "redis", "REDIS_PORT": "6380"}).port) == ("redis", 6380)
    encoded = RedisSettings.from_env({"REDIS_URL": "redis://:pa%2Fss@10.0.0.1"})
    assert (encoded.host, encoded.port, encoded.safe_url()) == ("10.0.0.1", 6379, "redis://:***@10.0.0.1")


def test_every_role_parses_its_settings_with_the_same_rules():
    assert RuntimeConfig.from_env({}).interval == DashboardConfig.from_env({}).interval == 5.0
    assert DashboardConfig.from_env({"DASHBOARD_REFRESH": "3"}).refresh_seconds == 3.0
    for bad, message in (("fast", "is not a number"), ("0.2", "must be between 1 and 10"), ("60", "must be between 1 and 10")):
        with pytest.raises(ConfigError, match=f"DASHBOARD_REFRESH='{bad}' {message}"):
            DashboardConfig.from_env({"DASHBOARD_REFRESH": bad})
    with pytest.raises(ConfigError, match="BLOCK_SECONDS='30' must be between 0.01 and 5"):
        RuntimeConfig.from_env({"BLOCK_SECONDS": "30"})
    with pytest.raises(ConfigError, match="ENV_CHECKPOINT_SECONDS=600 must be at most half of RETENTION_SECONDS=900"):
        RuntimeConfig.from_env({"ENV_CHECKPOINT_SECONDS": "600", "RETENTION_SECONDS": "900"})


def test_health_fails_when_no_step_completes_but_not_during_a_handler_call():
    health = Health(call_seconds=30)
    assert health.alive
    health.last_progress -= STALL_SECONDS + 1
    assert not health.alive
    health.calling(True)
    assert health.alive  # a handler may take HANDLER_TIMEOUT
    health.call_started -= 30 + STALL_SECONDS + 1
    assert not health.alive
    health.calling(False)
    health.progress()
    assert health.alive


def test_pip_explanation_keeps_the_cause_lines_and_drops_progress():
    output = "Collecting a\n  Downloading a.whl (1 kB)\nERROR: Could not find a version that satisfies b\n" \
             "ERROR: No matching distribution found for b\n"
    assert pip_explanation(output) == ("ERROR: Could not find a version that satisfies b\n"
                                       "ERROR: No matching distribution found for b")


def test_the_env_is_stored_in_step_with_its_period_however_late_the_commit_came():
    assert next_due(100.0, 10.0, 103.0) == 110.0  # a round that ran 3 s late does not shift the next store
    assert next_due(100.0, 10.0, 135.0) == 140.0  # after a silence: the next whole period on
    assert next_due(108.0, 10.0, 103.0) == 108.0  # stored before it was due (a first commit): the phase stays
    assert next_due(100.0, 0.0, 103.0) == 103.0  # ENV_CHECKPOINT_SECONDS=0: with every commit


def test_registered_hosts_store_their_env_every_ten_seconds_unless_told_otherwise():
    default = RuntimeConfig.from_env({})
    assert (default.env_checkpoint_seconds, default.host_env_checkpoint_seconds) == (1.0, 10.0)
    told = RuntimeConfig.from_env({"ENV_CHECKPOINT_SECONDS": "3"})
    assert (told.env_checkpoint_seconds, told.host_env_checkpoint_seconds) == (3.0, 3.0)
    assert RuntimeConfig.from_env({"RETENTION_SECONDS": "8"}).host_env_checkpoint_seconds == 4.0  # replayable
