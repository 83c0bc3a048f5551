"""Where records leave the worker: one aiokafka producer for every output.

A batch collects its records (state changelogs, friend updates, scores, dead
letters) as plain ``Outgoing`` tuples while it decides synchronously; then
``Outputs.deliver`` sends the states, waits for them, sends the rest and waits
again, before the batch's input events are acknowledged.

Faust's own path (``Topic.send_soon``: a FutureMessage, its producer buffer, a
callback per record, and for a changelog a RocksDB write of the offset per
record) cost more per record than our whole decision; here the records of a
delivery for one partition go to aiokafka as one batch (``send_batch``), and
a changelog partition's persisted offset (what Faust reads to resume
recovery on a kept data directory) is written once per delivery, with the
highest offset acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaProducer

from topology.settings import Settings
from topology.topics import MAX_RECORD_BYTES

log = logging.getLogger(__name__)


class ChangelogOwner(Protocol):
    def set_persisted_offset(self, partition: int, offset: int) -> None: ...


class Outgoing(NamedTuple):
    topic: str
    key: bytes | None
    #: None: a tombstone
    value: bytes | None
    partition: int | None
    #: the table whose changelog this is (its persisted offset moves on delivery)
    changelog_of: ChangelogOwner | None = None


class _Sent(NamedTuple):
    """One producer batch handed over: its delivery future and what it holds."""

    future: asyncio.Future
    changelog_of: ChangelogOwner | None
    count: int


def _retrieved(future: asyncio.Future) -> asyncio.Future:
    """``future``, whose failure counts as seen once it settles.

    ``deliver`` raises the first failure of a delivery; the other batches of
    it (or those queued before ``send_batch`` itself failed) would otherwise
    be logged by asyncio as "Future exception was never retrieved", at ERROR,
    for a failure already raised and handled (kept and sent again)."""
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return future


class Outputs:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._queueing_states = asyncio.Lock()  # FIFO: changelog order = call order

    async def _ensure_started(self) -> AIOKafkaProducer:
        if self._producer is None:
            async with self._starting:
                if self._producer is None:
                    producer = AIOKafkaProducer(
                        bootstrap_servers=self._settings.bootstrap_servers,
                        client_id=f"standing-outputs-{self._settings.metrics_port}",
                        acks="all",
                        linger_ms=1,
                        request_timeout_ms=self._settings.request_timeout_ms,
                        max_request_size=MAX_RECORD_BYTES,
                        max_batch_size=512 * 1024,
                        **self._settings.kafka_client_options(),
                    )
                    await producer.start()
                    self._producer = producer
        return self._producer

    async def deliver(self, records: list[Outgoing]) -> None:
        """Send ``records`` and wait until the broker acknowledged every one.

        State first, then what it caused: the changelog records are acknowledged
        before any friend update, link or score of the batch is sent. A worker
        killed between the two leaves states that show their inputs applied and
        their publish made, whose outputs the re-send (streams/runtime/resend.py) sends again unchanged.
        Sent together, a friend update could land while its state's changelog
        record did not: the restored state would publish the same version
        again with another value, which every receiver ignores as stale — a
        score wrong for good.

        Changelog records are queued under a FIFO lock, so they reach Kafka in
        the order the callers asked: a caller that puts states and calls this
        with no await in between has its records after every state put before
        them (a restore replays the changelog in order; the last record wins).

        A failed send raises here instead of letting the batch's input offsets
        be committed past an output that never left (``Scorer._deliver`` then
        keeps what was to be sent, or puts the states back: it says when).
        """
        if not records:
            return
        producer = await self._ensure_started()
        states = [r for r in records if r.changelog_of is not None]
        effects = [r for r in records if r.changelog_of is None]
        if states:
            async with self._queueing_states:
                queued = await self._queue(producer, states)
            self._move_persisted_offsets(queued, await asyncio.gather(*(sent.future for sent in queued)))
        if effects:
            await asyncio.gather(*(sent.future for sent in await self._queue(producer, effects)))

    @staticmethod
    async def _queue(producer: AIOKafkaProducer, records: list[Outgoing]) -> list["_Sent"]:
        """Hand ``records`` to the producer, in order within each partition, one batch per partition.

        ``producer.send`` costs a future, a metadata check and a partitioner
        call per record; a batch of a batch's records for one partition costs
        them once. Records without a partition go where ``send`` would put
        them (the producer's partitioner, by key), so keys never move.
        """
        by_partition: dict[tuple[str, int], list[Outgoing]] = {}
        known_topics: set[str] = set()
        for record in records:
            partition = record.partition
            if partition is None:
                if record.topic not in known_topics:
                    await producer.client._wait_on_metadata(record.topic)
                    known_topics.add(record.topic)
                partition = producer._partition(record.topic, None, record.key, record.value, record.key, record.value)
            group = by_partition.get((record.topic, partition))
            if group is None:
                group = by_partition[(record.topic, partition)] = []
            group.append(record)
        sent: list[_Sent] = []
        for (topic, partition), group in by_partition.items():
            owner = group[0].changelog_of  # one topic: one table's changelog, or none
            batch, count = producer.create_batch(), 0
            for record in group:
                if batch.append(key=record.key, value=record.value, timestamp=None) is None:
                    # Full. A new batch takes its first record whatever its size.
                    sent.append(_Sent(_retrieved(await producer.send_batch(batch, topic, partition=partition)), owner, count))
                    batch, count = producer.create_batch(), 0
                    batch.append(key=record.key, value=record.value, timestamp=None)
                count += 1
            sent.append(_Sent(_retrieved(await producer.send_batch(batch, topic, partition=partition)), owner, count))
        return sent

    @staticmethod
    def _move_persisted_offsets(sent: list["_Sent"], results: list) -> None:
        highest: dict[tuple[int, int], tuple[ChangelogOwner, int, int]] = {}
        for batch, metadata in zip(sent, results):
            last = metadata.offset + batch.count - 1  # a batch's offsets are consecutive
            slot = (id(batch.changelog_of), metadata.partition)
            known = highest.get(slot)
            if known is None or last > known[2]:
                highest[slot] = (batch.changelog_of, metadata.partition, last)
        for owner, partition, offset in highest.values():
            try:
                owner.set_persisted_offset(partition, offset)
            except Exception as error:  # a partition closed by a rebalance meanwhile
                log.debug("persisted offset of partition %d not kept: %r", partition, error)

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()  # flushes what is queued
