"""Publishing events from a program: ``EventProducer``.

Events are validated before (``streams.events``), encoded in the Confluent
wire format and keyed as the spec says (by user_id, friendships by the
unordered pair), on the partition Kafka's default partitioner (murmur2)
gives the key. Nothing is reported sent before the broker has acknowledged it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import codec
from streams import events as ev
from streams.runtime.admin import TopologyError, ensure_topics
from topology import topics
from topology.routing import partition_for
from topology.settings import Settings

#: Records are confirmed in chunks of this many; up to MAX_CHUNKS_IN_FLIGHT
#: chunks are unconfirmed at once, so the pipe to the broker never runs dry
#: while memory stays bounded.
CHUNK = 1000
MAX_CHUNKS_IN_FLIGHT = 8


class ProduceError(Exception):
    """Events could not be published (broker unreachable, send failed, topics wrong)."""


def _unreachable(settings: Settings) -> ProduceError:
    return ProduceError(
        f"cannot reach Kafka at {settings.broker}; start it with `standing broker` or pass --broker HOST:PORT"
    )


class EventProducer:
    """``async with EventProducer(settings) as producer: await producer.send(event)``.

    ``send`` only queues; leaving the block (or ``flush``) waits until the
    broker has acknowledged everything, and raises ProduceError if it did not.
    On entry every topic is created if missing (all of them, from the
    topology), so a producer started before any worker cannot let the broker
    auto-create one with the wrong partition count.
    """

    def __init__(self, settings: Settings, *, connect_timeout: float = 10.0, create_topics: bool = True) -> None:
        self._settings = settings
        self._connect_timeout = connect_timeout
        self._create_topics = create_topics
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=256 * 1024,
            request_timeout_ms=15000,
            **settings.kafka_client_options(),
        )
        #: Partition count of the produced topics once they are known to have
        #: settings.partitions; None leaves partitioning to aiokafka.
        self._partitions: int | None = None
        self._chunk: list[asyncio.Future] = []
        self._chunks: deque[list[asyncio.Future]] = deque()

    async def __aenter__(self) -> "EventProducer":
        try:
            await asyncio.wait_for(self._producer.start(), self._connect_timeout)
        except (KafkaError, OSError, asyncio.TimeoutError):
            await self._producer.stop()
            raise _unreachable(self._settings) from None
        if self._create_topics:
            try:
                await asyncio.wait_for(ensure_topics(self._settings), self._connect_timeout)
            except (TopologyError, KafkaError, OSError, asyncio.TimeoutError) as error:
                await self._producer.stop()
                if isinstance(error, TopologyError):
                    raise ProduceError(str(error)) from None
                raise _unreachable(self._settings) from None
            # ensure_topics checked every topic has exactly this many
            # partitions, so keys can be hashed here with the cached function
            # the worker uses (the same as Kafka's default partitioner).
            self._partitions = self._settings.partitions
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            await self._producer.stop()

    async def _queue(self, topic: str, key: bytes | None, value: bytes) -> None:
        partition = partition_for(key, self._partitions) if self._partitions is not None and key is not None else None
        try:
            future = await self._producer.send(topic, value, key=key, partition=partition)
        except KafkaError as error:
            raise ProduceError(f"could not send to {topic} at {self._settings.broker}: {error!r}") from None
        chunk = self._chunk
        chunk.append(future)
        if len(chunk) >= CHUNK:
            self._chunks.append(chunk)
            self._chunk = []
            if len(self._chunks) > MAX_CHUNKS_IN_FLIGHT:
                await self._confirm(self._chunks.popleft())

    async def _confirm(self, futures: list[asyncio.Future]) -> None:
        results = await asyncio.gather(*futures, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise ProduceError(
                f"{len(failures)} of {len(results)} records were not acknowledged by Kafka at "
                f"{self._settings.broker}: {failures[0]!r}"
            )

    async def send(self, event: ev.Event) -> None:
        """Queue one validated event for its topic, keyed as the spec says
        (acknowledgement is awaited by ``flush``, or when too much is in flight)."""
        name, record = ev.to_record(event)
        await self._queue(ev.topic_for(event), ev.key_for(event).encode(), codec.encode(name, record))

    async def send_dead_letter(
        self,
        original: bytes,
        reason: str,
        detail: str,
        *,
        source: str = "produce",
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        key: bytes | None = None,
    ) -> None:
        """Queue a rejected input, as received, with why it was rejected."""
        record = {
            "reason": reason,
            "detail": detail,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key,
            "original": bytes(original),
            "received_ts": int(time.time() * 1000),
            "source": source,
        }
        await self._queue(topics.DEAD_LETTERS, key, codec.encode("dead_letter", record))

    async def flush(self) -> None:
        """Wait until every queued record is acknowledged; ProduceError if any failed."""
        chunks = [*self._chunks, self._chunk]
        self._chunks.clear()
        self._chunk = []
        for chunk in chunks:
            if chunk:
                await self._confirm(chunk)
