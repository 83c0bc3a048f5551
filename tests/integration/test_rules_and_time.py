"""Rules and time end to end (spec sections 7 and 8), with the commands an operator runs.

A three-year stream with decay and a maximum age; `standing dump` equals
`standing reference` at the stream time. Then `standing rules publish` of
other weights, alpha, half-life and a shorter maximum age, `standing wait`,
and the dump equals the reference with the new rules on the same events;
every line names its rules version. Two workers score with one version; a
worker started with another file refuses to start.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from standing import processes
from standing.population import PopulationConfig, generate_events
from standing.reference import compare, read_scores, reference_file
from streams.rules import load_rules
from tests.helpers import free_port

DAY = 24 * 3600 * 1000
START = 1_672_531_200_000  # 2023-01-01

FIRST = """
[network]
alpha = 0.3
epsilon = 0.005
[time]
half_life_days = 180
max_age_days = 900
[purchase.weights]
groceries = 0.1
gambling = -0.2
utilities = 0.1
[post.labels]
helpful = 2.0
spam = -5.0
"""
SECOND = """
[network]
alpha = 0.45
epsilon = 0.003
[time]
half_life_days = 120
max_age_days = 500
[purchase.weights]
groceries = 0.2
gambling = -0.4
books = 0.1
[post.labels]
helpful = 1.5
spam = -6.0
"""


def _events(tmp_path: Path) -> Path:
    """A population's events spread over three years (the generator's order, times not in file order)."""
    rng = random.Random(3)
    lines = []
    for event in generate_events(PopulationConfig(users=300, events=4000, seed=31), load_rules()):
        if isinstance(event, dict):
            event["ts"] = START + rng.randrange(3 * 365 * DAY)
            lines.append(json.dumps(event))
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "standing", *args], capture_output=True, text=True, timeout=timeout)


def _dump_equals_reference(common, events: Path, rules, out: Path) -> set[str]:
    done = _run("wait", "--timeout", "300", *common)
    assert done.returncode == 0, done.stderr
    done = _run("dump", "--out", str(out), *common)
    assert done.returncode == 0, done.stderr
    expected = reference_file(events, rules)
    result = compare(read_scores(out), expected.raw)
    versions = {json.loads(line)["rules_version"] for line in out.read_text().splitlines()}
    assert result.within(rules.error_bound), (result, versions)
    return versions


@pytest.mark.timeout(900)
def test_a_three_year_stream_then_a_rules_change_both_end_at_the_reference(fresh_settings, tmp_path):
    first_path, second_path = tmp_path / "first.toml", tmp_path / "second.toml"
    first_path.write_text(FIRST)
    second_path.write_text(SECOND)
    first, second = load_rules(first_path), load_rules(second_path)
    events = _events(tmp_path)
    common = ["--broker", fresh_settings.broker, "--partitions", str(fresh_settings.partitions), "--app-id", fresh_settings.app_id]
    workers = []
    try:
        log_path = tmp_path / "worker-0.log"
        workers.append(processes.start_worker_process(fresh_settings, log_path=log_path, rules_path=first_path))
        processes.wait_for_metrics(fresh_settings.metrics_port, workers[0], log_path=log_path)
        done = _run("produce", str(events), *common)
        assert done.returncode == 0, done.stderr

        assert _dump_equals_reference(common, events, first, tmp_path / "first.jsonl") == {first.version}

        # A second worker started with the same file joins and scores with the same version.
        second_settings = fresh_settings.with_overrides(data_dir=tmp_path / "worker-1", web_port=free_port(), metrics_port=free_port())
        log_path = tmp_path / "worker-1.log"
        workers.append(processes.start_worker_process(second_settings, log_path=log_path, rules_path=first_path))
        processes.wait_for_metrics(second_settings.metrics_port, workers[1], log_path=log_path)

        # A worker with another file refuses to start, naming both versions.
        other = fresh_settings.with_overrides(data_dir=tmp_path / "worker-x", web_port=free_port(), metrics_port=free_port())
        refused = processes.start_worker_process(other, log_path=tmp_path / "refused.log", rules_path=second_path)
        assert refused.wait(timeout=120) == 2
        said = (tmp_path / "refused.log").read_text()
        assert first.version in said and second.version in said and "standing rules publish" in said

        done = _run("rules", "publish", str(second_path), *common)
        assert done.returncode == 0, done.stderr
        assert second.version in done.stdout
        # A worker killed while it rescores comes back: what it re-sends (estimates valid at their as_of,
        # not at the wall clock) must not move anyone's stream time.
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        log_path = tmp_path / "worker-0-again.log"
        workers[0] = processes.start_worker_process(fresh_settings, log_path=log_path, rules_path=first_path)
        assert workers[0].wait(timeout=60) == 2, "its --rules are no longer the rules in force"
        workers[0] = processes.start_worker_process(fresh_settings, log_path=log_path)  # without --rules: the rules in force
        processes.wait_for_metrics(fresh_settings.metrics_port, workers[0], log_path=log_path)
        versions = _dump_equals_reference(common, events, second, tmp_path / "second.jsonl")
        assert versions == {second.version} and second.version != first.version

        shown = _run("rules", "show", *common)
        assert shown.returncode == 0 and "epoch 1" in shown.stdout and "epoch 0" in shown.stdout
        assert shown.stdout.index(second.version) < shown.stdout.index(first.version), "the rules in force first"
    finally:
        for worker in workers:
            processes.stop_process(worker)
