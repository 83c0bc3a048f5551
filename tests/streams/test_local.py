"""Whole batches in-process (streams.local): what the worker does with records, without a broker.

The same batch functions the worker runs, from bytes on topics to records on
``scores`` and ``dead-letters``: decoding, rejections with their reasons,
de-duplication, coalescing, propagation across partitions until quiet, and
the end state compared with `standing reference`.
"""

from __future__ import annotations

import json
import random
import zlib

import pytest

from schemas import codec
from standing.population import PopulationConfig, generate_events
from standing.reference import compare, compute_reference
from streams import events as ev
from streams.local import LocalPipeline
from streams.rules import load_rules
from topology import topics
from topology.routing import pair_key, partition_for

RULES = load_rules()

GOOD = [
    ev.Friendship("f1", 1, "ann", "bob", "add", 1.0),
    ev.Purchase("p1", 2, "ann", "groceries", 200.0),
    ev.Post("q1", 3, "bob", "x", ("spam",)),
    ev.Post("q2", 4, "cid", "y", ("helpful",)),
]


def _lines(config: PopulationConfig) -> list[str]:
    return [item if isinstance(item, str) else json.dumps(item) for item in generate_events(config, RULES)]


@pytest.mark.parametrize("partitions, rng", [(4, None), (3, random.Random(5))])
def test_a_power_law_population_scored_in_process_equals_the_reference(partitions, rng):
    lines = _lines(PopulationConfig(users=500, events=5000, seed=11, duplicate_share=0.02, invalid_share=0.01))
    expected = compute_reference(lines, RULES)
    pipeline = LocalPipeline(RULES, partitions=partitions, rng=rng, max_batch=500, duplicate_p=0.01 if rng else 0.0)
    rejected = pipeline.produce_lines(lines)
    pipeline.run()
    result = compare(pipeline.raw_scores(), expected.raw)
    assert result.within(RULES.error_bound), result
    summary = {
        "accepted": sum(n for (name, _), n in pipeline.counts.items() if name == "accepted"),
        "rejected": dict(rejected),
    }
    assert summary == {"accepted": expected.summary.accepted, "rejected": dict(expected.summary.rejected)}
    # propagation crossed partitions: friend updates were sent and applied
    assert pipeline.counts["updates_sent", "estimate"] > 0 and pipeline.counts["updates_received", "applied"] > 0


def test_custom_rules_in_process():
    rules_text = (
        "[network]\nalpha = 0.6\nepsilon = 0.001\n[purchase]\ndefault_weight = 0.5\nmax_points = 20.0\n"
        "[purchase.weights]\ngroceries = 1.0\n[post.labels]\nspam = -3.0\n"
    )
    import tempfile
    from pathlib import Path

    from streams.rules import load_rules as load

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "rules.toml"
        path.write_text(rules_text)
        rules = load(path)
    lines = [
        {"type": "friendship", "event_id": "f1", "ts": 1, "user_a": "ann", "user_b": "bob", "action": "add"},
        {"type": "friendship", "event_id": "f2", "ts": 2, "user_a": "cid", "user_b": "bob", "action": "add", "weight": 3.0},
        {"type": "purchase", "event_id": "p1", "ts": 3, "user_id": "ann", "category": "groceries", "amount": 12.0},
        {"type": "purchase", "event_id": "p1", "ts": 3, "user_id": "ann", "category": "groceries", "amount": 12.0},
        {"type": "post", "event_id": "q1", "ts": 4, "user_id": "cid", "post_id": "x", "labels": ["spam", "spam"]},
        {"type": "friendship", "event_id": "f3", "ts": 5, "user_a": "bob", "user_b": "ann", "action": "add", "weight": 2.0},
        {"type": "friendship", "event_id": "f4", "ts": 6, "user_a": "bob", "user_b": "cid", "action": "remove"},
        {"type": "friendship", "event_id": "f5", "ts": 7, "user_a": "dan", "user_b": "eve", "action": "remove"},
    ]
    text = [json.dumps(line) for line in lines]
    expected = compute_reference(text, rules)
    pipeline = LocalPipeline(rules, partitions=2)
    pipeline.produce_lines(text)
    pipeline.run()
    scores = pipeline.raw_scores()
    assert set(scores) == {"ann", "bob", "cid"}  # dan and eve were never friends
    assert compare(scores, expected.raw).within(rules.error_bound)
    assert pipeline.counts["duplicate", "purchase"] == 1


def test_bad_records_from_any_producer_are_dead_letters_with_their_reason_and_origin():
    purchase = ev.to_bytes(GOOD[1])
    bad = [
        ("purchases", b"ann", b"", "not_decodable"),
        ("purchases", b"ann", b"\x00\x00\x00\x00\x01garbage", "not_decodable"),
        ("posts", b"bob", b"\x00\x00\x00\x30\x39" + purchase[5:], "unknown_schema_id"),
        ("posts", b"bob", purchase, "wrong_schema"),
        ("purchases", b"ann", codec.encode("purchase", {**ev.to_record(GOOD[1])[1], "event_id": "neg", "amount": -4.0}), "bad_amount"),
        ("friendships", pair_key("ann", "ann").encode(), codec.encode("friendship", {**ev.to_record(GOOD[0])[1], "user_b": "ann"}), "self_friendship"),
        ("friendships", pair_key("ann", "bob").encode(), codec.encode("friendship", {**ev.to_record(GOOD[0])[1], "event_id": "w", "weight": 0.0}), "bad_weight"),
        ("friendships", pair_key("ann", "bob").encode(), codec.encode("friendship", {**ev.to_record(GOOD[0])[1], "event_id": "z", "action": "poke"}), "unknown_action"),
        (topics.FRIEND_UPDATES, None, b"\x00\x00\x00\x00\x0anot packed updates", "not_decodable"),
        (topics.PAIR_UPDATES, b"ann", b"\x00\x00\x00\x00\x0dnot a notice", "not_decodable"),
    ]
    pipeline = LocalPipeline(RULES, partitions=3, rng=random.Random(3))
    internal = (topics.FRIEND_UPDATES, topics.PAIR_UPDATES)
    records = [pipeline.produce(topic, key, value, 0 if topic in internal else None) for topic, key, value, _ in bad]
    for event in GOOD:
        pipeline.produce_event(event)
    pipeline.run()
    letters = pipeline.dead_letters()
    got = sorted((letter["topic"], letter["partition"], letter["offset"], letter["reason"]) for letter in letters)
    assert got == sorted((r.topic, r.partition, r.offset, reason) for r, (*_, reason) in zip(records, bad))
    assert all(letter["source"] == "worker" and letter["detail"] for letter in letters)
    assert {letter["original"] for letter in letters} == {value for _, _, value, _ in bad}
    assert set(pipeline.scores()) == {"ann", "bob", "cid"}


def test_records_on_a_partition_that_does_not_own_their_subject_are_routed_and_score_as_if_produced_there():
    """A producer with librdkafka's default partitioner (CRC32 of the key): nothing rejected, scores exact.

    A partitioner that is consistent per key keeps each pair's events in the
    order they were produced, which is all the spec asks of the pair lane.
    """
    lines = _lines(PopulationConfig(users=200, events=2000, seed=4))
    expected = compute_reference(lines, RULES)
    rng = random.Random(8)
    pipeline = LocalPipeline(RULES, partitions=4, rng=rng, max_batch=100)
    wrong = 0
    for line in lines:
        try:
            event = ev.from_json_line(line)
        except ev.Rejected:
            continue
        key = ev.key_for(event)
        partition = zlib.crc32(key.encode()) % 4
        wrong += partition != partition_for(key, 4)
        pipeline.produce(ev.topic_for(event), key.encode(), ev.to_bytes(event), partition)
    pipeline.run()
    assert wrong > 1000
    assert sum(n for (name, _), n in pipeline.counts.items() if name == "rerouted") == wrong
    assert pipeline.dead_letters() == []
    assert compare(pipeline.raw_scores(), expected.raw).within(RULES.error_bound)
    assert sum(n for (name, _), n in pipeline.counts.items() if name == "accepted") == expected.summary.accepted


def test_a_record_delivered_twice_or_after_a_restart_changes_nothing():
    lines = _lines(PopulationConfig(users=80, events=800, seed=3))
    once = LocalPipeline(RULES, partitions=3)
    once.produce_lines(lines)
    once.run()
    again = LocalPipeline(RULES, partitions=3, rng=random.Random(9), max_batch=20, duplicate_p=0.2, restart_p=0.1)
    again.produce_lines(lines)
    again.run()
    assert again.restarts > 0 and sum(n for (name, _), n in again.counts.items() if name == "duplicate") > 0
    assert compare(again.raw_scores(), once.raw_scores()).within(2 * RULES.error_bound)
    assert compare(again.raw_scores(), compute_reference(lines, RULES).raw).within(RULES.error_bound)


def test_one_batch_coalesces_what_reaches_a_user_into_one_write_and_one_score():
    pipeline = LocalPipeline(RULES, partitions=1)
    for i in range(50):
        pipeline.produce_event(ev.Purchase(f"p{i}", i, "ann", "groceries", 10.0))
    pipeline.run()
    assert pipeline.batches == 1
    assert len(pipeline.topic(topics.SCORES)) == 1
    assert pipeline.scores()["ann"]["raw"] == pytest.approx(50.0)
