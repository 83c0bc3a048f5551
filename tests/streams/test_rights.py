"""Properties of people's rights (spec sections 9 and 10) against the batch reference.

Random files of purchases, posts, friendships, retractions (of the user's own
events before and after they arrive, of other users' events, of friendships,
of unknown ids) and erasures (with times before events already processed, and
friendships stamped before an erasure but processed after it), run through the
worker's batch functions in random delivery orders with duplicates and
restarts (streams.local), end where `standing reference` says: the same users,
every score within the bound, in "blend" and in "lift_only".
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from standing.reference import compute_reference
from streams import events as ev
from streams import scoring
from streams.local import LocalPipeline
from streams.state_codec import extra_of
from streams.rules import load_rules

BLEND = load_rules()


def _rules(text: str):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "rules.toml"
        path.write_text(text)
        return load_rules(path)


LIFT = _rules('[network]\nalpha = 0.5\nepsilon = 0.005\nmode = "lift_only"\n[purchase.weights]\ngroceries = 0.1\ngambling = -0.2\n[post.labels]\nhelpful = 2.0\nspam = -5.0\n')
CATEGORIES = ["groceries", "gambling", "unlisted"]
LABELS = ["helpful", "spam", "unknown-label"]


@st.composite
def event_files(draw) -> list[str]:
    users = [f"u{i}" for i in range(draw(st.integers(2, 7)))]
    count = draw(st.integers(1, 70))
    lines: list[dict] = []
    ids: list[tuple[str, str]] = []  # (user, event_id) of purchases and posts
    for i in range(count):
        kind = draw(st.sampled_from(["purchase", "purchase", "post", "add", "add", "remove", "retract", "retract", "erase", "duplicate"]))
        ts = draw(st.integers(0, 100))  # event times not in file order: late and early events both
        user = draw(st.sampled_from(users))
        event_id = f"e{i}"
        if kind == "purchase":
            event = {"type": "purchase", "event_id": event_id, "ts": ts, "user_id": user, "category": draw(st.sampled_from(CATEGORIES)), "amount": float(draw(st.integers(0, 200)))}
            ids.append((user, event_id))
        elif kind == "post":
            event = {"type": "post", "event_id": event_id, "ts": ts, "user_id": user, "post_id": f"p{i}", "labels": draw(st.lists(st.sampled_from(LABELS), max_size=2))}
            ids.append((user, event_id))
        elif kind in ("add", "remove"):
            a, b = draw(st.lists(st.sampled_from(users), min_size=2, max_size=2, unique=True))
            event = {"type": "friendship", "event_id": event_id, "ts": ts, "user_a": a, "user_b": b, "action": kind}
            if kind == "add":
                event["weight"] = draw(st.sampled_from([0.5, 1.0, 2.0]))
        elif kind == "retract":
            # mostly the user's own events (held already, or still to come), sometimes anything else
            choice = draw(st.sampled_from(["own", "own", "later", "other", "unknown", "friendship"]))
            own = [eid for u, eid in ids if u == user]
            if choice == "own" and own:
                retracts = draw(st.sampled_from(own))
            elif choice == "later":
                retracts = f"e{i + draw(st.integers(1, 5))}"  # an event of this file yet to come (any user's)
            elif choice == "other" and ids:
                retracts = draw(st.sampled_from(ids))[1]
            elif choice == "friendship":
                retracts = f"e{draw(st.integers(0, i))}"
            else:
                retracts = f"unknown-{i}"
            event = {"type": "retraction", "event_id": event_id, "ts": ts, "user_id": user, "retracts": retracts, "reason": "dispute"}
        elif kind == "erase":
            event = {"type": "erasure", "event_id": event_id, "ts": ts, "user_id": user}
        elif lines:
            event = draw(st.sampled_from(lines))
        else:
            continue
        lines.append(event)
    return [json.dumps(line) for line in lines]


def _run(lines, rules, seed: int, partitions: int):
    pipeline = LocalPipeline(rules, partitions=partitions, rng=random.Random(seed), max_batch=6, duplicate_p=0.1, restart_p=0.05, crash_p=0.03)
    pipeline.produce_lines(lines)
    pipeline.run()
    return pipeline


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=event_files(), seed=st.integers(0, 2**32 - 1), partitions=st.integers(1, 4), lift=st.booleans())
def test_retractions_and_erasures_end_where_the_reference_does(lines, seed, partitions, lift):
    rules = LIFT if lift else BLEND
    expected = compute_reference(lines, rules)
    pipeline = _run(lines, rules, seed, partitions)
    scores = pipeline.raw_scores()
    assert set(scores) == set(expected.raw), "the same users: erased ones absent, ones named after an erasure present"
    for user, raw in expected.raw.items():
        assert abs(scores[user] - raw) <= rules.error_bound + 1e-9, (user, scores[user], raw)


def _scored(events: list[dict], rules=BLEND, partitions: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    lines = [json.dumps(event) for event in events]
    pipeline = _run(lines, rules, seed=1, partitions=partitions)
    return pipeline.raw_scores(), compute_reference(lines, rules).raw


def _purchase(event_id, ts, user, amount=100.0, category="groceries"):
    return {"type": "purchase", "event_id": event_id, "ts": ts, "user_id": user, "category": category, "amount": amount}


def test_a_retraction_before_or_after_its_event_makes_it_count_nothing():
    for order in ("before", "after"):
        retraction = {"type": "retraction", "event_id": "r1", "ts": 5, "user_id": "ann", "retracts": "p1", "reason": "stolen card"}
        events = [_purchase("p1", 1, "ann"), _purchase("p2", 2, "ann", 30.0)]
        events = [retraction, *events] if order == "before" else [*events, retraction]
        scores, expected = _scored(events)
        assert scores["ann"] == pytest.approx(3.0) == expected["ann"], order


def test_retracting_another_users_event_a_friendship_or_an_unknown_id_changes_nothing():
    events = [
        _purchase("p1", 1, "bob"),
        {"type": "friendship", "event_id": "f1", "ts": 2, "user_a": "ann", "user_b": "bob", "action": "add"},
        {"type": "retraction", "event_id": "r1", "ts": 3, "user_id": "ann", "retracts": "p1", "reason": "not mine"},
        {"type": "retraction", "event_id": "r2", "ts": 4, "user_id": "ann", "retracts": "f1", "reason": "x"},
        {"type": "retraction", "event_id": "r3", "ts": 5, "user_id": "bob", "retracts": "nothing-like-it", "reason": "x"},
    ]
    scores, expected = _scored(events)
    assert set(scores) == {"ann", "bob"} and all(abs(scores[u] - expected[u]) <= BLEND.error_bound for u in scores)
    assert expected["bob"] > 5.0, "bob's purchase still counts"


def test_an_erased_user_is_gone_and_friends_move_as_if_the_friendship_never_was():
    events = [
        _purchase("p1", 1, "ann", 500.0),
        {"type": "friendship", "event_id": "f1", "ts": 2, "user_a": "ann", "user_b": "bob", "action": "add"},
        _purchase("p2", 3, "bob", 10.0),
        {"type": "erasure", "event_id": "x1", "ts": 10, "user_id": "ann"},
        # stamped before the erasure, processed after it: void
        {"type": "friendship", "event_id": "f2", "ts": 4, "user_a": "ann", "user_b": "cid", "action": "add"},
        _purchase("p3", 5, "ann", 100.0),
    ]
    scores, expected = _scored(events)
    assert "ann" not in scores and "ann" not in expected
    assert "cid" not in scores, "cid's only event was a friendship with ann stamped before her erasure"
    assert scores["bob"] == pytest.approx(1.0) == expected["bob"], "bob alone: his own points only"


def test_what_is_left_of_an_erased_user_is_what_keeps_late_events_void():
    """State, held events, retractions and history go (spec section 9). What stays: the id and the
    erasure's time, and each former friendship as the two ids with a version and a void weight (in both
    users' states and the pair's), so that a late or repeated event is void; no event id, no estimate."""
    events = [
        _purchase("ann-purchase-one", 1, "ann", 500.0),
        {"type": "post", "event_id": "ann-post-one", "ts": 2, "user_id": "ann", "post_id": "ann-post", "labels": ["helpful"]},
        {"type": "retraction", "event_id": "ann-dispute-one", "ts": 3, "user_id": "ann", "retracts": "ann-purchase-one", "reason": "ann-reason"},
        {"type": "friendship", "event_id": "ann-bob-friendship", "ts": 4, "user_a": "ann", "user_b": "bob", "action": "add"},
        _purchase("bob-purchase-one", 5, "bob", 10.0),
        {"type": "erasure", "event_id": "ann-erased", "ts": 10, "user_id": "ann"},
    ]
    pipeline = LocalPipeline(BLEND, partitions=2)
    pipeline.produce_lines(json.dumps(event) for event in events)
    pipeline.run()
    users = {user: state for _, user, state in pipeline.users.all()}
    ann, bob = users["ann"], users["bob"]
    extra = extra_of(ann)
    assert not ann.exists and ann.erased_ts == 10
    assert not ann.history and not ann.recent_events and not extra.held and not extra.retractions
    for entry in (*ann.friends.values(), bob.friends["ann"]):
        assert entry.weight == scoring.VOIDED and not entry.has_estimate and entry.estimate == 0.0
    [pair] = [pair for _, _, pair in pipeline.pairs.all()]
    assert not pair.events and not pair.recent_events and pair.weight == 0.0
    stored = b"".join(raw for store in (pipeline.users, pipeline.pairs) for held in store.data.values() for raw in held.values())
    for text in ("ann-purchase-one", "ann-post", "ann-dispute-one", "ann-reason", "ann-bob-friendship", "ann-erased"):
        assert text.encode() not in stored, text
    assert b"bob-purchase-one" in stored, "bob's own event stays"


def test_events_after_an_erasure_start_a_new_user_whatever_the_order_they_are_processed_in():
    events = [
        _purchase("p-late", 20, "ann", 70.0),  # after the erasure's time, processed before it
        _purchase("p1", 1, "ann", 500.0),
        {"type": "erasure", "event_id": "x1", "ts": 10, "user_id": "ann"},
        {"type": "friendship", "event_id": "f1", "ts": 30, "user_a": "ann", "user_b": "bob", "action": "add"},
        _purchase("p2", 31, "bob", 10.0),
    ]
    scores, expected = _scored(events)
    assert set(scores) == set(expected) == {"ann", "bob"}
    for user in scores:
        assert abs(scores[user] - expected[user]) <= BLEND.error_bound


def test_a_friendship_whose_last_event_an_erasure_voids_names_its_users_from_the_event_before():
    """The pair's weight stays 0 but its time moves past the erasure: the erased user is named again."""
    friendships = [
        {"type": "friendship", "event_id": "f1", "ts": 11, "user_a": "ann", "user_b": "bob", "action": "add"},
        {"type": "friendship", "event_id": "f2", "ts": 11, "user_a": "ann", "user_b": "bob", "action": "remove"},
        {"type": "friendship", "event_id": "f3", "ts": 10, "user_a": "ann", "user_b": "bob", "action": "remove"},
    ]
    erasure = {"type": "erasure", "event_id": "x1", "ts": 10, "user_id": "ann"}
    pipeline = LocalPipeline(BLEND, partitions=1)
    pipeline.produce_lines(json.dumps(event) for event in friendships)
    pipeline.run()  # the link bob and ann get is of time 10 (f3)
    pipeline.produce_lines([json.dumps(erasure)])
    pipeline.run()  # f3 is void: the pair's weight is still 0, now of time 11
    lines = [json.dumps(event) for event in [*friendships, erasure]]
    assert set(pipeline.raw_scores()) == set(compute_reference(lines, BLEND).raw) == {"ann", "bob"}


def test_a_friendship_an_erasure_re_times_brings_the_friends_estimate_back():
    """The erased user forgot the friend's estimate with the link; the pair, re-timed to its later add, is
    unchanged for the friend, who must still send its estimate again."""
    before = [
        _purchase("p1", 1, "ann", 300.0),
        {"type": "friendship", "event_id": "f-cid", "ts": 1, "user_a": "ann", "user_b": "cid", "action": "add"},
        # bob's weight is too small for his return to move ann by epsilon: she does not publish again
        {"type": "friendship", "event_id": "f-late", "ts": 12, "user_a": "ann", "user_b": "bob", "action": "add", "weight": 0.001},
        {"type": "friendship", "event_id": "f-early", "ts": 11, "user_a": "ann", "user_b": "bob", "action": "add", "weight": 0.001},
    ]
    erasure = {"type": "erasure", "event_id": "x1", "ts": 11, "user_id": "bob"}
    pipeline = LocalPipeline(BLEND, partitions=1)
    pipeline.produce_lines(json.dumps(event) for event in before)
    pipeline.run()
    pipeline.produce_lines([json.dumps(erasure)])
    pipeline.run()
    expected = compute_reference([json.dumps(event) for event in [*before, erasure]], BLEND).raw
    scores = pipeline.raw_scores()
    assert set(scores) == set(expected) == {"ann", "bob", "cid"}
    assert expected["bob"] > 0
    for user in expected:
        assert abs(scores[user] - expected[user]) <= BLEND.error_bound


def test_lift_only_never_scores_anyone_below_their_own_behaviour():
    events = [
        _purchase("p1", 1, "ann", 200.0),
        _purchase("p2", 1, "bob", 100.0, "gambling"),
        {"type": "friendship", "event_id": "f1", "ts": 2, "user_a": "ann", "user_b": "bob", "action": "add"},
    ]
    scores, expected = _scored(events, LIFT)
    assert scores["ann"] == pytest.approx(20.0, abs=LIFT.error_bound), "bob's -20 does not pull ann down"
    assert scores["bob"] > -20.0, "ann lifts bob"
    assert all(abs(scores[u] - expected[u]) <= LIFT.error_bound for u in scores)
