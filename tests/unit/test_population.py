"""The simulated population: reproducible, power-law, and as dirty as asked."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice

from standing.population import PopulationConfig, generate_events, power_law_edges
from standing.reference import compute_reference
from streams.rules import load_rules


def _lines(config):
    return [item if isinstance(item, str) else json.dumps(item) for item in generate_events(config)]


def test_same_seed_same_events_other_seed_other_events():
    config = PopulationConfig(users=200, events=2000, seed=5)
    assert _lines(config) == _lines(config)
    assert _lines(config) != _lines(PopulationConfig(users=200, events=2000, seed=6))


def test_degrees_are_heavy_tailed_with_the_asked_mean():
    import random

    edges = power_law_edges(5000, 10, random.Random(1))
    degree = Counter(node for edge in edges for node in edge)
    mean = 2 * len(edges) / 5000
    assert 9 <= mean <= 11
    assert max(degree.values()) > 8 * mean
    assert len(set(edges)) == len(edges) and all(a != b for a, b in edges)


def test_duplicates_and_invalid_lines_are_what_the_reference_counts():
    config = PopulationConfig(users=300, events=5000, seed=2, duplicate_share=0.05, invalid_share=0.03)
    summary = compute_reference(_lines(config), load_rules()).summary
    assert summary.duplicates > 50
    assert sum(summary.rejected.values()) > 50
    assert len(summary.rejected) >= 5


def test_streams_lazily():
    first = list(islice(generate_events(PopulationConfig(users=100_000, events=10**9, seed=1)), 10))
    assert len(first) == 10
