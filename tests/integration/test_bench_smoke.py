"""`standing bench` runs end to end at a toy size and prints every figure.

A smoke test only: no timing is asserted (figures live in `make bench`)."""

from __future__ import annotations

import json

import pytest

from standing.bench import run_bench


@pytest.mark.timeout(600)
def test_bench_runs_every_phase_and_writes_its_results(tmp_path, capsys):
    result = run_bench(users=200, events=1500, seed=3, partitions=4, out_dir=tmp_path, latency_seconds=3, celebrity_friends=100)
    figures = result["figures"]
    for name in (
        "scorer_events_per_s", "friend_updates_per_event", "kafka_messages_per_event", "users_held", "pairs_held",
        "state_encoded_bytes_per_user", "state_disk_bytes_per_user", "state_compacted_bytes_per_user",
        "state_compacted_bytes_per_pair", "worker_peak_rss_bytes", "recovery_to_ready_s",
        "latency_p50_s", "latency_p99_s", "celebrity_change_to_quiescence_s", "celebrity_first_hop_s", "raw_aiokafka_events_per_s",
        "plain_faust_events_per_s", "ratio_scorer_over_plain_faust",
    ):  # fmt: skip
        assert figures.get(name) is not None and figures[name] >= 0, (name, figures.get(name))
    assert figures["events"] > 1000 and figures["users_held"] > 100
    assert figures["celebrity_friends_republished"] == 100  # every direct friend's score moved, and was seen
    assert "live_highest_rate_p99_within_100ms" in figures and figures["live_250_offered_events_per_s"] > 0
    assert set(result["targets"]) and all(v in ("met", "missed", "not measured") for v in result["targets"].values())
    assert json.loads((tmp_path / "latest.json").read_text()) == result
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1
    printed = capsys.readouterr().out
    assert "scorer_events_per_s" in printed and "p99 <= 100 ms at half the highest live rate" in printed and "celebrity first hop <= 1 s" in printed
