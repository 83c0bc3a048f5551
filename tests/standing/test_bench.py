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


def test_a_histogram_is_summed_over_its_series_or_read_for_one_lane():
    """The latency histogram has a series per lane: the bench sums them (as ``sum by (le)``) or takes one."""

    def samples(user: list[float], pair: list[float]) -> dict:
        out = {}
        for lane, counts in (("user", user), ("pair", pair)):
            for bound, count in zip(("0.05", "0.1", "+Inf"), counts):
                out[("standing_event_to_score_seconds_bucket", (("lane", lane), ("le", bound)))] = count
        return out

    before = samples([0, 0, 0], [0, 0, 0])
    after = samples([98, 100, 100], [0, 50, 100])
    both = bench.histogram_buckets(after, "standing_event_to_score_seconds")
    assert both == [(0.05, 98), (0.1, 150), (float("inf"), 200)]
    user = bench.histogram_buckets(after, "standing_event_to_score_seconds", lane="user")
    pair = bench.histogram_buckets(after, "standing_event_to_score_seconds", lane="pair")
    empty = bench.histogram_buckets(before, "standing_event_to_score_seconds", lane="user")
    assert bench.histogram_quantile(0.5, empty, user) == pytest.approx(0.05 * 50 / 98)
    assert bench.histogram_quantile(0.99, empty, pair) == 0.1  # past the last finite bound: that bound
    # both lanes: the 100th of 200 is the 2nd of the 52 in (0.05, 0.1]
    assert bench.histogram_quantile(0.5, bench.histogram_buckets(before, "standing_event_to_score_seconds"), both) == pytest.approx(
        0.05 + 0.05 * 2 / 52
    )
