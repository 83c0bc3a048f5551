"""Where input records enter the worker: Faust's consumer hands them over in bulk.

Faust delivers a record to an agent through its per-event stream machinery:
an Event per record, a queue, the stream iterator and its processors, and for
``take_events`` a buffer that refills one event at a time only while the
previous batch is not being processed, then an acknowledgement per event.
Measured here (10k users / 100k events), the agents waited for their next
batch 70-87% of the time while that machinery filled it at about 4k records/s,
and the single loop that feeds every stream stalled behind whichever stream's
queue was full, starving friend updates while the input backlog drained.

``Intake`` keeps everything Faust does for consumer groups, rebalancing and
table recovery, and replaces only the last step: for the partitions of its
topics, the callback Faust's conductor builds per partition appends the
record to one ordered list, which an agent takes in batches. What Faust's
callback does besides delivering is kept: it waits while Faust holds the flow
(rebalances, table recovery), and a partition stops being fetched while too
much is buffered (``Consumer.on_buffer_full``), resuming at half.

Faust's acknowledgements are not used for these partitions: the offsets
committed are the ones ``streams.runtime.commits.InputProgress`` vouches for, which
already sees every batch before it is applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Callable

import faust
from faust.types import TP, Message

from streams.runtime import dispatch

log = logging.getLogger(__name__)


class Intake:
    """The records of some topics, in the order Faust fetched them, taken in batches."""

    def __init__(self, app: faust.App, topic_names: tuple[str, ...], *, batch_size: int, linger: float) -> None:
        self._app = app
        self.topic_names = frozenset(topic_names)
        self._batch_size = batch_size
        self._linger = linger
        #: stop fetching a partition above this many buffered records, resume at half
        self._high = 4 * batch_size
        self._records: list[Message] = []
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._paused: set[TP] = set()
        #: cleared by ``suspend`` (a rebalance): no batch is handed out until ``resume``. Not Faust's
        #: flow control: records already buffered here are handed out whatever it says, and recovery
        #: has been seen to leave it suspended (streams/runtime/stall_watch.py)
        self._resumed = asyncio.Event()
        self._resumed.set()
        #: set by ``close``: no batch is handed out any more
        self.closed = False

    # --- Faust's side: one callback per assigned partition --------------------

    def handler(self, tp: TP) -> Callable[[Message], object]:
        """The callback Faust's consumer calls with each fetched record of ``tp``."""
        acquire_flow = self._app.flow_control.acquire
        records = self._records
        arrived, full = self._arrived, self._full
        batch_size, high = self._batch_size, self._high

        def take(message: Message) -> bool:
            records.append(message)
            buffered = len(records)
            if buffered == 1:
                arrived.set()
            if buffered >= batch_size:
                full.set()
                if buffered >= high and tp not in self._paused:
                    self._paused.add(tp)
                    self._app.consumer.on_buffer_full(tp)
            return True

        async def on_message(message: Message) -> None:
            # Blocks while Faust holds the flow: a rebalance, or tables recovering.
            await acquire_flow()
            take(message)

        # While the flow runs, Faust's consumer calls ``take`` directly (streams/runtime/dispatch.py).
        return dispatch.direct(on_message, take)

    # --- the agent's side -----------------------------------------------------

    async def batches(self, more_work: Callable[[], bool] = lambda: False) -> AsyncIterator[list[Message]]:
        """Batches of up to ``batch_size`` records, each waiting at most ``linger`` to fill.

        While ``more_work()`` (the agent has work left from earlier batches)
        nothing waits: a batch is whatever has arrived, possibly nothing.
        Ends once ``close`` is called, without handing out what is buffered.
        """
        records = self._records
        while not self.closed:
            if not self._resumed.is_set():
                await self._resumed.wait()
                continue
            if more_work():
                await asyncio.sleep(0)  # let the fetcher and the other agents run between slices
                if self.closed:
                    return
                if self._resumed.is_set():
                    yield self._take()
                continue
            if not records:
                self._arrived.clear()
                await self._arrived.wait()
            if len(records) < self._batch_size and self._linger > 0:  # ``close`` sets _full: no lingering
                try:
                    await asyncio.wait_for(self._full.wait(), self._linger)
                except asyncio.TimeoutError:
                    pass
            if self.closed:
                return
            if not self._resumed.is_set():
                continue  # suspended while it waited: the records stay for after the rebalance (or are cleared)
            batch = self._take()
            if batch:
                yield batch

    def suspend(self) -> None:
        """A rebalance begins: no batch is handed out until ``resume``, so that the batches in flight can
        finish (``InFlight.finished``) without new ones starting behind them on partitions about to move."""
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    def close(self) -> None:
        """The worker is stopping: the agent's ``batches`` loop ends, now if it waits.

        What is buffered is not handed out; it is not committed either, so
        whoever owns the partitions next reads it again.
        """
        self.closed = True
        self._arrived.set()
        self._full.set()
        self._resumed.set()

    def _take(self) -> list[Message]:
        """Up to ``batch_size`` of the buffered records, oldest first; resumes fetching below half."""
        records = self._records
        batch = records[: self._batch_size]
        del records[: len(batch)]
        self._mark_processing(batch)
        if len(records) < self._batch_size:
            self._full.clear()
        if self._paused and len(records) <= self._high // 2:
            self._resume_all()
        return batch

    def _mark_processing(self, batch: list[Message]) -> None:
        """Tell Faust's livelock check that these partitions are being processed.

        It reads the time a stream last took a record of each partition
        (``monitor.stream_inbound_time``) and logs "Stream has not started
        processing" for partitions whose records no stream takes.
        """
        inbound = self._app.monitor.stream_inbound_time
        now = time.monotonic()
        for tp in {message.tp for message in batch}:
            inbound[tp] = now

    def clear(self) -> None:
        """Partitions moved: what is buffered is read again by whoever owns it now."""
        self._records.clear()
        self._full.clear()
        self._resume_all()

    def buffered(self) -> int:
        return len(self._records)

    def _resume_all(self) -> None:
        consumer = self._app.consumer
        assigned = consumer.assignment()
        for tp in self._paused:
            if tp in assigned:
                consumer.on_buffer_drop(tp)
            else:
                consumer._buffered_partitions.discard(tp)
        self._paused.clear()


def install(app: faust.App, *intakes: Intake) -> None:
    """Route the records of each intake's topics to it instead of to Faust's streams.

    The agents still subscribe through Faust (``subscribe``), so the consumer
    group, assignment and recovery see them as usual.
    """
    for intake in intakes:
        dispatch.route(app, intake.topic_names, lambda tp, faust_callback, intake=intake: intake.handler(tp))


def subscribe(stream: faust.StreamT) -> None:
    """Make Faust subscribe to the agent's topics without iterating its stream.

    Iterating a topic registers it with the conductor (``Topic.__aiter__``),
    which is what the consumer subscribes to; records never reach this
    iterator, the intake gets them.
    """
    stream.channel.__aiter__()


class InFlight:
    """Counts the batches being processed, so that a rebalance can wait for them."""

    def __init__(self) -> None:
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> "InFlight":
        self._running += 1
        self._idle.clear()
        return self

    def __exit__(self, *exc_info) -> None:
        self._running -= 1
        if not self._running:
            self._idle.set()

    async def finished(self, timeout: float, waiting: str = "the rebalance") -> bool:
        """Wait until no batch is in flight; False (and a warning) after ``timeout`` seconds.

        Checked again after every wake-up: the event can be set by one batch's
        end and cleared by the next one's start before this waiter runs
        (the intakes are suspended first, so that no next one starts).
        """
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while self._running:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
            return True
        except asyncio.TimeoutError:
            log.warning("a batch is still in flight after %.1f s; %s goes on without it", timeout, waiting)
            return False
