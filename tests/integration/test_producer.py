"""`standing produce`: good events on the right topics with the right keys, bad lines
on the dead-letter topic with their reason, and never a false success."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import codec
from standing.produce import MAX_PRINTED_REJECTIONS, produce_file, produce_file_sync
from streams.runtime.producer import EventProducer, ProduceError
from streams import events as ev
from tests.helpers import free_port
from topology import topics
from streams.runtime.admin import end_offsets
from topology.routing import pair_key, partition_for

GOOD = [
    {"type": "purchase", "event_id": "p1", "ts": 1, "user_id": "ann", "category": "books", "amount": 10.0},
    {"type": "post", "event_id": "q1", "ts": 2, "user_id": "bob", "post_id": "x", "labels": ["helpful"]},
    {"type": "friendship", "event_id": "f1", "ts": 3, "user_a": "bob", "user_b": "ann", "action": "add"},
    {"type": "purchase", "event_id": "p3", "ts": 6, "user_id": "Zoë", "category": "books", "amount": 1, "merchant_id": "m"},
    {"type": "friendship", "event_id": "f3", "ts": 7, "user_a": "ann", "user_b": "cid", "action": "remove", "weight": 2},
]  # fmt: skip
BAD = [  # (line, reason)
    (json.dumps({"type": "purchase", "event_id": "p2", "ts": 4, "user_id": "ann", "category": "books", "amount": -10.0}), "bad_amount"),
    ("this is not json", "invalid_json"),
    (json.dumps({"type": "friendship", "event_id": "f2", "ts": 5, "user_a": "ann", "user_b": "ann", "action": "add"}), "self_friendship"),
    (json.dumps({"type": "review", "event_id": "r1", "ts": 5}), "unknown_type"),
]  # fmt: skip


async def _read(settings, topic: str) -> list:
    """Every record of a topic, from the beginning to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records = []
        deadline = time.monotonic() + 30
        while sum(ends.values()) > len(records) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for values in batch.values():
                records += values
        assert sum(ends.values()) == len(records), f"read {len(records)} of {sum(ends.values())} records of {topic}"
        return records
    finally:
        await consumer.stop()


def _write_lines(path, lines: list[str]) -> None:
    path.write_bytes("".join(line + "\n" for line in lines).encode())


def test_produce_publishes_good_events_once_and_dead_letters_bad_lines(fresh_settings, tmp_path):
    path = tmp_path / "events.jsonl"
    # Interleave good and bad lines, with blank and whitespace-only lines that are not events.
    lines = [json.dumps(GOOD[0]), BAD[0][0], "", json.dumps(GOOD[1]), BAD[1][0], json.dumps(GOOD[2]), "   ", BAD[2][0]]
    lines += [json.dumps(GOOD[3]), BAD[3][0], json.dumps(GOOD[4]), "\r"]
    _write_lines(path, lines)
    out = io.StringIO()
    summary = asyncio.run(produce_file(fresh_settings, path, stream=out))
    assert (summary.lines, summary.sent) == (9, 5)
    assert summary.rejected == {"bad_amount": 1, "invalid_json": 1, "self_friendship": 1, "unknown_type": 1}
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("line 2: bad_amount: amount is -10.0")
    assert printed[1].startswith("line 5: invalid_json: ")
    assert printed[-1].startswith("produce: 9 lines (5 sent, 4 rejected)")

    by_topic = {name: asyncio.run(_read(fresh_settings, name)) for name in (*("purchases", "posts", "friendships"), topics.DEAD_LETTERS)}
    arrived = {}
    for name in ("purchases", "posts", "friendships"):
        for record in by_topic[name]:
            event = ev.from_bytes(name, record.value)
            assert record.key == ev.key_for(event).encode()
            assert record.partition == partition_for(record.key, fresh_settings.partitions)
            assert event.event_id not in arrived, "delivered twice"
            arrived[event.event_id] = (name, event)
    assert arrived == {
        line["event_id"]: (("purchases", "posts", "friendships")[("purchase", "post", "friendship").index(line["type"])], ev.from_dict(line))
        for line in GOOD
    }
    friendship_keys = {record.key for record in by_topic["friendships"]}
    assert friendship_keys == {pair_key("ann", "bob").encode(), pair_key("ann", "cid").encode()}

    letters = [codec.decode(record.value, "dead_letter")[1] for record in by_topic[topics.DEAD_LETTERS]]
    assert sorted((letter["reason"], letter["original"]) for letter in letters) == sorted(
        (reason, line.encode()) for line, reason in BAD
    )
    for letter in letters:
        assert letter["source"] == "produce" and letter["topic"] is None and letter["offset"] is None
        assert letter["detail"].startswith("line ") and "events.jsonl" in letter["detail"]


def test_producer_api_sends_events_and_dead_letters_with_their_origin(fresh_settings):
    purchase = ev.from_dict(GOOD[0])

    async def produce() -> None:
        async with EventProducer(fresh_settings) as producer:
            await producer.send(purchase)
            await producer.send_dead_letter(
                b"\x00\x00\x00\x00\x01junk", "not_decodable", "the body is not a purchase",
                source="worker", topic="purchases", partition=2, offset=41, key=b"ann",
            )  # fmt: skip

    asyncio.run(produce())
    [sent] = asyncio.run(_read(fresh_settings, "purchases"))
    assert (sent.key, ev.from_bytes("purchases", sent.value)) == (b"ann", purchase)
    [letter] = asyncio.run(_read(fresh_settings, topics.DEAD_LETTERS))
    assert letter.key == b"ann"
    record = codec.decode(letter.value, "dead_letter")[1]
    assert record["received_ts"] > 0
    assert {k: v for k, v in record.items() if k != "received_ts"} == {
        "reason": "not_decodable", "detail": "the body is not a purchase", "topic": "purchases",
        "partition": 2, "offset": 41, "key": b"ann", "original": b"\x00\x00\x00\x00\x01junk", "source": "worker",
    }  # fmt: skip


def test_produce_creates_missing_topics_with_the_configured_partitions(fresh_broker, settings, tmp_path):
    """Otherwise the broker auto-creates them with one partition and the worker
    cannot co-partition them."""
    fresh = replace(settings, broker=fresh_broker.address, partitions=3)
    path = tmp_path / "events.jsonl"
    _write_lines(path, [json.dumps(GOOD[0]), BAD[0][0]])
    summary = produce_file_sync(fresh, path, progress=False, stream=io.StringIO())
    assert (summary.sent, summary.rejected.total()) == (1, 1)
    offsets = asyncio.run(end_offsets(fresh, [*("purchases", "posts", "friendships"), topics.DEAD_LETTERS]))
    for name in (*("purchases", "posts", "friendships"), topics.DEAD_LETTERS):
        assert sorted(tp.partition for tp in offsets if tp.topic == name) == [0, 1, 2], name


def test_produce_refuses_topics_with_another_partition_count(fresh_settings, tmp_path):
    path = tmp_path / "events.jsonl"
    _write_lines(path, [json.dumps(GOOD[0])])
    with pytest.raises(ProduceError, match="partitions"):
        produce_file_sync(replace(fresh_settings, partitions=fresh_settings.partitions + 1), path, progress=False)
    assert asyncio.run(_read(fresh_settings, "purchases")) == []


def test_only_the_first_rejections_are_printed_but_all_are_dead_lettered(fresh_settings, tmp_path):
    path = tmp_path / "events.jsonl"
    extra = 5
    _write_lines(path, [f"bad line {n}" for n in range(MAX_PRINTED_REJECTIONS + extra)])
    out = io.StringIO()
    summary = produce_file_sync(fresh_settings, path, progress=False, stream=out)
    assert summary.rejected == {"invalid_json": MAX_PRINTED_REJECTIONS + extra}
    printed = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in printed[:-1]] == [f"line {n}" for n in range(1, MAX_PRINTED_REJECTIONS + 1)]
    assert printed[-1] == f"... and {extra} more rejected lines (all on the dead-letter topic)"
    assert len(asyncio.run(_read(fresh_settings, topics.DEAD_LETTERS))) == MAX_PRINTED_REJECTIONS + extra


def test_produce_against_a_dead_broker_fails_clearly(settings, tmp_path):
    path = tmp_path / "events.jsonl"
    _write_lines(path, [json.dumps(GOOD[0])])
    dead = replace(settings, broker=f"127.0.0.1:{free_port()}")
    with pytest.raises(ProduceError, match=f"cannot reach Kafka at {dead.broker}; start it with `standing broker`"):
        asyncio.run(produce_file(dead, path, progress=False))
    done = subprocess.run(
        [sys.executable, "-m", "standing", "produce", str(path), "--broker", dead.broker],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "cannot reach Kafka" in done.stderr and "sent" not in done.stdout
