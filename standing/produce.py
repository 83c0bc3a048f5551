"""`standing produce FILE`: validate a JSON Lines file and publish it (``EventProducer``).

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

from streams import events as ev
from streams.runtime.producer import EventProducer, ProduceError
from topology.settings import Settings

MAX_PRINTED_REJECTIONS = 20


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
