"""A worker killed after its states were written and before what they cause left (streams.local).

The runtime acknowledges a batch's state writes before it sends anything they
cause (streams.runtime.output.Outputs.deliver); a kill in between leaves states
that already show their inputs applied, so those inputs, read again, are
duplicates. What the states caused must still leave: the restart's re-send
(streams.batch.resend_user, resend_pair; streams.runtime.resend) or the
re-read input itself. Each case here was found by the random crashes of the
property tests (``crash_p``) and ended away from the reference before its fix.
"""

from __future__ import annotations

import json

from standing.reference import compute_reference
from streams.events import PAIR, USER
from streams.local import LocalPipeline
from tests.streams.test_time import CHANGED, DAY, DECAY, START
from topology.routing import pair_key, partition_for


def _like_the_reference(pipeline: LocalPipeline, lines: list[str], rules) -> None:
    expected = compute_reference(lines, rules)
    scores = pipeline.raw_scores(as_of=expected.stream_time)
    assert set(scores) == set(expected.raw)
    for user, raw in expected.raw.items():
        assert abs(scores[user] - raw) <= rules.error_bound + 1e-9, (user, scores[user], raw)


def _line(**event) -> str:
    return json.dumps(event)


def test_a_rules_change_whose_scores_never_left_is_sent_at_the_restart():
    """The redelivered change finds the partition switched and rescores nothing: the re-send must find the states."""
    lines = [
        _line(type="purchase", event_id="a1", ts=START, user_id="ann", category="groceries", amount=50.0),
        _line(type="post", event_id="b1", ts=START + DAY, user_id="bob", post_id="p", labels=["helpful"]),
        _line(type="friendship", event_id="f1", ts=START + DAY, user_a="ann", user_b="bob", action="add", weight=1.0),
    ]
    pipeline = LocalPipeline(DECAY, partitions=1)
    pipeline.produce_lines(lines)
    pipeline.run()
    pipeline.publish_rules(CHANGED)
    pipeline.step(killed_before_sends=True)  # the rescore: every state written, no score left
    pipeline.run()
    assert pipeline.crashes == 1
    assert {score["rules_version"] for score in pipeline.scores().values()} == {CHANGED.version}
    _like_the_reference(pipeline, lines, CHANGED)


def test_an_erasure_of_a_user_who_never_had_a_score_still_voids_their_friendships_after_a_kill():
    """Its notices to the pair partitions never left; a friendship stamped before the erasure arrives later."""
    erased = [_line(type="erasure", event_id="x", ts=START + 5, user_id="bob")]
    later = [_line(type="friendship", event_id="f1", ts=START + 5, user_a="ann", user_b="bob", action="add", weight=1.0)]
    pipeline = LocalPipeline(DECAY, partitions=1)
    pipeline.produce_lines(erased)
    pipeline.step(killed_before_sends=True)
    pipeline.produce_lines(later)
    pipeline.run()
    _like_the_reference(pipeline, erased + later, DECAY)
    assert pipeline.scores() == {}


def test_a_friendship_that_no_longer_names_anyone_is_sent_again_as_void():
    """After an erasure voided its add, a later remove leaves the pair naming no one: re-sent as weight 0, it named."""
    settled = [
        _line(type="friendship", event_id="f1", ts=START, user_a="ann", user_b="bob", action="add", weight=1.0),
        _line(type="erasure", event_id="x", ts=START, user_id="ann"),
        _line(type="post", event_id="b1", ts=START, user_id="bob", post_id="p", labels=["helpful"]),
    ]
    later = [_line(type="friendship", event_id="f2", ts=START + 1, user_a="bob", user_b="ann", action="remove", weight=1.0)]
    pipeline = LocalPipeline(DECAY, partitions=1)
    pipeline.produce_lines(settled)
    pipeline.run()
    pipeline.produce_lines(later)
    pipeline.step(killed_before_sends=True)  # the pair lane: the remove written, its links lost
    pipeline.run()
    _like_the_reference(pipeline, settled + later, DECAY)
    assert set(pipeline.scores()) == {"bob"}


def test_an_erasure_notice_read_again_sends_the_links_it_voided():
    """The pair partition wrote the voided friendship and the erasure's marker; the links never left."""
    settled = [
        _line(type="friendship", event_id="f1", ts=START, user_a="ann", user_b="bob", action="add", weight=1.0),
        _line(type="post", event_id="b1", ts=START, user_id="bob", post_id="p", labels=["helpful"]),
        _line(type="post", event_id="a1", ts=START + 9, user_id="ann", post_id="q", labels=["spam"]),
    ]
    later = [_line(type="erasure", event_id="x", ts=START + 5, user_id="ann")]  # the friendship goes; ann's later post stays
    pipeline = LocalPipeline(DECAY, partitions=1)
    pipeline.produce_lines(settled)
    pipeline.run()
    pipeline.produce_lines(later)
    pipeline.step(lane=USER)  # the erasure: its notice reaches the pair partition
    pipeline.step(lane=PAIR, killed_before_sends=True)
    pipeline.run()
    _like_the_reference(pipeline, settled + later, DECAY)
    assert list(pipeline.users.load(0, "bob").current_friends()) == []


def test_an_expiry_whose_score_never_left_is_sent_at_the_restart():
    """Read again, the event that moved the stream time is a duplicate and expires nothing: the re-send must."""
    lines = [
        _line(type="purchase", event_id="a1", ts=START, user_id="ann", category="groceries", amount=50.0),
        _line(type="purchase", event_id="b1", ts=START + 400 * DAY, user_id="bob", category="groceries", amount=10.0),
    ]
    pipeline = LocalPipeline(CHANGED, partitions=1)  # a maximum age of 400 days
    pipeline.produce_lines(lines[:1])
    pipeline.run()
    pipeline.produce_lines(lines[1:])
    pipeline.step(killed_before_sends=True)  # ann's purchase expires; her new score is lost
    pipeline.run()
    _like_the_reference(pipeline, lines, CHANGED)
    assert pipeline.raw_scores()["ann"] == 0.0


def _users_apart(partitions: int) -> tuple[str, str, str]:
    """ann on one user partition; carl and dan (and their pair) elsewhere."""
    names = [f"user-{i}" for i in range(200)]
    ann = names[0]
    others = [n for n in names if partition_for(n, partitions) != partition_for(ann, partitions)]
    carl = others[0]
    dan = next(n for n in others[1:] if partition_for(pair_key(carl, n), partitions) != partition_for(ann, partitions))
    return ann, carl, dan


def test_a_friendship_that_moved_the_stream_time_tells_every_partition_after_a_kill():
    """The pair partition's clock was written, its ticks never left: ann's partition must still hear.

    (A kill that wrote the pair but not the clock, which is written last, is
    the property tests' ``crash_p``: the friendship read again is a duplicate
    whose time still counts.)
    """
    ann, carl, dan = _users_apart(2)
    lines = [
        _line(type="purchase", event_id="a1", ts=START, user_id=ann, category="groceries", amount=50.0),
        _line(type="friendship", event_id="f1", ts=START + 400 * DAY, user_a=carl, user_b=dan, action="add", weight=1.0),
    ]
    pipeline = LocalPipeline(CHANGED, partitions=2)
    pipeline.produce_lines(lines[:1])
    pipeline.run()
    pipeline.produce_lines(lines[1:])
    pipeline.step(lane=PAIR, killed_before_sends=True)
    pipeline.run()
    _like_the_reference(pipeline, lines, CHANGED)
    assert pipeline.raw_scores()[ann] == 0.0


def test_an_event_that_moved_the_stream_time_tells_the_other_partitions_after_a_kill():
    ann, bob, _ = _users_apart(2)
    lines = [
        _line(type="purchase", event_id="a1", ts=START, user_id=ann, category="groceries", amount=50.0),
        _line(type="purchase", event_id="b1", ts=START + 400 * DAY, user_id=bob, category="groceries", amount=10.0),
    ]
    pipeline = LocalPipeline(CHANGED, partitions=2)
    pipeline.produce_lines(lines[:1])
    pipeline.run()
    pipeline.produce_lines(lines[1:])
    pipeline.step(lane=USER, killed_before_sends=True)  # bob's partition: its clock written, its ticks lost
    pipeline.run()
    _like_the_reference(pipeline, lines, CHANGED)
    assert pipeline.raw_scores()[ann] == 0.0
