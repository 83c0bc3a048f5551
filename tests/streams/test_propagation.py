"""Property: the incremental, distributed algorithm ends within epsilon/(1-alpha)
of the batch fixed point, whatever the events and the delivery order.

Random event sequences on small random graphs — adds, re-weights, removes,
duplicates, purchases, posts, bad lines — are run through the batch functions
the worker runs (``streams.local``: in-memory partitions served in random
order, records delivered twice at random, restarts that lose what waits in
memory), with friend updates applied as they come or kept waiting and
coalesced as the worker keeps them, and compared with `standing reference`'s
independent scipy solution.
"""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from standing.reference import compute_reference
from streams.local import LocalPipeline
from streams.rules import load_rules


class RandomSlice:
    """Each batch applies a random number of waiting receivers (0 to 4), one at a time."""

    chunk = 1

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def deadline(self, own_events, own_events_s):
        receivers = self._rng.randint(0, 4)
        return lambda taken: taken.receivers >= receivers

    def observe_finish(self, seconds, states):
        pass


def simulate(lines, rules, *, seed, partitions=3, duplicate_p=0.02, max_batch=8, waiting=False, restart_p=0.0, crash_p=0.0):
    rng = random.Random(seed)
    pipeline = LocalPipeline(
        rules, partitions=partitions, rng=rng, max_batch=max_batch, duplicate_p=duplicate_p, restart_p=restart_p, crash_p=crash_p,
        **({"propagation": RandomSlice(rng)} if waiting else {}),
    )  # fmt: skip
    rejected = pipeline.produce_lines(lines)
    pipeline.run()
    return pipeline, rejected

RULES = load_rules()
CATEGORIES = sorted(RULES.purchase_weights) + ["unlisted"]
LABELS = sorted(RULES.post_labels) + ["unknown-label"]


@st.composite
def event_files(draw) -> list[str]:
    users = [f"u{i}" for i in range(draw(st.integers(2, 9)))]
    count = draw(st.integers(1, 60))
    lines: list[str] = []
    for i in range(count):
        kind = draw(st.sampled_from(["purchase", "post", "add", "add", "remove", "duplicate", "bad"]))
        event_id = f"e{i}"
        if kind == "purchase":
            event = {
                "type": "purchase",
                "event_id": event_id,
                "ts": i,
                "user_id": draw(st.sampled_from(users)),
                "category": draw(st.sampled_from(CATEGORIES)),
                "amount": draw(st.floats(0, 1000, allow_nan=False)),
            }
        elif kind == "post":
            event = {
                "type": "post",
                "event_id": event_id,
                "ts": i,
                "user_id": draw(st.sampled_from(users)),
                "post_id": f"p{i}",
                "labels": draw(st.lists(st.sampled_from(LABELS), max_size=3)),
            }
        elif kind in ("add", "remove"):
            a, b = draw(st.lists(st.sampled_from(users), min_size=2, max_size=2, unique=True))
            event = {"type": "friendship", "event_id": event_id, "ts": i, "user_a": a, "user_b": b, "action": kind}
            if kind == "add":
                event["weight"] = draw(st.sampled_from([0.5, 1.0, 2.0, 3.0]))
        elif kind == "duplicate" and lines:
            lines.append(draw(st.sampled_from(lines)))
            continue
        else:
            lines.append(draw(st.sampled_from(['{"type": "purchase"', '{"type": "friendship", "event_id": "x", "ts": 1, "user_a": "u0", "user_b": "u0", "action": "add"}'])))
            continue
        lines.append(json.dumps(event))
    return lines


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=event_files(), seed=st.integers(0, 2**32 - 1), partitions=st.integers(1, 4), waiting=st.booleans())
def test_incremental_scores_end_within_the_bound_of_the_fixed_point(lines, seed, partitions, waiting):
    expected = compute_reference(lines, RULES)
    pipeline, rejected = simulate(lines, RULES, seed=seed, partitions=partitions, duplicate_p=0.1, waiting=waiting, restart_p=0.05, crash_p=0.03)
    published = pipeline.raw_scores()
    assert set(published) == set(expected.raw), "the same users are scored"
    bound = RULES.error_bound
    for user, raw in expected.raw.items():
        assert abs(published[user] - raw) <= bound + 1e-9, (user, published[user], raw)
    assert rejected == expected.summary.rejected


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), waiting=st.booleans())
def test_a_larger_power_law_population_converges_within_the_bound(seed, waiting):
    from standing.population import PopulationConfig, generate_events

    config = PopulationConfig(users=60, events=600, seed=seed % 1000, mean_degree=6, duplicate_share=0.05, invalid_share=0.02)
    lines = [item if isinstance(item, str) else json.dumps(item) for item in generate_events(config, RULES)]
    expected = compute_reference(lines, RULES)
    pipeline, _ = simulate(lines, RULES, seed=seed, partitions=3, duplicate_p=0.02, max_batch=32, waiting=waiting, restart_p=0.02, crash_p=0.02)
    published = pipeline.raw_scores()
    assert set(published) == set(expected.raw)
    worst = max(abs(published[u] - raw) for u, raw in expected.raw.items())
    assert worst <= RULES.error_bound + 1e-9
