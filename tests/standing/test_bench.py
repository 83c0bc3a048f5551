"""`standing bench`'s live-rate search, on a modelled worker (the search, not a measurement)."""

from __future__ import annotations

import pytest

from standing import bench


def _worker_whose_p99_passes_100ms_above(limit: float, producer_max: float = 1e9):
    def latency_at(worker, config, rate, seconds):
        offered = min(rate, producer_max)
        return {"latency_offered_events_per_s": offered, "latency_p50_s": 0.01, "latency_p99_s": 0.05 if offered <= limit else 0.5}

    return latency_at


@pytest.mark.parametrize(
    ("limit", "producer_max", "highest", "tried"),
    [
        (1500, 1e9, 1500, [250, 500, 1000, 2000, 1500]),  # doubles, then once between
        (300, 1e9, 250, [250, 500, 375]),
        (100, 1e9, 93.75, [250, 125, 62.5, 93.75]),  # halves until a rate holds, then once between
        (10, 1e9, None, [250, 125, 62.5]),  # none down to the floor (50/s)
        (1e9, 3000, 3000, [250, 500, 1000, 2000, 4000]),  # the producer, not the worker, is the limit
    ],
)
def test_the_search_finds_the_highest_rate_that_holds(monkeypatch, limit, producer_max, highest, tried):
    monkeypatch.setattr(bench, "_latency_at", _worker_whose_p99_passes_100ms_above(limit, producer_max))
    found, steps = bench._live_rates(None, None, 1.0)
    assert found == highest
    assert [step["latency_target_events_per_s"] for step in steps] == tried
