"""Waiting friend updates: coalesced latest-wins, handed out links first, and never committed past."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams import scoring
from streams.friend_updates import ESTIMATE, LINK, UNKNOWN_ORIGIN
from streams.waiting import WaitingUpdates
from streams.state import UserState


def _collect(pending: WaitingUpdates, out_of_time=lambda taken: False, chunk: int = 64):
    applied = []

    def apply(partition, kind, receiver, updates):
        for sender, (value, version, origin_ts, offset) in updates.items():
            applied.append((partition, kind, receiver, sender, value, version, origin_ts, offset))

    taken = pending.take(apply, out_of_time, chunk=chunk)
    return applied, taken


def test_a_newer_update_replaces_the_waiting_one_and_frees_its_record():
    pending = WaitingUpdates()
    assert pending.add(0, 10, [(ESTIMATE, "a", "b", 1.0, 1, 100)]) == 0
    assert pending.add(0, 11, [(ESTIMATE, "a", "b", 2.0, 2, 200)]) == 1
    assert pending.waiting == 1
    assert pending.held_from(0) == 11, "record 10 has nothing waiting any more"
    applied, taken = _collect(pending)
    # the newest value, version and time
    assert applied == [(0, ESTIMATE, "a", "b", 2.0, 2, 200, 11)]
    assert pending.held_from(0) == 11, "held until the batch that applied it is delivered"
    pending.release(taken)
    assert pending.held_from(0) is None
    assert not pending


def test_a_newer_estimate_keeps_its_own_time_the_time_its_value_is_valid_at():
    pending = WaitingUpdates()
    pending.add(0, 10, [(ESTIMATE, "a", "b", 1.0, 1, 100)])
    pending.add(0, 11, [(ESTIMATE, "a", "b", 2.0, 2, 150)])
    applied, _ = _collect(pending)
    assert applied == [(0, ESTIMATE, "a", "b", 2.0, 2, 150, 11)]


def test_a_newer_link_keeps_its_own_time_the_time_of_the_event_that_set_the_weight():
    pending = WaitingUpdates()
    pending.add(0, 10, [(LINK, "a", "b", 1.0, 1, 100)])
    pending.add(0, 11, [(LINK, "a", "b", 2.0, 2, 200)])
    applied, _ = _collect(pending)
    assert applied == [(0, LINK, "a", "b", 2.0, 2, 200, 11)]


def test_an_update_not_newer_than_the_waiting_one_is_dropped():
    pending = WaitingUpdates()
    pending.add(0, 10, [(ESTIMATE, "a", "b", 2.0, 2, 100)])
    assert pending.add(0, 11, [(ESTIMATE, "a", "b", 1.0, 1, 50), (ESTIMATE, "a", "b", 9.0, 2, 50)]) == 2
    assert pending.held_from(0) == 10
    applied, _ = _collect(pending)
    assert [(value, version) for *_, value, version, _, _ in applied] == [(2.0, 2)]


def test_two_updates_of_one_record_for_the_same_sender_hold_the_record_once():
    """A record repeating (receiver, sender) must not leave it held for ever."""
    pending = WaitingUpdates()
    pending.add(3, 7, [(ESTIMATE, "a", "b", 1.0, 1, 0), (ESTIMATE, "a", "b", 2.0, 2, 0)])
    _, taken = _collect(pending)
    pending.release(taken)
    assert pending.held_from(3) is None


def test_links_and_estimates_of_one_sender_wait_apart():
    pending = WaitingUpdates()
    pending.add(0, 1, [(LINK, "a", "b", 1.0, 1, 0), (ESTIMATE, "a", "b", 5.0, 1, 0)])
    applied, _ = _collect(pending)
    assert sorted(kind for _, kind, *_ in applied) == [ESTIMATE, LINK]


def test_every_link_is_handed_out_even_when_the_time_is_up_but_estimates_only_a_chunk():
    pending = WaitingUpdates()
    pending.add(0, 1, [(ESTIMATE, f"r{i}", "s", 1.0, 1, 0) for i in range(10)])
    pending.add(1, 1, [(LINK, f"l{i}", "s", 1.0, 1, 0) for i in range(5)])
    applied, taken = _collect(pending, out_of_time=lambda taken: True, chunk=3)
    assert [receiver for _, kind, receiver, *_ in applied if kind == LINK] == [f"l{i}" for i in range(5)]
    assert [receiver for _, kind, receiver, *_ in applied if kind == ESTIMATE] == ["r0", "r1", "r2"], "oldest first"
    assert pending.waiting == 7 and taken.updates == 8
    pending.release(taken)
    assert pending.held_from(0) == 1, "record 1 of partition 0 still has estimates waiting"
    assert pending.held_from(1) is None


def test_waiting_links_are_told_apart():
    pending = WaitingUpdates()
    pending.add(0, 1, [(ESTIMATE, "a", "s", 1.0, 1, 0)])
    assert not pending.links_waiting()
    pending.add(2, 1, [(LINK, "a", "s", 1.0, 1, 0)])
    assert pending.links_waiting()
    _collect(pending, out_of_time=lambda taken: True)
    assert not pending.links_waiting()


def test_records_kept_unread_are_held_until_the_batch_reading_them_is_delivered():
    pending = WaitingUpdates()
    pending.add(0, 4, [(ESTIMATE, "a", "x", 1.0, 1, 0)])
    pending.queue(0, 5, "record 5")
    pending.queue(1, 9, "record 9")
    pending.queue(0, 6, "record 6")
    assert pending.held_from(0) == 4 and pending.held_from(1) == 9
    assert list(pending.unqueue(limit=1)) == [], "one update waits already"
    _, taken = _collect(pending)
    pending.release(taken)
    assert pending.held_from(0) == 5, "the first record kept unread"
    read = list(pending.unqueue(limit=1))
    assert read == ["record 5", "record 9", "record 6"], "partitions in turn, each in order (nothing was added meanwhile)"
    assert pending.held_from(0) == 5 and pending.held_from(1) == 9, "read, not yet delivered"
    _, taken = _collect(pending)
    pending.release(taken)
    assert pending.held_from(0) is None and pending.held_from(1) is None
    assert not pending


def test_partitions_take_turns():
    pending = WaitingUpdates()
    for partition in (0, 1, 2):
        pending.add(partition, 1, [(ESTIMATE, f"p{partition}r{i}", "s", 1.0, 1, 0) for i in range(4)])
    first, _ = _collect(pending, out_of_time=lambda taken: taken.receivers >= 2, chunk=2)
    second, _ = _collect(pending, out_of_time=lambda taken: taken.receivers >= 2, chunk=2)
    assert {partition for partition, *_ in first} == {0}
    assert {partition for partition, *_ in second} == {1}, "the next batch starts where the last stopped"


def test_held_from_is_the_lowest_record_with_anything_waiting():
    pending = WaitingUpdates()
    pending.add(0, 5, [(ESTIMATE, "a", "x", 1.0, 1, 0)])
    pending.add(0, 6, [(ESTIMATE, "b", "x", 1.0, 1, 0)])
    pending.add(0, 7, [(ESTIMATE, "a", "x", 2.0, 2, 0)])  # frees record 5
    assert pending.held_from(0) == 6


def test_after_partitions_move_everything_is_dropped_and_an_old_batch_releases_nothing():
    pending = WaitingUpdates()
    pending.add(0, 5, [(ESTIMATE, "a", "x", 1.0, 1, 0)])
    _, taken = _collect(pending)
    pending.clear()
    pending.add(0, 5, [(ESTIMATE, "a", "x", 1.0, 1, 0)])  # read again from the commit
    pending.release(taken)
    assert pending.held_from(0) == 5
    assert pending.waiting == 1


updates = st.lists(
    st.tuples(
        st.sampled_from([ESTIMATE, LINK]),
        st.sampled_from(["a", "b"]),  # receiver
        st.sampled_from(["x", "y", "z"]),  # sender
        st.sampled_from([0.0, 0.5, 1.0, 2.0]),
        st.integers(1, 5),  # version
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(updates=updates, batches=st.lists(st.integers(0, 3), max_size=40), per_record=st.integers(1, 4))
def test_applying_what_waited_ends_in_the_states_that_applying_everything_in_order_gives(updates, batches, per_record):
    """Coalescing changes how many updates are applied, never the states they lead to."""
    direct: dict[str, UserState] = {}
    for kind, receiver, sender, value, version in updates:
        state = direct.setdefault(receiver, UserState())
        if kind == LINK:
            scoring.apply_link(state, sender, value, version)
        else:
            scoring.apply_estimate(state, sender, value, version)

    pending = WaitingUpdates()
    waited: dict[str, UserState] = {}

    def apply(partition, kind, receiver, waiting):
        state = waited.setdefault(receiver, UserState())
        for sender, (value, version, _, _) in waiting.items():
            if kind == LINK:
                scoring.apply_link(state, sender, value, version)
            else:
                scoring.apply_estimate(state, sender, value, version)

    turns = iter(batches)
    for offset, start in enumerate(range(0, len(updates), per_record)):
        record = [(kind, receiver, sender, value, version, 0) for kind, receiver, sender, value, version in updates[start : start + per_record]]
        pending.add(0, offset, record)
        receivers = next(turns, 0)
        if receivers:
            pending.release(pending.take(apply, lambda taken: taken.receivers >= receivers, chunk=1))
    pending.release(pending.take(apply, lambda taken: False))
    assert not pending and pending.held_from(0) is None
    assert {user: state.friends for user, state in waited.items()} == {user: state.friends for user, state in direct.items()}
