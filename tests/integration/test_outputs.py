"""Where records leave the worker (streams/runtime/output.py), against the real broker: order
within each partition, keys where the producer's partitioner puts them, and the
persisted offset of each changelog partition at its last acknowledged record."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from streams.runtime.output import Outgoing, Outputs
from topology import topics


class _Table:
    """A changelog's owner: remembers the persisted offsets it is told."""

    def __init__(self) -> None:
        self.persisted: dict[int, int] = {}

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        self.persisted[partition] = offset


async def _read_all(settings, topic: str) -> dict[int, list[tuple[bytes | None, bytes]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        got: dict[int, list] = {tp.partition: [] for tp in partitions}
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                got[tp.partition] += [(record.key, record.value) for record in batch]
        return got
    finally:
        await consumer.stop()


async def _partitions(consumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic)


def test_records_leave_in_order_per_partition_with_keys_where_the_partitioner_puts_them(fresh_settings):
    settings = fresh_settings
    changelog = topics.changelog_topic(settings.app_id, topics.USERS_TABLE)
    table = _Table()
    # Over the producer's 512 KB batch: each changelog partition takes several batches.
    states = [Outgoing(changelog, f"u{i}".encode(), bytes([i % 251]) * 700, i % 3, table) for i in range(3000)]
    celebrity = Outgoing(changelog, b"celebrity", b"c" * (2 * 2**20), 1, table)  # one record above a batch
    scores = [Outgoing(topics.SCORES, f"u{i}".encode(), f"score {i}".encode(), None) for i in range(200)]

    async def deliver() -> None:
        outputs = Outputs(settings)
        try:
            await outputs.deliver(states[:1500] + [celebrity] + states[1500:] + scores)
        finally:
            await outputs.stop()

    asyncio.run(deliver())
    written = asyncio.run(_read_all(settings, changelog))
    expected = {p: [(r.key, r.value) for r in states[:1500] + [celebrity] + states[1500:] if r.partition == p] for p in range(3)}
    for partition in range(3):
        assert written[partition] == expected[partition]
        assert table.persisted[partition] == len(expected[partition]) - 1  # the last record's offset
    published = asyncio.run(_read_all(settings, topics.SCORES))
    partitioner = DefaultPartitioner()
    count = len(published)
    for record in scores:
        partition = partitioner(record.key, list(range(count)), list(range(count)))
        assert (record.key, record.value) in published[partition]
    assert sum(len(records) for records in published.values()) == len(scores)
