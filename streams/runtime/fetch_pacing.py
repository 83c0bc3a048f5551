"""Client-side long polling for brokers that answer empty fetches at once.

A Kafka broker holds a fetch until data arrives or ``fetch.max.wait.ms``
passes. noida-db 0.2.3 answers at once, so every idle aiokafka consumer
(Faust's included) re-fetches in a tight loop: measured here, an idle
consumer used 80% of a core, and the broker as much again answering it — on
a 2-core machine that is most of the CPU the worker needs. ``install``
makes aiokafka's fetcher wait out the rest of ``pause`` after an empty
answer, before it asks that broker again. Against a real Kafka the answer to
an empty fetch comes after ``fetch.max.wait.ms`` (longer than the pause), so
nothing changes there. The cost is at most ``pause`` of extra latency for a
record that arrives on an idle consumer.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka.consumer import fetcher as _fetcher

_original = _fetcher.Fetcher._proc_fetch_request
_pause_s = 0.0


async def _paced_fetch_request(self, assignment, node_id, request):
    started = time.monotonic()
    has_new_data = await _original(self, assignment, node_id, request)
    if not has_new_data and _pause_s > 0:
        remaining = _pause_s - (time.monotonic() - started)
        if remaining > 0:
            try:
                await asyncio.sleep(remaining)
            except asyncio.CancelledError:
                # close() or a new assignment cancels pending fetches and awaits
                # them; aiokafka's own request swallows the cancel the same way.
                pass
    return has_new_data


def install(pause_ms: int) -> None:
    """Pace empty fetches in this process to one per ``pause_ms`` per broker (0 turns it off)."""
    global _pause_s
    _pause_s = max(0, pause_ms) / 1000.0
    _fetcher.Fetcher._proc_fetch_request = _paced_fetch_request if _pause_s else _original
