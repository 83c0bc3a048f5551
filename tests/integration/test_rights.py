"""People's rights end to end (spec sections 9 and 10): a real worker on the real broker, `standing produce`,
`dump`, the API and `export`, against `standing reference`."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from standing import processes
from standing.control import wait_until_quiescent
from standing.population import PopulationConfig, generate_events
from standing.reference import compare, read_scores, reference_file
from streams.rules import load_rules

LIFT_RULES = """
[network]
alpha = 0.4
epsilon = 0.005
mode = "lift_only"

[purchase.weights]
groceries = 0.1
gambling = -0.2
payday_loan = -0.3

[post.labels]
helpful = 2.0
spam = -5.0
"""


def _events(tmp_path: Path, rules) -> tuple[Path, dict]:
    """A population's events with retractions and erasures of every kind mixed in."""
    rng = random.Random(7)
    base = [e for e in generate_events(PopulationConfig(users=300, events=3000, seed=9), rules) if isinstance(e, dict)]
    own = [(e["user_id"], e["event_id"], e["ts"]) for e in base if e["type"] in ("purchase", "post")]
    friendships = [e for e in base if e["type"] == "friendship"]
    users = sorted({u for u, _, _ in own})
    ts_max = max(e["ts"] for e in base)
    extra: list[tuple[int, dict]] = []  # (position in the file, event)
    plan = {"retracted_before": [], "retracted_after": [], "erased": [], "back": [], "late_friendship": []}
    for n, (user, event_id, ts) in enumerate(rng.sample(own, 40)):
        retraction = {"type": "retraction", "event_id": f"r{n}", "ts": ts + 1, "user_id": user, "retracts": event_id, "reason": "dispute upheld"}
        position = next(i for i, e in enumerate(base) if e["event_id"] == event_id)
        if n % 2:
            extra.append((position + rng.randint(1, 200), retraction))  # after its event
            plan["retracted_after"].append(event_id)
        else:
            extra.append((max(0, position - rng.randint(1, 200)), retraction))  # before it arrives
            plan["retracted_before"].append(event_id)
    other = rng.choice(own)
    extra.append((len(base), {"type": "retraction", "event_id": "r-other", "ts": ts_max, "user_id": users[0] if users[0] != other[0] else users[1], "retracts": other[1], "reason": "not theirs"}))
    extra.append((len(base), {"type": "retraction", "event_id": "r-friendship", "ts": ts_max, "user_id": friendships[0]["user_a"], "retracts": friendships[0]["event_id"], "reason": "x"}))
    extra.append((len(base), {"type": "retraction", "event_id": "r-unknown", "ts": ts_max, "user_id": users[2], "retracts": "no-such-event", "reason": "x"}))
    for n, user in enumerate(rng.sample(users, 12)):
        # most forget everything so far; some only what came before a time within the stream
        erase_ts = ts_max if n % 4 else ts_max - rng.randint(0, (ts_max - min(e["ts"] for e in base)) // 2)
        extra.append((rng.randint(len(base) // 2, len(base)), {"type": "erasure", "event_id": f"x{n}", "ts": erase_ts, "user_id": user}))
        plan["erased"].append(user)
        if n % 3 == 0:  # comes back: events after the erasure's time
            extra.append((len(base) + 1, {"type": "purchase", "event_id": f"back{n}", "ts": ts_max + 10, "user_id": user, "category": "groceries", "amount": 50.0}))
            plan["back"].append(user)
        if n % 3 == 1:  # a friendship stamped before the erasure, processed after it
            friend = rng.choice([u for u in users if u != user])
            extra.append((len(base) + 2, {"type": "friendship", "event_id": f"late{n}", "ts": erase_ts - 5, "user_a": user, "user_b": friend, "action": "add", "weight": 2.0}))
            plan["late_friendship"].append((user, friend))
    lines = list(base)
    for position, event in sorted(extra, key=lambda item: item[0], reverse=True):
        lines.insert(min(position, len(lines)), event)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path, plan


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.timeout(900)
def test_retractions_erasures_and_lift_only_end_like_the_reference(fresh_settings, tmp_path):
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text(LIFT_RULES)
    rules = load_rules(rules_path)
    events, plan = _events(tmp_path, rules)
    log_path = tmp_path / "worker.log"
    worker = processes.start_worker_process(fresh_settings, log_path=log_path, rules_path=rules_path)
    try:
        processes.wait_for_metrics(fresh_settings.metrics_port, worker, log_path=log_path)
        common = ["--broker", fresh_settings.broker, "--partitions", str(fresh_settings.partitions), "--app-id", fresh_settings.app_id]
        done = subprocess.run([sys.executable, "-m", "standing", "produce", str(events), *common], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        asyncio.run(wait_until_quiescent(fresh_settings, timeout=300, progress=None))
        out = tmp_path / "scores.jsonl"
        done = subprocess.run([sys.executable, "-m", "standing", "dump", "--out", str(out), *common], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

        expected = reference_file(events, rules)
        result = compare(read_scores(out), expected.raw)
        assert result.within(rules.error_bound), result

        api = f"http://{fresh_settings.web_host}:{fresh_settings.web_port}/users/"
        gone = [user for user in plan["erased"] if user not in expected.raw]
        assert gone and set(plan["back"]) <= set(expected.raw), "some erased users stay gone, those who came back are there"
        for user in gone:
            assert user not in read_scores(out)
            assert _get(api + user)[0] == 404 and _get(api + user + "/export")[0] == 404
        for user, friend in plan["late_friendship"]:
            if user in expected.raw:
                status, held = _get(api + user + "/export")
                assert status == 200 and friend not in [f["user_id"] for f in held["friendships"]]

        everyone = sorted(expected.raw)
        for user in everyone:
            status, explanation = _get(api + user)
            assert status == 200, (user, explanation)
            others = [other for other in everyone if other != user and other in json.dumps(explanation)]
            assert not others, f"{user}'s explanation names {others}"
        for user in [u for u in everyone if u in expected.held][:60]:
            status, held = _get(api + user + "/export")
            assert status == 200
            assert {e["event_id"]: e["counts"] for e in held["events"]} == expected.held[user], user
            assert all("score" not in friendship for friendship in held["friendships"])
        cli = subprocess.run(
            [sys.executable, "-m", "standing", "export", everyone[0], "--api", api[: -len("/users/")]], capture_output=True, text=True, timeout=60
        )
        assert cli.returncode == 0 and json.loads(cli.stdout)["user_id"] == everyone[0]
        assert processes.sum_samples(processes.scrape_metrics(fresh_settings.metrics_port), "standing_events_accepted_total", type="erasure") == len(plan["erased"])
    finally:
        processes.stop_process(worker)
