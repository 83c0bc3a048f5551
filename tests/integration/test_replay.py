"""End to end through the real broker and a real worker process: `standing replay`
ends within epsilon/(1-alpha) of `standing reference` for every user."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from standing.population import PopulationConfig, generate_events, write_jsonl
from standing.reference import compare, read_scores, reference_file, write_scores
from standing.replay import replay
from streams.rules import load_rules

RULES = load_rules()


def _events_file(tmp_path: Path, config: PopulationConfig) -> Path:
    path = tmp_path / "events.jsonl"
    write_jsonl(path, generate_events(config, RULES))
    return path


def _check_against_reference(events: Path, scores: Path, summary: dict, rules=RULES) -> None:
    expected = reference_file(events, rules)
    actual = read_scores(scores)
    result = compare(actual, expected.raw)
    assert not result.missing_actual and not result.missing_expected, result
    assert result.max_abs_diff <= rules.error_bound, result
    assert summary == expected.summary.as_dict()


@pytest.mark.timeout(900)
def test_replay_of_20k_events_on_2000_power_law_users_matches_the_reference(fresh_settings, tmp_path):
    config = PopulationConfig(users=2000, events=20_000, seed=11, duplicate_share=0.02, invalid_share=0.01)
    events = _events_file(tmp_path, config)
    summary = replay(fresh_settings, events, tmp_path / "scores.jsonl", summary_path=tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["duplicates"] > 0 and summary["rejected"], "the file exercises duplicates and rejections"
    _check_against_reference(events, tmp_path / "scores.jsonl", summary)


def test_replay_with_custom_rules_and_the_command_line(fresh_settings, tmp_path):
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text(
        "[network]\nalpha = 0.6\nepsilon = 0.001\n[purchase]\ndefault_weight = 0.5\nmax_points = 20.0\n"
        "[purchase.weights]\ngroceries = 1.0\n[post.labels]\nspam = -3.0\n"
    )
    rules = load_rules(rules_path)
    lines = [
        {"type": "friendship", "event_id": "f1", "ts": 1, "user_a": "ann", "user_b": "bob", "action": "add"},
        {"type": "friendship", "event_id": "f2", "ts": 2, "user_a": "cid", "user_b": "bob", "action": "add", "weight": 3.0},
        {"type": "purchase", "event_id": "p1", "ts": 3, "user_id": "ann", "category": "groceries", "amount": 12.0},
        {"type": "purchase", "event_id": "p1", "ts": 3, "user_id": "ann", "category": "groceries", "amount": 12.0},
        {"type": "post", "event_id": "q1", "ts": 4, "user_id": "cid", "post_id": "x", "labels": ["spam", "spam"]},
        {"type": "friendship", "event_id": "f3", "ts": 5, "user_a": "bob", "user_b": "ann", "action": "add", "weight": 2.0},
        {"type": "friendship", "event_id": "f4", "ts": 6, "user_a": "bob", "user_b": "cid", "action": "remove"},
        {"type": "friendship", "event_id": "f5", "ts": 7, "user_a": "dan", "user_b": "eve", "action": "remove"},
        {"type": "purchase", "event_id": "bad", "ts": 8, "user_id": "ann", "category": "x", "amount": -1},
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n")
    out = tmp_path / "scores.jsonl"
    command = [
        sys.executable, "-m", "standing", "replay", str(events), "--out", str(out),
        "--rules", str(rules_path), "--summary", str(tmp_path / "summary.json"),
        "--broker", fresh_settings.broker, "--partitions", str(fresh_settings.partitions),
        "--app-id", fresh_settings.app_id,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"accepted": 7, "duplicates": 1, "rejected": {"bad_amount": 1, "invalid_json": 1}}
    _check_against_reference(events, out, summary, rules)
    scores = read_scores(out)
    assert set(scores) == {"ann", "bob", "cid"}  # dan and eve were never friends

    reference_out = tmp_path / "reference.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "standing", "reference", str(events), "--rules", str(rules_path), "--out", str(reference_out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = reference_file(events, rules)
    write_scores(tmp_path / "again.jsonl", expected.raw, rules)
    assert reference_out.read_text() == (tmp_path / "again.jsonl").read_text()

    # The README's example consumer, reading the compacted scores topic with
    # aiokafka + fastavro only, sees the same current scores as `dump`.
    from examples.consume_scores import latest_scores

    consumed = asyncio.run(latest_scores(fresh_settings.broker, idle_ms=1500))
    assert {user: record["raw"] for user, record in consumed.items()} == scores
