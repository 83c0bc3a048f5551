"""Time and rule changes (spec sections 7 and 8) against the batch reference.

Decay and the maximum age work in event time, so the scores a worker ends
with equal the reference's at the stream time, whatever the delivery order;
and after a rules change every user is rescored from the events they hold,
ending where the reference ends with the new rules on the same events.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from standing.reference import compute_reference
from streams.local import LocalPipeline
from streams.rules import load_rules

DAY = 24 * 3600 * 1000
START = 1_672_531_200_000  # 2023-01-01
YEARS_3 = 3 * 365 * DAY


def _rules(text: str):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "rules.toml"
        path.write_text(text)
        return load_rules(path)


DECAY = _rules("[network]\nalpha = 0.35\nepsilon = 0.005\n[time]\nhalf_life_days = 180\nmax_age_days = 700\n[purchase.weights]\ngroceries = 0.1\ngambling = -0.2\n[post.labels]\nhelpful = 2.0\nspam = -5.0\n")
CHANGED = _rules('[network]\nalpha = 0.5\nepsilon = 0.002\nmode = "lift_only"\n[time]\nhalf_life_days = 90\nmax_age_days = 400\n[purchase.weights]\ngroceries = 0.3\ngambling = -0.5\nbooks = 0.2\n[post.labels]\nhelpful = 1.0\nspam = -8.0\n')
PLAIN = load_rules()
DECAY_ONLY = _rules("[network]\nalpha = 0.35\nepsilon = 0.005\n[time]\nhalf_life_days = 30\n[purchase.weights]\ngroceries = 0.1\n[post.labels]\nhelpful = 2.0\nspam = -5.0\n")


@st.composite
def event_files(draw) -> list[str]:
    users = [f"u{i}" for i in range(draw(st.integers(2, 7)))]
    lines = []
    for i in range(draw(st.integers(1, 50))):
        ts = START + draw(st.integers(0, YEARS_3))  # over three years, not in file order
        kind = draw(st.sampled_from(["purchase", "purchase", "post", "add", "add", "remove", "retract", "erase"]))
        user = draw(st.sampled_from(users))
        if kind == "purchase":
            event = {"type": "purchase", "event_id": f"e{i}", "ts": ts, "user_id": user, "category": draw(st.sampled_from(["groceries", "gambling", "books"])), "amount": float(draw(st.integers(0, 300)))}
        elif kind == "post":
            event = {"type": "post", "event_id": f"e{i}", "ts": ts, "user_id": user, "post_id": f"p{i}", "labels": draw(st.lists(st.sampled_from(["helpful", "spam"]), max_size=2))}
        elif kind in ("add", "remove"):
            a, b = draw(st.lists(st.sampled_from(users), min_size=2, max_size=2, unique=True))
            event = {"type": "friendship", "event_id": f"e{i}", "ts": ts, "user_a": a, "user_b": b, "action": kind, "weight": 1.0}
        elif kind == "retract":
            event = {"type": "retraction", "event_id": f"e{i}", "ts": ts, "user_id": user, "retracts": f"e{draw(st.integers(0, i))}"}
        else:
            event = {"type": "erasure", "event_id": f"e{i}", "ts": ts, "user_id": user}
        lines.append(json.dumps(event))
    return lines


def _assert_like_the_reference(pipeline: LocalPipeline, lines, rules, as_of=None):
    expected = compute_reference(lines, rules, as_of=as_of)
    scores = pipeline.raw_scores(as_of=expected.stream_time)
    assert set(scores) == set(expected.raw)
    for user, raw in expected.raw.items():
        assert abs(scores[user] - raw) <= rules.error_bound + 1e-9, (user, scores[user], raw)


def _pipeline(rules, seed, partitions):
    return LocalPipeline(rules, partitions=partitions, rng=random.Random(seed), max_batch=6, duplicate_p=0.05, restart_p=0.03, crash_p=0.03)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=event_files(), seed=st.integers(0, 2**32 - 1), partitions=st.integers(1, 4))
def test_decay_and_the_maximum_age_end_where_the_reference_does_at_the_stream_time(lines, seed, partitions):
    pipeline = _pipeline(DECAY, seed, partitions)
    pipeline.produce_lines(lines)
    pipeline.run()
    _assert_like_the_reference(pipeline, lines, DECAY)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=event_files(), seed=st.integers(0, 2**32 - 1), partitions=st.integers(1, 4), days=st.integers(0, 2000))
def test_decay_needs_no_work_the_scores_at_a_later_time_are_the_references_then(lines, seed, partitions, days):
    """Without a maximum age nothing happens between the stream time and a later time but decay (dump --as-of)."""
    pipeline = _pipeline(DECAY_ONLY, seed, partitions)
    pipeline.produce_lines(lines)
    pipeline.run()
    later = compute_reference(lines, DECAY_ONLY).stream_time + days * DAY
    _assert_like_the_reference(pipeline, lines, DECAY_ONLY, as_of=later)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=event_files(), seed=st.integers(0, 2**32 - 1), partitions=st.integers(1, 4), cut=st.floats(0, 1))
def test_a_rules_change_rescores_everyone_to_the_reference_with_the_new_rules(lines, seed, partitions, cut):
    """Alpha, epsilon, mode, weights, half-life and a shorter maximum age all change, mid-stream."""
    pipeline = _pipeline(DECAY, seed, partitions)
    first = lines[: int(len(lines) * cut)]
    pipeline.produce_lines(first)
    for _ in range(pipeline.rng.randint(0, 20)):  # part of it processed, maybe all, maybe none
        if pipeline.idle():
            break
        pipeline.step()
    pipeline.publish_rules(CHANGED)
    pipeline.produce_lines(lines[len(first) :])
    pipeline.run()
    _assert_like_the_reference(pipeline, lines, CHANGED)


def test_without_time_rules_nothing_decays_or_expires():
    lines = [
        json.dumps({"type": "purchase", "event_id": "old", "ts": START, "user_id": "ann", "category": "groceries", "amount": 100.0}),
        json.dumps({"type": "purchase", "event_id": "new", "ts": START + 10 * 365 * DAY, "user_id": "bob", "category": "groceries", "amount": 10.0}),
    ]
    pipeline = LocalPipeline(PLAIN, partitions=2)
    pipeline.produce_lines(lines)
    pipeline.run()
    assert pipeline.raw_scores() == {"ann": 10.0, "bob": 1.0}


def test_an_event_older_than_the_maximum_age_when_it_arrives_counts_nothing_but_names_its_user():
    lines = [
        json.dumps({"type": "purchase", "event_id": "now", "ts": START + 1000 * DAY, "user_id": "ann", "category": "groceries", "amount": 10.0}),
        json.dumps({"type": "purchase", "event_id": "ancient", "ts": START, "user_id": "bob", "category": "groceries", "amount": 100.0}),
    ]
    pipeline = LocalPipeline(DECAY, partitions=1)
    pipeline.produce_lines(lines)
    pipeline.run()
    assert pipeline.raw_scores() == {"ann": 1.0, "bob": 0.0}
    _assert_like_the_reference(pipeline, lines, DECAY)


def test_an_expiry_made_stale_by_an_erasure_does_not_hide_the_next_one():
    """The erased purchase's expiry comes due and finds nothing to expire; the post after it must still expire."""
    max_age = 400 * DAY
    lines = [
        json.dumps({"type": "purchase", "event_id": "old", "ts": START, "user_id": "ann", "category": "groceries", "amount": 10.0}),
        json.dumps({"type": "erasure", "event_id": "gone", "ts": START, "user_id": "ann"}),
        json.dumps({"type": "post", "event_id": "later", "ts": START + max_age, "user_id": "ann", "post_id": "p", "labels": ["helpful"]}),
        json.dumps({"type": "purchase", "event_id": "much-later", "ts": START + 2 * max_age, "user_id": "ann", "category": "groceries", "amount": 0.0}),
    ]
    pipeline = LocalPipeline(CHANGED, partitions=1)
    for part in (lines[:2], lines[2:3], lines[3:]):  # the purchase erased; the post, as its expiry comes due; later
        pipeline.produce_lines(part)
        pipeline.run()
    assert pipeline.raw_scores() == {"ann": 0.0}
    _assert_like_the_reference(pipeline, lines, CHANGED)


def test_the_history_is_stamped_in_event_time_so_a_replay_stamps_the_same_points():
    """Each point of a user's history carries the event time its score is valid at, not the wall clock."""
    lines = [
        json.dumps({"type": "purchase", "event_id": "a", "ts": START, "user_id": "ann", "category": "groceries", "amount": 100.0}),
        json.dumps({"type": "purchase", "event_id": "b", "ts": START + 30 * DAY, "user_id": "ann", "category": "groceries", "amount": 50.0}),
    ]
    histories = []
    for wall_clock in (1, 10**13):
        pipeline = LocalPipeline(DECAY_ONLY, partitions=1, now_ms=lambda wall_clock=wall_clock: wall_clock)
        for line in lines:  # one batch each: two scores
            pipeline.produce_lines([line])
            pipeline.run()
        [state] = [state for _, user, state in pipeline.users.all() if user == "ann"]
        histories.append(state.history)
    assert histories[0] == histories[1]
    assert [ts for ts, _ in histories[0]] == [START, START + 30 * DAY]
    assert histories[0][0][1] == 10.0 and abs(histories[0][1][1] - (10.0 / 2 + 5.0)) < 1e-9  # a half-life later: half, plus the new
