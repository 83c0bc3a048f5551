"""The embedded broker's workarounds: when they are on, and the reaper's pure parts (where a member answers)."""

from dataclasses import replace

import pytest

from topology.settings import Settings
from streams.runtime.embedded_broker import PROCESS_TOKEN, client_id, liveness_url, parse_client_id, workarounds_enabled

IDENTITY = "/metrics?name[]=standing_worker_identity_info"


def test_liveness_url_comes_from_the_client_id_and_the_members_host():
    assert liveness_url("standing-metrics-9464", "/10.0.0.7") == "http://10.0.0.7:9464" + IDENTITY
    assert liveness_url("standing-metrics-9464-0a1b2c", "/::1") == "http://[::1]:9464" + IDENTITY


def test_the_client_id_carries_this_processs_token():
    assert parse_client_id(client_id(9464)) == (9464, PROCESS_TOKEN)
    assert parse_client_id("standing-metrics-9464") == (9464, None)  # a worker from before tokens


@pytest.mark.parametrize("client_id", ["faust-0.11", "standing-metrics-", "standing-metrics-x1", "standing-metrics-0", ""])
def test_members_without_a_liveness_port_are_never_probed(client_id):
    assert liveness_url(client_id, "/127.0.0.1") is None


def test_workarounds_are_on_for_a_loopback_broker_and_off_elsewhere_unless_asked():
    assert workarounds_enabled(replace(Settings(), broker="127.0.0.1:9092"))
    assert workarounds_enabled(replace(Settings(), broker="localhost:9092"))
    assert not workarounds_enabled(replace(Settings(), broker="kafka:9092"))
    assert not workarounds_enabled(replace(Settings(), broker="127.0.0.1:9092,kafka:9092"))
    assert workarounds_enabled(replace(Settings(), broker="kafka:9092", embedded_broker_workarounds=True))
    assert not workarounds_enabled(replace(Settings(), broker="127.0.0.1:9092", embedded_broker_workarounds=False))


def test_workarounds_setting_from_the_environment(monkeypatch):
    monkeypatch.setenv("STANDING_EMBEDDED_BROKER_WORKAROUNDS", "0")
    assert Settings.from_env().embedded_broker_workarounds is False
    monkeypatch.setenv("STANDING_EMBEDDED_BROKER_WORKAROUNDS", "auto")
    assert Settings.from_env().embedded_broker_workarounds is None
    monkeypatch.setenv("STANDING_EMBEDDED_BROKER_WORKAROUNDS", "maybe")
    with pytest.raises(ValueError, match="STANDING_EMBEDDED_BROKER_WORKAROUNDS"):
        Settings.from_env()


def test_worker_identity_is_stable_and_distinct_per_data_directory(tmp_path):
    one = replace(Settings(), data_dir=tmp_path / "a")
    assert one.group_instance_id == replace(Settings(), data_dir=tmp_path / "a").group_instance_id
    assert one.group_instance_id != replace(Settings(), data_dir=tmp_path / "b").group_instance_id
    assert replace(Settings(), worker_id="pod-3").group_instance_id == "standing-pod-3"
