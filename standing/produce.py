"""Publishing events: the Python producer API and `standing produce FILE`.

Events are validated at the edge (``streams.events``), encoded in the
Confluent wire format and keyed as the spec says. A bad line goes to the
dead-letter topic with its reason; nothing is reported sent before the broker
has acknowledged it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import codec
from topology.settings import Settings
from streams import events as ev
from topology import topics
from streams.runtime.admin import TopologyError, ensure_topics
from topology.routing import partition_for
from topology.topics import declared_topics

#: Records are confirmed in chunks of this many; up to MAX_CHUNKS_IN_FLIGHT
#: chunks are unconfirmed at once, so the pipe to the broker never runs dry
#: while memory stays bounded.
CHUNK = 1000
MAX_CHUNKS_IN_FLIGHT = 8
MAX_PRINTED_REJECTIONS = 20
#: The topics a producer writes: created (with the configured partitions) if missing.
PRODUCED_TOPICS = (*topics.INPUT_TOPICS, topics.DEAD_LETTERS)


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
    On entry the produced topics are created if missing, so a producer started
    before any worker cannot let the broker auto-create them with the wrong
    partition count.
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
            specs = [spec for spec in declared_topics(self._settings) if spec.name in PRODUCED_TOPICS]
            try:
                await asyncio.wait_for(ensure_topics(self._settings, specs), self._connect_timeout)
            except (TopologyError, KafkaError, OSError, asyncio.TimeoutError) as error:
                await self._producer.stop()
                if isinstance(error, TopologyError):
                    raise ProduceError(str(error)) from None
                raise _unreachable(self._settings) from None
            # ensure_topics checked every produced topic has exactly this many
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


@dataclass
class ProduceSummary:
    #: Non-blank lines read.
    lines: int = 0
    #: Events acknowledged by the broker.
    sent: int = 0
    #: Rejected lines by reason code (each is on the dead-letter topic).
    rejected: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0


class _Console:
    """Rejections as lines, progress as one line rewritten in place on a
    terminal (a few times a second) or as a plain line every few seconds."""

    def __init__(self, stream: TextIO, total_bytes: int, show_progress: bool) -> None:
        self._stream = stream
        self._total = total_bytes
        self._show_progress = show_progress
        try:
            self._tty = stream.isatty()
        except (AttributeError, ValueError):
            self._tty = False
        self._interval = 0.25 if self._tty else 5.0
        self._started = time.monotonic()
        self._next = self._started + self._interval
        self._progress_width = 0  # characters of a progress line now on screen (TTY only)

    def say(self, text: str) -> None:
        self._clear()
        print(text, file=self._stream, flush=True)

    def tick(self, summary: ProduceSummary, position: int) -> None:
        """Cheap unless a progress line is due."""
        if self._show_progress and time.monotonic() >= self._next:
            self._next = time.monotonic() + self._interval
            self._progress(summary, position, final=False)

    def finish(self, summary: ProduceSummary) -> None:
        if self._show_progress:
            self._progress(summary, self._total, final=True)

    def _clear(self) -> None:
        if self._progress_width:
            print("\r" + " " * self._progress_width + "\r", end="", file=self._stream)
            self._progress_width = 0

    def _progress(self, summary: ProduceSummary, position: int, final: bool) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rejected = sum(summary.rejected.values())
        share = f"{100 * position / self._total:5.1f}% " if self._total and not final else ""
        text = (
            f"produce: {share}{summary.lines:,} lines ({summary.sent:,} sent, {rejected:,} rejected)"
            f"{f' in {elapsed:.1f} s' if final else ''}, {summary.lines / elapsed:,.0f} lines/s"
        )
        if self._tty and not final:
            print("\r" + text.ljust(self._progress_width), end="", file=self._stream, flush=True)
            self._progress_width = max(len(text), self._progress_width)
        else:
            self.say(text)


async def produce_file(
    settings: Settings,
    path: Path,
    *,
    progress: bool = True,
    stream: TextIO | None = None,
    connect_timeout: float = 10.0,
) -> ProduceSummary:
    """Validate and publish a JSON Lines file; bad lines go to the dead-letter topic.

    Returns only once every event and dead letter is acknowledged; raises
    ProduceError (and reports nothing as sent) if the broker is unreachable or
    a send fails. Blank lines are skipped; ``stream`` (stderr by default) gets
    the first rejections and the progress line.
    """
    stream = stream if stream is not None else sys.stderr
    summary = ProduceSummary()
    started = time.monotonic()
    console = _Console(stream, path.stat().st_size, progress)
    position = 0
    async with EventProducer(settings, connect_timeout=connect_timeout) as producer:
        with path.open("rb") as file:
            for number, raw in enumerate(file, start=1):
                position += len(raw)
                if raw.isspace():
                    continue
                summary.lines += 1
                try:
                    event = ev.from_json_line(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
                except UnicodeDecodeError as error:
                    rejection = ev.Rejected("invalid_json", f"the line is not UTF-8 text ({error.reason} at byte {error.start})")
                except ev.Rejected as error:
                    rejection = error
                else:
                    try:
                        await producer.send(event)
                    except ProduceError as error:
                        raise ProduceError(f"line {number}: {error}") from None
                    summary.sent += 1
                    console.tick(summary, position)
                    continue
                summary.rejected[rejection.reason] += 1
                if summary.rejected.total() <= MAX_PRINTED_REJECTIONS:
                    console.say(f"line {number}: {rejection.reason}: {rejection.detail}")
                line = raw.rstrip(b"\r\n")
                try:
                    await producer.send_dead_letter(line, rejection.reason, f"line {number} of {path.name}: {rejection.detail}")
                except ProduceError as error:
                    raise ProduceError(f"line {number} (dead letter): {error}") from None
                console.tick(summary, position)
        await producer.flush()
    rejected = summary.rejected.total()
    if rejected > MAX_PRINTED_REJECTIONS:
        console.say(f"... and {rejected - MAX_PRINTED_REJECTIONS} more rejected lines (all on the dead-letter topic)")
    summary.elapsed_s = time.monotonic() - started
    console.finish(summary)
    return summary


def produce_file_sync(
    settings: Settings,
    path: Path,
    *,
    progress: bool = True,
    stream: TextIO | None = None,
    connect_timeout: float = 10.0,
) -> ProduceSummary:
    """``produce_file`` for callers without an event loop."""
    return asyncio.run(produce_file(settings, path, progress=progress, stream=stream, connect_timeout=connect_timeout))
