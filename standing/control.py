"""`standing wait` and `standing dump`: looking at a running system from outside.

Quiescence is read from Kafka, not guessed with sleeps. The worker's group
commits an offset only after everything that record caused (state changelog,
friend updates, scores) has been flushed to the broker. So if, reading the
committed offsets first and the end offsets second, every partition of every
topic the group consumes has committed == end, then at the moment of the first
read every record ever produced had been processed and every message those
produced was already in the log: nothing was in flight, and nothing is until
a new input arrives.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas import codec
from topology.settings import Settings
from topology import topics

#: Everything the worker's consumer group reads (dead letters are only counted).
CONSUMED_TOPICS = (topics.PURCHASES, topics.POSTS, topics.FRIENDSHIPS, topics.FRIEND_UPDATES)


class ControlError(Exception):
    pass


@dataclass
class Backlog:
    """Records produced but not yet committed by the worker, per topic."""

    per_topic: dict[str, int]
    members: int

    @property
    def total(self) -> int:
        return sum(self.per_topic.values())


async def backlog(settings: Settings, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> Backlog:
    partitions = [TopicPartition(topic, p) for topic in CONSUMED_TOPICS for p in range(settings.partitions)]
    committed = await admin.list_consumer_group_offsets(settings.app_id)
    ends = await consumer.end_offsets(partitions)
    per_topic = {topic: 0 for topic in CONSUMED_TOPICS}
    for tp in partitions:
        entry = committed.get(tp)
        done = entry.offset if entry is not None and entry.offset >= 0 else 0
        per_topic[tp.topic] += max(0, ends[tp] - done)
    groups = await admin.describe_consumer_groups([settings.app_id])
    members = member_count(groups)
    return Backlog(per_topic, members)


def member_count(groups) -> int:
    try:
        response = groups[0]
        group = response.groups[0] if hasattr(response, "groups") else response
        # (error_code, group_id, state, protocol_type, protocol, members, ...)
        return len(group[5])
    except (IndexError, TypeError, AttributeError):
        return -1  # unknown: the broker did not say


async def wait_until_quiescent(
    settings: Settings,
    *,
    timeout: float = 600.0,
    no_worker_grace: float = 30.0,
    progress: TextIO | None = sys.stderr,
    poll: float = 0.2,
) -> float:
    """Return (seconds waited) once nothing is left to process.

    Raises ControlError at ``timeout``, or when records are waiting and no
    worker has been in the group for ``no_worker_grace`` seconds.
    """
    started = time.monotonic()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options())
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options())
    await admin.start()
    await consumer.start()
    last_print = 0.0
    no_worker_since: float | None = None
    try:
        while True:
            state = await backlog(settings, admin, consumer)
            now = time.monotonic()
            if state.total == 0:
                if progress is not None and last_print:
                    prefix = "\r" if progress.isatty() else ""
                    print(f"{prefix}quiescent after {now - started:.1f} s{' ' * 40}", file=progress, flush=True)
                return now - started
            if state.members == 0:
                no_worker_since = no_worker_since or now
                if now - no_worker_since > no_worker_grace:
                    raise ControlError(
                        f"{state.total} records are waiting but no worker of group {settings.app_id!r} has been "
                        f"running for {no_worker_grace:.0f} s; start one with `standing worker --broker {settings.broker}`"
                    )
            else:
                no_worker_since = None
            if now - started > timeout:
                raise ControlError(f"still {state.total} records to process after {timeout:.0f} s ({state.per_topic})")
            interactive = progress is not None and progress.isatty()
            if progress is not None and now - last_print >= (0.5 if interactive else 5.0):
                detail = ", ".join(f"{topic} {count}" for topic, count in state.per_topic.items() if count)
                text = f"waiting: {state.total} records to process ({detail})"
                print("\r" + text + "   " if interactive else text, end="" if interactive else "\n", file=progress, flush=True)
                last_print = now
            await asyncio.sleep(poll)
    finally:
        await consumer.stop()
        await admin.close()


async def read_scores(settings: Settings) -> dict[str, dict]:
    """The newest record (highest version) of every user on the compacted scores topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, **settings.kafka_client_options()
    )
    await consumer.start()
    latest: dict[str, dict] = {}
    try:
        partitions = [TopicPartition(topics.SCORES, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
            for tp, records in batches.items():
                for record in records:
                    _, score = codec.decode(record.value, "score")
                    held = latest.get(score["user_id"])
                    # versions, not offsets, say which is newest (a recovery
                    # re-send may repeat an older one)
                    if held is None or score["version"] >= held["version"]:
                        latest[score["user_id"]] = score
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return latest


def write_scores_jsonl(path: Path, scores: dict[str, dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for user_id in sorted(scores):
            score = scores[user_id]
            out.write(json.dumps({"user_id": user_id, "raw": score["raw"], "score": score["score"]}) + "\n")
    return len(scores)


async def dump(settings: Settings, out: Path) -> int:
    return write_scores_jsonl(out, await read_scores(settings))
