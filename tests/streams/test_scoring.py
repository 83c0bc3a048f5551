"""The pure per-user model (streams.scoring) and batch code (streams.batch)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import events as ev
from streams import scoring
from streams.friend_updates import UNKNOWN_ORIGIN, earliest_origin
from streams.batch import PairBatch, UserBatch
from streams.rules import load_rules
from streams.state import FriendEntry, UserState

RULES = load_rules()
DAY = 24 * 3600 * 1000


def test_friendless_target_is_own_part_exactly():
    state = UserState(own=12.5)
    assert scoring.target(state, 0.3) == 12.5


def test_target_blends_own_part_with_weighted_mean_of_friends():
    state = UserState(own=10.0)
    state.friends["a"] = FriendEntry(weight=1.0, estimate=20.0, has_estimate=True, version=1)
    state.friends["b"] = FriendEntry(weight=3.0, estimate=0.0, has_estimate=True, version=1)
    assert scoring.target(state, 0.5) == pytest.approx(0.5 * 10 + 0.5 * (20 * 1 + 0 * 3) / 4)


def test_friend_without_estimate_yet_and_former_friends_are_left_out():
    state = UserState(own=10.0)
    state.friends["pending"] = FriendEntry(weight=2.0)  # linked, estimate on its way
    state.friends["former"] = FriendEntry(weight=0.0, estimate=99.0, has_estimate=True, version=3)
    assert scoring.target(state, 0.3) == 10.0
    assert scoring.network_mean(state) is None


def test_estimates_apply_only_when_newer():
    state = UserState()
    assert scoring.apply_estimate(state, "v", 5.0, 2)
    assert not scoring.apply_estimate(state, "v", 1.0, 2)  # duplicate
    assert not scoring.apply_estimate(state, "v", 1.0, 1)  # stale, e.g. redelivered late
    assert state.friends["v"].estimate == 5.0
    assert scoring.apply_estimate(state, "v", 7.0, 3)
    assert state.friends["v"].estimate == 7.0


def test_estimate_before_link_is_kept_for_when_the_link_arrives():
    state = UserState(own=0.0)
    scoring.apply_estimate(state, "v", 8.0, 4)
    assert scoring.target(state, 0.5) == 0.0  # not a friend yet
    assert scoring.apply_link(state, "v", 1.0, 1) == "new"
    assert scoring.target(state, 0.5) == 4.0


def test_links_are_versioned_so_late_or_repeated_ones_change_nothing():
    state = UserState()
    assert scoring.apply_link(state, "v", 1.0, 1) == "new"
    assert scoring.apply_link(state, "v", 2.0, 2) == "changed"
    assert scoring.apply_link(state, "v", 5.0, 2) is None
    assert scoring.apply_link(state, "v", 0.0, 3) == "changed"
    assert scoring.apply_link(state, "v", 1.0, 1) is None  # an old add cannot resurrect it
    assert state.friends["v"].weight == 0.0
    assert scoring.apply_link(state, "v", 1.5, 4) == "new"


def test_removal_of_an_unknown_link_blocks_an_older_add():
    state = UserState()
    assert scoring.apply_link(state, "v", 0.0, 2) == "changed"
    assert scoring.apply_link(state, "v", 1.0, 1) is None
    assert not state.has_friends()


def test_event_memory_detects_duplicates_and_is_bounded():
    memory: dict[str, int] = {}
    assert scoring.remember_event(memory, "a", 0, DAY, 4)
    assert not scoring.remember_event(memory, "a", 0, DAY, 4)
    for i in range(100):
        scoring.remember_event(memory, f"old{i}", i, DAY, 4)
    for i in range(20):
        scoring.remember_event(memory, f"new{i}", 10 * DAY + i, DAY, 4)
    assert len(memory) <= 2 * 4 + 20
    assert all(eid.startswith("new") for eid in memory)
    # young ids are all kept, whatever their number
    assert not scoring.remember_event(memory, "new0", 10 * DAY, DAY, 4)


def _remember_event_by_sorting_every_time(memory, event_id, ts, window_ms, min_ids):
    """The first version of the memory: sorts whenever it holds more than 2 * min_ids."""
    if event_id in memory:
        return False
    memory[event_id] = ts
    if len(memory) > 2 * min_ids:
        newest = max(memory.values())
        by_age = sorted(memory.items(), key=lambda item: item[1], reverse=True)
        keep = {eid: when for index, (eid, when) in enumerate(by_age) if index < min_ids or when >= newest - window_ms}
        memory.clear()
        memory.update(keep)
    return True


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5 * DAY)), max_size=200),
    st.integers(1, 6),
    st.sampled_from([DAY, DAY // 100, 0]),
)
def test_event_memory_keeps_exactly_what_sorting_every_time_kept(events, min_ids, window_ms):
    fast: dict[str, int] = {}
    reference: dict[str, int] = {}
    for number, ts in events:
        event_id = f"e{number}"
        assert scoring.remember_event(fast, event_id, ts, window_ms, min_ids) == _remember_event_by_sorting_every_time(
            reference, event_id, ts, window_ms, min_ids
        )
        assert fast == reference


def test_publish_once_on_creation_then_only_on_moves_of_epsilon():
    state = UserState()
    publish, value = scoring.should_publish(state, RULES)
    assert publish and value == 0.0
    scoring.publish(state, value, ts=1)
    state.own = RULES.epsilon / 2
    assert not scoring.should_publish(state, RULES)[0]
    state.own = RULES.epsilon
    assert scoring.should_publish(state, RULES)[0]


def test_history_is_bounded():
    state = UserState()
    for i in range(scoring.HISTORY_LENGTH + 5):
        scoring.publish(state, float(i), ts=i)
    assert len(state.history) == scoring.HISTORY_LENGTH
    assert state.history[-1] == (scoring.HISTORY_LENGTH + 4, float(scoring.HISTORY_LENGTH + 4))
    assert state.version == scoring.HISTORY_LENGTH + 5


def _user_batch(store: dict) -> UserBatch:
    return UserBatch(RULES, store.get, dedup_window_ms=DAY, dedup_min_ids=64)


def test_user_batch_coalesces_many_inputs_into_one_publish_per_user():
    store: dict[str, UserState] = {}
    batch = _user_batch(store)
    batch.link("u", "f1", 1.0, 1, origin_ts=5, topic="t", offset=1)
    batch.link("u", "f2", 1.0, 1, origin_ts=6, topic="t", offset=2)
    for i in range(10):
        batch.points(ev.PURCHASE, ev.Purchase(f"e{i}", 10 + i, "u", "groceries", 1.0 / 0.1), "purchases", 10 + i)
    batch.points(ev.PURCHASE, ev.Purchase("e3", 13, "u", "groceries", 1.0 / 0.1), "purchases", 30)  # duplicate
    out = batch.finish(now_ms=100)
    assert out.counts.accepted == 10 and out.counts.duplicates == 1
    assert list(out.states) == ["u"]
    assert len(out.scores) == 1 and out.scores[0].raw == 10.0 and out.scores[0].origin_ts == 5
    assert sorted(r for e in out.estimates for r in e.receivers) == ["f1", "f2"]
    assert out.states["u"].source_offsets == {"t": 2, "purchases": 19}


def test_latency_is_measured_from_own_events_not_from_friends_estimates():
    """A score moved by the user's own event carries that event's time; one
    moved only by friends' estimates carries none (its causes are many and
    coalescing keeps the oldest, which under load is no latency at all)."""
    store: dict[str, UserState] = {}
    earlier = _user_batch(store)
    earlier.link("a", "f", 1.0, 1, origin_ts=0, topic="updates", offset=0)
    store.update(earlier.finish(now_ms=1).states)
    batch = _user_batch(store)
    batch.estimate("a", "f", 5.0, 1, origin_ts=1, topic="updates", offset=1)
    batch.estimate("b", "f", 5.0, 1, origin_ts=2, topic="updates", offset=2)
    batch.points(ev.PURCHASE, ev.Purchase("e1", 50, "b", "groceries", 10.0 / 0.1), "purchases", 3)
    batch.link("c", "f", 1.0, 1, origin_ts=60, topic="updates", offset=4)
    batch.points(ev.PURCHASE, ev.Purchase("e2", 70, "c", "groceries", 10.0 / 0.1), "purchases", 5)
    scores = {score.user_id: score for score in batch.finish(now_ms=100).scores}
    assert scores["b"].origin_ts == 2 and scores["b"].direct_ts == 50 and scores["b"].direct_lane == ev.USER
    # c's friendship (a link, from the pair lane) is older than its purchase: measured from it, by its lane
    assert scores["c"].direct_ts == 60 and scores["c"].direct_lane == ev.PAIR
    assert scores["a"].origin_ts == 1 and scores["a"].direct_ts is None and scores["a"].direct_lane is None


def test_a_link_re_sent_after_a_crash_has_no_event_time_and_no_latency():
    """Links re-sent after a crash (streams/runtime/resend.py) carry UNKNOWN_ORIGIN (0): measured
    from it, a latency would be the time since 1970, in the histogram's top bucket."""
    store: dict[str, UserState] = {}
    batch = _user_batch(store)
    batch.link("a", "f", 1.0, 1, origin_ts=UNKNOWN_ORIGIN, topic="updates", offset=0)
    batch.link("b", "f", 1.0, 1, origin_ts=UNKNOWN_ORIGIN, topic="updates", offset=1)
    batch.points(ev.PURCHASE, ev.Purchase("e1", 50, "b", "groceries", 10.0 / 0.1), "purchases", 2)
    scores = {score.user_id: score for score in batch.finish(now_ms=100).scores}
    assert scores["a"].direct_ts is None
    assert scores["b"].direct_ts == 50 and scores["b"].origin_ts == 50 and scores["b"].direct_lane == ev.USER
    assert earliest_origin(UNKNOWN_ORIGIN, 7) == earliest_origin(7, UNKNOWN_ORIGIN) == 7
    assert earliest_origin(9, 7) == 7 and earliest_origin(UNKNOWN_ORIGIN, UNKNOWN_ORIGIN) == UNKNOWN_ORIGIN


def test_new_friend_learns_current_estimate_even_without_a_publish():
    state = UserState(own=3.0)
    scoring.publish(state, 3.0, ts=1)
    store = {"u": state}
    batch = _user_batch(store)
    batch.link("u", "v", 1.0, 1, origin_ts=5, topic="t", offset=1)
    out = batch.finish(now_ms=10)
    assert out.scores == []  # target unchanged: v's estimate has not arrived
    assert [(e.receivers, e.estimate, e.version) for e in out.estimates] == [(["v"], 3.0, 1)]


def test_pair_batch_sends_only_the_final_state_and_counts_duplicates():
    pairs: dict = {}
    batch = PairBatch(pairs.get, dedup_window_ms=DAY, dedup_min_ids=64)
    assert batch.friendship("a\x1fb", "b", "a", "e1", 1, "add", 1.0, 0) == "accepted"
    assert batch.friendship("a\x1fb", "a", "b", "e2", 2, "add", 2.0, 1) == "accepted"
    assert batch.friendship("a\x1fb", "a", "b", "e1", 1, "add", 1.0, 2) == "duplicate"
    out = batch.finish()
    assert [(l.receiver, l.sender, l.weight, l.version) for l in out.links] == [("a", "b", 2.0, 2), ("b", "a", 2.0, 2)]
    assert out.counts.accepted == 2 and out.counts.duplicates == 1


def test_removing_a_missing_friendship_changes_nothing():
    pairs: dict = {}
    batch = PairBatch(pairs.get, dedup_window_ms=DAY, dedup_min_ids=64)
    assert batch.friendship("a\x1fb", "a", "b", "e1", 1, "remove", 1.0, 0) == "accepted"
    out = batch.finish()
    assert out.links == []
    # ... but its id is remembered, so a late copy cannot undo a later add
    assert "e1" in out.states["a\x1fb"].recent_events


def test_display_is_monotone_and_bounded():
    assert RULES.display(0.0) == pytest.approx((RULES.display_min + RULES.display_max) / 2)
    assert RULES.display_min <= RULES.display(-1e9) < RULES.display(1.0) < RULES.display(1e9) <= RULES.display_max
    assert not math.isnan(RULES.display(float("1e308")))
