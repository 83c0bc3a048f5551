"""Helpers shared by the test suites."""

from __future__ import annotations

import re
from pathlib import Path

from standing.processes import free_port

__all__ = ["free_port", "log_excerpt", "read_dead_letters"]

_LEVEL = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]")
#: Faust's livelock notice for changelog partitions no stream reads (a
#: paragraph each); it says nothing about why a test failed.
_NOISE = re.compile(r"Stream has not started processing")


def log_excerpt(path: Path, lines: int = 60) -> str:
    """The last ``lines`` warnings, errors and start-up lines of a worker's log, without Faust's livelock notices."""
    kept: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.replace("\x1b[?25l", "").replace("\x1b[?25h", "")
        if _NOISE.search(line):
            continue
        if _LEVEL.search(line) or line.startswith(("standing worker:", "Traceback")) or re.match(r"^\w*(Error|Exception)\b", line):
            kept.append(line[:400])
    return "\n".join(kept[-lines:])


def wait_until_ready(settings, timeout: float = 60.0) -> None:
    """Until the worker at ``settings``' web port answers /ready with 200 (partitions recovered)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{settings.web_host}:{settings.web_port}/ready", timeout=2):
                return
        except OSError:  # not up yet, or 503 (urllib's HTTPError is an OSError)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def read_dead_letters(settings) -> list[dict]:
    """Every record on ``dead-letters``, decoded (fetch sizes for dead letters of records at the size limit)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from schemas import codec
    from topology import topics

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.broker, enable_auto_commit=False, fetch_max_bytes=64 * 2**20, max_partition_fetch_bytes=32 * 2**20
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.DEAD_LETTERS, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        letters: list[dict] = []
        while len(letters) < sum(ends.values()):
            for records in (await consumer.getmany(timeout_ms=2000)).values():
                letters += [codec.decode(record.value, "dead_letter")[1] for record in records]
        return letters
    finally:
        await consumer.stop()
