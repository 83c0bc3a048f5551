"""The simulated population: reproducible, power-law, and exactly as dirty as asked."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from itertools import islice

import pytest

from standing.population import LiveSimulation, PopulationConfig, generate_events, power_law_edges, user_id, write_jsonl
from standing.reference import compute_reference, reference_file
from streams import events as ev
from streams.rules import load_rules

RULES = load_rules()


def _lines(config: PopulationConfig) -> list[str]:
    return [item if isinstance(item, str) else json.dumps(item) for item in generate_events(config, RULES)]


def test_same_seed_same_events_other_seed_other_events():
    config = PopulationConfig(users=200, events=2000, seed=5, duplicate_share=0.02, invalid_share=0.02)
    assert _lines(config) == _lines(config)
    assert _lines(config) != _lines(PopulationConfig(users=200, events=2000, seed=6, duplicate_share=0.02, invalid_share=0.02))


def test_a_clean_population_is_all_valid_with_the_asked_mix():
    config = PopulationConfig(users=300, events=6000, seed=1)
    items = list(generate_events(config, RULES))
    assert len(items) == 6000
    events = [ev.from_dict(item) for item in items]  # every one validates
    assert len({e.event_id for e in events}) == len(events)
    timestamps = [e.ts for e in events]
    assert timestamps == sorted(timestamps) and timestamps[0] >= config.start_ts
    initial = 300 * 10 // 2
    assert all(isinstance(e, ev.Friendship) and e.action == "add" for e in events[: initial - 100])
    kinds = Counter(type(e).__name__ if not isinstance(e, ev.Friendship) else e.action for e in events[initial:])
    assert kinds["Purchase"] > kinds["Post"] > kinds["add"] > kinds["remove"] > 0
    categories = Counter(e.category for e in events if isinstance(e, ev.Purchase))
    assert "gambling" in categories and "garden" in categories  # costly and unknown categories appear
    labels = Counter(label for e in events if isinstance(e, ev.Post) for label in e.labels)
    assert "spam" in labels and "meme" in labels
    weights = Counter(e.weight for e in events if isinstance(e, ev.Friendship) and e.action == "add")
    assert weights.most_common(1)[0][0] == 1.0 and len(weights) > 3
    assert user_id(123) == "u000123"


def test_degrees_are_heavy_tailed_with_the_asked_mean():
    edges = power_law_edges(5000, 10, random.Random(1))
    degree = Counter(node for edge in edges for node in edge)
    mean = 2 * len(edges) / 5000
    assert 9.5 <= mean <= 10.5
    assert max(degree.values()) > 8 * mean
    assert min(degree.values()) >= 5
    assert len({frozenset(edge) for edge in edges}) == len(edges) and all(a != b for a, b in edges)


def test_a_fractional_mean_degree_is_honoured():
    edges = power_law_edges(4000, 7, random.Random(2))
    assert 6.7 <= 2 * len(edges) / 4000 <= 7.3


def test_duplicates_and_invalid_lines_are_what_the_reference_counts():
    config = PopulationConfig(users=300, events=5000, seed=2, duplicate_share=0.05, invalid_share=0.03)
    items = list(generate_events(config, RULES))
    invalid = duplicates = 0
    seen: set[str] = set()
    for item in items:
        try:
            event = ev.from_dict(json.loads(item) if isinstance(item, str) else item)
        except (ev.Rejected, json.JSONDecodeError):
            invalid += 1
            continue
        duplicates += event.event_id in seen
        seen.add(event.event_id)
    summary = compute_reference([item if isinstance(item, str) else json.dumps(item) for item in items], RULES).summary
    assert summary.duplicates == duplicates > 50
    assert sum(summary.rejected.values()) == invalid > 50
    assert set(summary.rejected) == {"invalid_json", "bad_amount", "self_friendship", "unknown_action", "bad_weight", "empty_id", "missing_field", "unknown_type"}
    assert summary.accepted + summary.duplicates + invalid == len(items)


def test_write_jsonl_writes_what_the_reference_reads(tmp_path):
    config = PopulationConfig(users=100, events=1500, seed=4, invalid_share=0.02, duplicate_share=0.02)
    reports: list[int] = []
    path = tmp_path / "events.jsonl"
    assert write_jsonl(path, generate_events(config, RULES), progress=reports.append) == 1500
    assert reports == [1500]
    assert len(path.read_text().splitlines()) == 1500
    from_file = reference_file(path, RULES)
    from_memory = compute_reference(_lines(config), RULES)
    assert from_file.summary == from_memory.summary and from_file.raw == from_memory.raw
    assert len(from_file.raw) == 100


def test_streams_lazily():
    # A trillion events: only a generator can hand out the first ten.
    first = list(islice(generate_events(PopulationConfig(users=2000, events=10**12, seed=1, initial_graph=False), RULES), 10))
    assert [item["event_id"] for item in first] == [f"e1-{i}" for i in range(10)]


async def test_the_live_simulation_sends_the_graph_first_then_paced_events_stamped_now():
    config = PopulationConfig(users=50, mean_degree=4, events=10**9, seed=3)
    before = int(time.time() * 1000)
    stream = LiveSimulation(config, rate=1_000_000.0, rules=RULES)
    items = []
    async for item in stream:
        items.append(item)
        if len(items) == 400:
            break
    assert all(isinstance(item, dict) for item in items)
    assert all(item["ts"] >= before for item in items)
    graph = 90  # Barabási–Albert with m = 2 on 50 users: 97 edges
    assert all(item["type"] == "friendship" and item["action"] == "add" for item in items[:graph])
    assert {item["type"] for item in items[graph:]} >= {"purchase", "post"}
    with pytest.raises(ValueError, match="rate"):
        LiveSimulation(config, rate=0)


async def test_each_live_run_sends_new_event_ids_for_the_same_population():
    """A demo started again on the same data directory must not be all duplicates."""
    config = PopulationConfig(users=50, mean_degree=4, events=10**9, seed=3)

    async def first(run_id: str, n: int = 200) -> list[dict]:
        items = []
        async for item in LiveSimulation(config, rate=1_000_000.0, rules=RULES, run_id=run_id):
            items.append(item)
            if len(items) == n:
                return items

    one, two = await first("run1"), await first("run2")
    assert not {item["event_id"] for item in one} & {item["event_id"] for item in two}
    assert [(item["type"], item.get("user_a"), item.get("user_id")) for item in one] == [
        (item["type"], item.get("user_a"), item.get("user_id")) for item in two
    ]
    # Every id carries its run.
    ids = [item["event_id"] for item in one]
    assert all(event_id.startswith("run1:") for event_id in ids)
