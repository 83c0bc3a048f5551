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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from schemas import codec
from standing.settings import Settings
from streams import events as ev
from topology import topics

#: Records in flight before the producer waits for acknowledgements.
WINDOW = 5000
MAX_PRINTED_REJECTIONS = 20


class ProduceError(Exception):
    pass


class EventProducer:
    """``async with EventProducer(settings) as producer: await producer.send(event)``."""

    def __init__(self, settings: Settings, *, connect_timeout: float = 10.0) -> None:
        self._settings = settings
        self._connect_timeout = connect_timeout
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=256 * 1024,
            request_timeout_ms=15000,
            **settings.kafka_client_options(),
        )
        self._in_flight: list[asyncio.Future] = []

    async def __aenter__(self) -> "EventProducer":
        try:
            await asyncio.wait_for(self._producer.start(), self._connect_timeout)
        except (KafkaConnectionError, KafkaError, OSError, asyncio.TimeoutError):
            await self._producer.stop()
            raise ProduceError(
                f"cannot reach Kafka at {self._settings.broker}; start it with `standing broker` or pass --broker HOST:PORT"
            ) from None
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            await self._producer.stop()

    async def _queue(self, topic: str, key: bytes | None, value: bytes) -> None:
        try:
            self._in_flight.append(await self._producer.send(topic, value, key=key))
        except KafkaError as error:
            raise ProduceError(f"could not send to {topic} at {self._settings.broker}: {error}") from None
        if len(self._in_flight) >= WINDOW:
            await self.flush()

    async def send(self, event: ev.Event) -> None:
        """Queue one validated event (delivery is confirmed by ``flush``)."""
        await self._queue(ev.topic_for(event), ev.key_for(event).encode(), ev.to_bytes(event))

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
        record = {
            "reason": reason,
            "detail": detail,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key,
            "original": original,
            "received_ts": int(time.time() * 1000),
            "source": source,
        }
        await self._queue(topics.DEAD_LETTERS, key, codec.encode("dead_letter", record))

    async def flush(self) -> None:
        """Wait until every queued record is acknowledged; ProduceError if any failed."""
        in_flight, self._in_flight = self._in_flight, []
        if not in_flight:
            return
        results = await asyncio.gather(*in_flight, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise ProduceError(
                f"{len(failures)} of {len(results)} records were not acknowledged by Kafka at {self._settings.broker}: {failures[0]!r}"
            )


@dataclass
class ProduceSummary:
    lines: int = 0
    sent: int = 0
    rejected: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0


class _Progress:
    def __init__(self, stream: TextIO | None, total_bytes: int) -> None:
        self._stream = stream
        self._total = total_bytes
        self._tty = bool(stream and stream.isatty())
        self._started = time.monotonic()
        self._last = 0.0

    def update(self, lines: int, position: int, final: bool = False) -> None:
        if self._stream is None:
            return
        now = time.monotonic()
        if not final and now - self._last < (0.25 if self._tty else 5.0):
            return
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        share = f"{100 * position / self._total:5.1f}% " if self._total else ""
        text = f"produce: {share}{lines} lines, {lines / elapsed:,.0f} lines/s"
        if self._tty:
            print("\r" + text, end="\n" if final else "", file=self._stream, flush=True)
        else:
            print(text, file=self._stream, flush=True)


async def produce_file(settings: Settings, path: Path, *, progress: bool = True, stream: TextIO = sys.stderr) -> ProduceSummary:
    """Validate and publish a JSON Lines file; bad lines go to the dead-letter topic."""
    summary = ProduceSummary()
    started = time.monotonic()
    meter = _Progress(stream if progress else None, path.stat().st_size)
    async with EventProducer(settings) as producer:
        with path.open("rb") as file:
            for number, raw in enumerate(file, start=1):
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                summary.lines += 1
                try:
                    event = ev.from_json_line(line.decode("utf-8"))
                except UnicodeDecodeError:
                    rejection = ev.Rejected("invalid_json", "the line is not UTF-8 text")
                except ev.Rejected as error:
                    rejection = error
                else:
                    await producer.send(event)
                    summary.sent += 1
                    meter.update(summary.lines, file.tell())
                    continue
                summary.rejected[rejection.reason] += 1
                if sum(summary.rejected.values()) <= MAX_PRINTED_REJECTIONS:
                    print(f"line {number}: {rejection.reason}: {rejection.detail}", file=stream)
                await producer.send_dead_letter(line, rejection.reason, f"line {number} of {path.name}: {rejection.detail}")
        await producer.flush()
    rejected = sum(summary.rejected.values())
    if rejected > MAX_PRINTED_REJECTIONS:
        print(f"... and {rejected - MAX_PRINTED_REJECTIONS} more rejected lines (all on the dead-letter topic)", file=stream)
    meter.update(summary.lines, path.stat().st_size, final=True)
    summary.elapsed_s = time.monotonic() - started
    return summary
