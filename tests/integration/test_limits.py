"""No record an input topic accepts can stop a partition: records at the size limit, valid or not,
on every input topic, with scoring going on around them."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas import codec
from tests.helpers import read_dead_letters
from standing import processes
from standing.control import wait_until_quiescent
from standing.reference import compute_reference
from streams import events as ev
from streams.rules import load_rules
from streams.runtime.admin import ensure_topics
from streams.runtime.lookups import read_scores
from topology import topics
from topology.routing import pair_key
from topology.topics import MAX_INPUT_RECORD_BYTES

RULES = load_rules()
#: What fits an input topic: its limit less the batch's framing (72 bytes) and a short key.
AT_THE_LIMIT = MAX_INPUT_RECORD_BYTES - 72 - 64


def _value_of_size(build, size: int) -> bytes:
    """Avro bytes of ``build(padding)`` grown to exactly ``size`` bytes."""
    value = build("")
    pad = size - len(value)
    for _ in range(3):  # a longer string also lengthens its varint prefix
        value = build("x" * pad)
        pad += size - len(value)
    assert len(value) == size, (len(value), size)
    return value


def _records() -> list[tuple[str, bytes, bytes, str]]:
    """(topic, key, value, what becomes of it) at the size limit, for every input topic."""
    purchase = ev.to_record(ev.Purchase("big-purchase", 10, "ann", "x", 4.0))[1]
    post = ev.to_record(ev.Post("big-post", 11, "bob", "p", ()))[1]
    friendship = ev.to_record(ev.Friendship("big-friendship", 12, "ann", "bob", "add", 1.0))[1]
    retraction = ev.to_record(ev.Retraction("big-retraction", 13, "ann", "p1", ""))[1]
    erasure = ev.to_record(ev.Erasure("big-erasure", 14, "cid"))[1]
    return [
        ("purchases", b"ann", _value_of_size(lambda pad: codec.encode("purchase", {**purchase, "category": "c" + pad}), AT_THE_LIMIT), "scored"),
        ("purchases", b"ann", _value_of_size(lambda pad: codec.encode("purchase", {**purchase, "event_id": "neg", "amount": -1.0, "category": pad}), AT_THE_LIMIT), "bad_amount"),
        ("posts", b"bob", _value_of_size(lambda pad: codec.encode("post", {**post, "labels": ["helpful", pad]}), AT_THE_LIMIT), "scored"),
        ("posts", b"bob", _value_of_size(lambda pad: b"\x00\x00\x00\x00\x02" + pad.encode(), AT_THE_LIMIT), "not_decodable"),
        ("friendships", pair_key("ann", "bob").encode(), _value_of_size(lambda pad: codec.encode("friendship", {**friendship, "action": "poke" + pad}), AT_THE_LIMIT), "unknown_action"),
        # a long reason for a dispute upheld: ann's purchase p1 counts nothing
        ("retractions", b"ann", _value_of_size(lambda pad: codec.encode("retraction", {**retraction, "reason": "r" + pad}), AT_THE_LIMIT), "scored"),
        # an erasure has nothing but ids (at most 256 characters): at the limit it can only be wrong
        ("erasures", b"cid", _value_of_size(lambda pad: codec.encode("erasure", {**erasure, "event_id": "e" + pad}), AT_THE_LIMIT), "id_too_long"),
    ]


async def _produce(settings, records) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, max_request_size=2 * 2**20, acks="all")
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


@pytest.mark.timeout(600)
def test_records_at_the_size_limit_on_every_input_topic_never_stop_a_partition(fresh_settings, tmp_path):
    settings = fresh_settings
    big = _records()
    assert {topic for topic, *_ in big} == set(ev.CATALOG.topics()), "every input topic"
    good = [
        ev.Friendship("f1", 1, "ann", "bob", "add", 1.0),
        ev.Purchase("p1", 2, "ann", "groceries", 200.0),
        ev.Post("q1", 3, "cid", "y", ("helpful",)),
    ]
    log_path = tmp_path / "worker.log"
    worker = processes.start_worker_process(settings, log_path=log_path)
    try:
        processes.wait_for_metrics(settings.metrics_port, worker, log_path=log_path)
        later = [ev.Purchase("p2", 20, "ann", "groceries", 100.0), ev.Post("q2", 21, "bob", "z", ("kind",))]
        asyncio.run(_produce(settings, [(ev.topic_for(e), ev.key_for(e).encode(), ev.to_bytes(e)) for e in good]))
        asyncio.run(_produce(settings, [(t, k, v) for t, k, v, _ in big]))
        asyncio.run(_produce(settings, [(ev.topic_for(e), ev.key_for(e).encode(), ev.to_bytes(e)) for e in later]))
        asyncio.run(wait_until_quiescent(settings, timeout=240, progress=None))
        assert worker.poll() is None
        samples = processes.scrape_metrics(settings.metrics_port)
        assert processes.sum_samples(samples, "standing_batch_failures_total") == 0
        assert processes.sum_samples(samples, "standing_ready") == 1
    finally:
        processes.stop_process(worker)

    letters = asyncio.run(read_dead_letters(settings))
    rejected = [(topic, value, outcome) for topic, _, value, outcome in big if outcome != "scored"]
    assert sorted((letter["topic"], letter["reason"]) for letter in letters) == sorted((t, o) for t, _, o in rejected)
    assert {letter["original"] for letter in letters} == {value for _, value, _ in rejected}, "whole originals"
    # everything valid was scored, the big valid events included, as the reference scores them
    lines = [ev.to_json_dict(e) for e in good + later] + [
        {"type": topic[:-1], **codec.decode(value, topic[:-1])[1]} for topic, _, value, outcome in big if outcome == "scored"
    ]
    import json

    expected = compute_reference([json.dumps(line) for line in lines], RULES).raw
    scores = {user: score["raw"] for user, score in asyncio.run(read_scores(settings)).items()}
    assert set(scores) == set(expected)
    for user, raw in expected.items():
        assert scores[user] == pytest.approx(raw, abs=RULES.error_bound)


def test_an_existing_dead_letters_topic_with_the_brokers_limit_is_raised_and_keeps_its_retention(fresh_broker, tmp_path):
    from tests.conftest import _settings_for

    settings = _settings_for(fresh_broker, tmp_path)

    async def run() -> dict[str, str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topics.DEAD_LETTERS, settings.partitions, 1, topic_configs={"retention.ms": "123456789"})])
            await asyncio.sleep(0.5)
            await ensure_topics(settings)
            [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics.DEAD_LETTERS)])
            return {entry[0]: entry[1] for entry in response.resources[0][4]}
        finally:
            await admin.close()

    configs = asyncio.run(run())
    assert int(configs["max.message.bytes"]) == topics.MAX_RECORD_BYTES
    assert configs["retention.ms"] == "123456789", "the operator's retention is kept"
