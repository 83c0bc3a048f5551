"""Looking at a running system from outside: the group's backlog and the scores topic.

For the commands (`standing wait`, `dump`, `replay`, `demo`, `bench`). Quiescence
is read from Kafka, not guessed with sleeps: the worker's group commits an
offset only after everything that record caused (state changelog, friend
updates, scores) has been acknowledged by the broker. So if, reading the
committed offsets first and the end offsets second, every partition of every
topic the group consumes has committed == end, then at the moment of the first
read every record ever produced had been processed and every record those
caused was already in the log: nothing was in flight.

Nothing here creates a topic: a partition that does not exist counts as empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas import codec
from streams.events import CATALOG, Catalog
from topology import topics
from topology.settings import Settings


def consumed_topics(catalog: Catalog = CATALOG) -> tuple[str, ...]:
    """Everything the worker's consumer group reads (dead letters are only counted)."""
    return (*catalog.topics(), topics.FRIEND_UPDATES, topics.PAIR_UPDATES)


@dataclass
class Backlog:
    """Records produced but not yet committed by the worker, per topic."""

    per_topic: dict[str, int]
    members: int

    @property
    def total(self) -> int:
        return sum(self.per_topic.values())


class GroupWatch:
    """``async with GroupWatch(settings) as watch: await watch.backlog()``: the group's progress, read-only."""

    def __init__(self, settings: Settings, catalog: Catalog = CATALOG) -> None:
        self._settings = settings
        self._topics = consumed_topics(catalog)
        options = settings.kafka_client_options()
        self.admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **options)
        # Never asks the broker to create a topic: metadata for what does not exist stays absent.
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, **options)

    async def __aenter__(self) -> "GroupWatch":
        await self.admin.start()
        try:
            await self.consumer.start()
        except BaseException:
            await self.admin.close()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self.consumer.stop()
        finally:
            await self.admin.close()

    async def backlog(self) -> Backlog:
        return await backlog(self._settings, self.admin, self.consumer, self._topics)

    async def members(self) -> int:
        return member_count(await self.admin.describe_consumer_groups([self._settings.app_id]))


async def backlog(
    settings: Settings, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, consumed: tuple[str, ...] | None = None
) -> Backlog:
    consumed = consumed if consumed is not None else consumed_topics()
    existing = await consumer.topics()
    partitions = [TopicPartition(topic, p) for topic in consumed if topic in existing for p in range(settings.partitions)]
    committed = await admin.list_consumer_group_offsets(settings.app_id)
    ends = await consumer.end_offsets(partitions) if partitions else {}
    per_topic = {topic: 0 for topic in consumed}
    for tp in partitions:
        entry = committed.get(tp)
        done = entry.offset if entry is not None and entry.offset >= 0 else 0
        per_topic[tp.topic] += max(0, ends[tp] - done)
    groups = await admin.describe_consumer_groups([settings.app_id])
    return Backlog(per_topic, member_count(groups))


def member_count(groups) -> int:
    try:
        response = groups[0]
        group = response.groups[0] if hasattr(response, "groups") else response
        # (error_code, group_id, state, protocol_type, protocol, members, ...)
        return len(group[5])
    except (IndexError, TypeError, AttributeError):
        return -1  # unknown: the broker did not say


async def group_has_members(settings: Settings) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options())
    await admin.start()
    try:
        return member_count(await admin.describe_consumer_groups([settings.app_id])) > 0
    finally:
        await admin.close()


async def read_scores(settings: Settings) -> dict[str, dict]:
    """The newest record (highest version) of every user on the compacted scores topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, **settings.kafka_client_options()
    )
    await consumer.start()
    latest: dict[str, dict] = {}
    #: user -> the version its tombstone withdrew (an older record read later does not bring it back)
    erased: dict[str, int] = {}
    try:
        if topics.SCORES not in await consumer.topics():
            return latest
        partitions = [TopicPartition(topics.SCORES, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
            for tp, records in batches.items():
                for record in records:
                    if record.value is None:  # a tombstone: the user was erased
                        user = record.key.decode()
                        erased[user] = max(erased.get(user, -1), version_of(latest.pop(user, None)))
                        continue
                    _, score = codec.decode(record.value, "score")
                    held = latest.get(score["user_id"])
                    # versions, not offsets, say which is newest (a re-send
                    # after a crash may repeat an older one)
                    if (held is None or score["version"] >= held["version"]) and score["version"] > erased.get(score["user_id"], -1):
                        latest[score["user_id"]] = score
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return latest


def version_of(score: dict | None) -> int:
    return -1 if score is None else score["version"]


async def new_scores(settings: Settings, stop: Callable[[], bool]) -> AsyncIterator[dict]:
    """Score records published from now on, decoded, until ``stop()`` (the demo's top movers)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options())
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.SCORES, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        while not stop():
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                for record in records:
                    if record.value is not None:
                        yield codec.decode(record.value, "score")[1]
    finally:
        await consumer.stop()
