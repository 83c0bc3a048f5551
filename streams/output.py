"""Where records leave the worker: one aiokafka producer for every output.

A batch collects its records (state changelogs, friend updates, scores, dead
letters) as plain ``Outgoing`` tuples while it decides synchronously; then
``Outputs.deliver`` queues them in order and waits until the broker has
acknowledged every one, before the batch's input events are acknowledged.

Faust's own path (``Topic.send_soon``: a FutureMessage, its producer buffer, a
callback per record, and for a changelog a RocksDB write of the offset per
record) cost more per record than our whole decision; here a record is one
``AIOKafkaProducer.send`` and a changelog partition's persisted offset (what
Faust reads to resume recovery on a kept data directory) is written once per
batch, with the highest offset acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaProducer

from standing.settings import Settings
from topology.topics import MAX_RECORD_BYTES

log = logging.getLogger(__name__)


class ChangelogOwner(Protocol):
    def set_persisted_offset(self, partition: int, offset: int) -> None: ...


class Outgoing(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None
    #: the table whose changelog this is (its persisted offset moves on delivery)
    changelog_of: ChangelogOwner | None = None


class Outputs:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def _ensure_started(self) -> AIOKafkaProducer:
        if self._producer is None:
            async with self._starting:
                if self._producer is None:
                    producer = AIOKafkaProducer(
                        bootstrap_servers=self._settings.bootstrap_servers,
                        client_id=f"standing-outputs-{self._settings.metrics_port}",
                        acks="all",
                        linger_ms=1,
                        max_request_size=MAX_RECORD_BYTES,
                        max_batch_size=512 * 1024,
                        **self._settings.kafka_client_options(),
                    )
                    await producer.start()
                    self._producer = producer
        return self._producer

    async def deliver(self, records: list[Outgoing]) -> None:
        """Queue ``records`` in order and wait until the broker acknowledged all.

        A failed send raises here (and stops the agent) instead of letting the
        batch's input offsets be committed past an output that never left.
        """
        if not records:
            return
        producer = await self._ensure_started()
        futures = [await producer.send(r.topic, r.value, key=r.key, partition=r.partition) for r in records]
        results = await asyncio.gather(*futures)
        highest: dict[tuple[int, int], tuple[ChangelogOwner, int, int]] = {}
        for record, metadata in zip(records, results):
            if record.changelog_of is not None:
                slot = (id(record.changelog_of), metadata.partition)
                known = highest.get(slot)
                if known is None or metadata.offset > known[2]:
                    highest[slot] = (record.changelog_of, metadata.partition, metadata.offset)
        for owner, partition, offset in highest.values():
            try:
                owner.set_persisted_offset(partition, offset)
            except Exception as error:  # a partition closed by a rebalance meanwhile
                log.debug("persisted offset of partition %d not kept: %r", partition, error)

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()  # flushes what is queued
