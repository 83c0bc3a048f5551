"""`standing produce`: good events on the right topics with the right keys, bad lines
on the dead-letter topic with their reason, and never a false success."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import codec
from standing.producer import ProduceError, produce_file
from streams import events as ev
from topology import topics
from topology.routing import pair_key, partition_for
from tests.helpers import free_port

LINES = [
    {"type": "purchase", "event_id": "p1", "ts": 1, "user_id": "ann", "category": "books", "amount": 10.0},
    {"type": "post", "event_id": "q1", "ts": 2, "user_id": "bob", "post_id": "x", "labels": ["helpful"]},
    {"type": "friendship", "event_id": "f1", "ts": 3, "user_a": "bob", "user_b": "ann", "action": "add"},
    {"type": "purchase", "event_id": "p2", "ts": 4, "user_id": "ann", "category": "books", "amount": -10.0},
    "this is not json",
    {"type": "friendship", "event_id": "f2", "ts": 5, "user_a": "ann", "user_b": "ann", "action": "add"},
]


async def _read(settings, topic: str) -> list:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records = []
        while sum(ends.values()) > len(records):
            batch = await consumer.getmany(timeout_ms=2000)
            for values in batch.values():
                records += values
        return records
    finally:
        await consumer.stop()


def test_produce_publishes_good_events_and_dead_letters_bad_lines(fresh_settings, tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in LINES) + "\n")
    summary = asyncio.run(produce_file(fresh_settings, path, progress=False))
    assert (summary.lines, summary.sent) == (6, 3)
    assert summary.rejected == {"bad_amount": 1, "invalid_json": 1, "self_friendship": 1}

    purchases = asyncio.run(_read(fresh_settings, topics.PURCHASES))
    assert [(r.key, codec.decode(r.value)[1]["event_id"]) for r in purchases] == [(b"ann", "p1")]
    assert purchases[0].partition == partition_for("ann", fresh_settings.partitions)
    friendships = asyncio.run(_read(fresh_settings, topics.FRIENDSHIPS))
    assert [r.key for r in friendships] == [pair_key("ann", "bob").encode()]
    assert ev.from_bytes(topics.FRIENDSHIPS, friendships[0].value).user_a == "bob"
    assert len(asyncio.run(_read(fresh_settings, topics.POSTS))) == 1

    letters = [codec.decode(r.value, "dead_letter")[1] for r in asyncio.run(_read(fresh_settings, topics.DEAD_LETTERS))]
    assert sorted(letter["reason"] for letter in letters) == ["bad_amount", "invalid_json", "self_friendship"]
    by_reason = {letter["reason"]: letter for letter in letters}
    assert by_reason["invalid_json"]["original"] == b"this is not json"
    assert by_reason["bad_amount"]["source"] == "produce"
    assert "line 4" in by_reason["bad_amount"]["detail"]


def test_produce_against_a_dead_broker_fails_clearly(settings, tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(LINES[0]) + "\n")
    dead = replace(settings, broker=f"127.0.0.1:{free_port()}")
    with pytest.raises(ProduceError, match="cannot reach Kafka"):
        asyncio.run(produce_file(dead, path, progress=False))
    done = subprocess.run(
        [sys.executable, "-m", "standing", "produce", str(path), "--broker", dead.broker],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "cannot reach Kafka" in done.stderr and "sent" not in done.stdout
