"""No record can stop a partition: a failed batch is retried, then read one record at a time, and a
record that fails alone is dead-lettered and passed over.

A batch can fail for two kinds of reasons. The broker (a restart, a network
split): every retry fails the same way until it is back, and no record is to
blame; such errors (aiokafka's retriable ones, timeouts, connections, and
``Held``: the broker refuses what Standing decided, a topic's configuration
or ACLs) are waited out with a back-off, and never dead-letter anything. Or
one record (a bug meeting a record nobody foresaw, a state grown larger than
a changelog takes): the same batch fails every time, the partition stops,
the agent crash-loops.
``FailureGuard`` handles the second: after ``ATTEMPTS`` such failures in a
row (a batch that processed none of its records, fetched before a seek, does
not break the row) it processes records one by one; a record that fails
alone ``ATTEMPTS`` times goes to the dead-letter topic (reason
``processing_failed``, with the error) and is passed over, with one ERROR
naming it. While batches keep failing the lane counts as failing: ``/ready``
answers 503 and ``StandingBatchesFailing`` fires.

After any failure, and after a record is passed over, the lane is rewound
(``rewind``): what it held in memory is dropped and its partitions are read
again from their committed offsets (the record passed over is left out), so
nothing unprocessed is committed (``Scorer._deliver`` says what becomes of a
failed batch's states).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Sequence

from aiokafka.errors import KafkaError, KafkaTimeoutError

from streams.runtime import metrics

log = logging.getLogger(__name__)

#: Failures of the same records before they are read one by one; failures of one record alone before it is passed over.
ATTEMPTS = 3
#: Longest wait between two attempts while the broker does not answer.
BACKOFF_MAX_S = 5.0


class Held(Exception):
    """The broker refuses what a lane decided: kept, and sent again until it is taken (an operator
    fixes the topic); waited out like the broker's silence, since no record is to blame
    (``Scorer._deliver``)."""


def transient(error: BaseException) -> bool:
    """An error no record is to blame for: the broker or the network, to be waited out."""
    if isinstance(error, (KafkaTimeoutError, Held)):
        # Not "retriable" in aiokafka's terms (it gave up waiting), but the broker's doing, never a record's:
        # a batch for a partition whose earlier batch did not leave in time fails with it.
        return True
    if isinstance(error, KafkaError):
        return bool(getattr(error, "retriable", False)) or "Connection" in type(error).__name__
    return isinstance(error, (asyncio.TimeoutError, ConnectionError, OSError))


def _where(record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


class FailureGuard:
    """Runs one lane's batches so that no record can stop it."""

    def __init__(
        self,
        lane: str,
        *,
        process: Callable[[Sequence], Awaitable[int | None]],
        pass_over: Callable[[object, BaseException], Awaitable[bool]],
        rewind: Callable[[], Awaitable[None]],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.lane = lane
        self._process = process
        self._pass_over = pass_over
        self._rewind = rewind
        self._sleep = sleep
        #: failures in a row (transient or not): the lane counts as failing from ATTEMPTS on
        self.failures = 0
        #: failures in a row that were not the broker's (a rewind reads the same records again each time)
        self._in_a_row = 0
        #: while set: (topic, partition) -> last offset of the batch that kept failing; read one by one up to there
        self._isolating: dict[tuple[str, int], int] = {}
        #: (topic, partition, offset) -> failures of that record alone
        self._alone: dict[tuple[str, int, int], int] = {}

    @property
    def failing(self) -> bool:
        return self.failures >= ATTEMPTS

    @property
    def one_by_one(self) -> bool:
        """While records are read one at a time: a record must then bring nothing else into its batch
        (friend updates left waiting by others), or a fault of theirs would be blamed on it."""
        return bool(self._isolating)

    def reset(self) -> None:
        """Partitions moved: what was suspected belongs to the old assignment."""
        self.failures = 0
        self._in_a_row = 0
        self._isolating.clear()
        self._alone.clear()

    async def run(self, batch: Sequence) -> None:
        if self._isolating:
            await self._one_by_one(batch)
            return
        try:
            processed = await self._process(batch)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._failed(batch, error)
        else:
            if processed != 0:
                self._succeeded()
            # else: nothing of it was processed (records fetched before a seek back, left out): no progress,
            # and failures in a row still count (after a rewind such a batch came between every two failures)

    def _succeeded(self) -> None:
        self.failures = 0
        self._in_a_row = 0

    async def _failed(self, batch: Sequence, error: BaseException) -> None:
        self.failures += 1
        metrics.BATCH_FAILURES.labels(self.lane).inc()
        if transient(error):
            delay = min(BACKOFF_MAX_S, 0.5 * 2 ** min(self.failures - 1, 4))
            log.warning(
                "%s: a batch of %d records could not be completed (%r), which no record is to blame for; "
                "reading it again in %.1f s", self.lane, len(batch), error, delay,
            )  # fmt: skip
            await self._rewind()
            await self._sleep(delay)
            return
        # Every retry starts again at the committed offsets, so failures in a row are failures of the
        # same records. (Not judged by the batches' first offsets: after a seek, records fetched
        # before it still arrive, and each retry's batch began somewhere else.)
        self._in_a_row += 1
        log.error(
            "%s: a batch of %d records failed (%s: %s), attempt %d of %d before its records are read one by one; "
            "its partitions are read again from their committed offsets",
            self.lane, len(batch), type(error).__name__, error, self._in_a_row, ATTEMPTS,
            exc_info=self._in_a_row == 1,
        )  # fmt: skip
        await self._rewind()
        if self._in_a_row >= ATTEMPTS:
            ends: dict[tuple[str, int], int] = {}
            for record in batch:
                slot = (record.topic, record.partition)
                ends[slot] = max(ends.get(slot, -1), record.offset)
            self._isolating = ends

    async def _one_by_one(self, batch: Sequence) -> None:
        # Every record of the batch on its own, also past the records that failed together (a partition
        # the failed batch did not hold, records fetched after it): a failure now is a failure alone.
        for record in batch:
            slot = (record.topic, record.partition)
            try:
                processed = await self._process([record])
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if transient(error):
                    await self._failed([record], error)
                    return
                where = (record.topic, record.partition, record.offset)
                self._alone[where] = self._alone.get(where, 0) + 1
                self.failures += 1
                metrics.BATCH_FAILURES.labels(self.lane).inc()
                if self._alone[where] < ATTEMPTS:
                    await self._rewind()
                    return
                try:
                    passed = await self._pass_over(record, error)
                except asyncio.CancelledError:
                    raise
                except Exception as failure:  # the broker refused even that: try again later
                    log.error("%s: could not pass over %s (%r); trying again", self.lane, _where(record), failure)
                    await self._rewind()
                    return
                if passed:
                    log.error(
                        "%s: the record at %s fails on its own (%s: %s) after %d attempts; it went to the dead-letter "
                        "topic (reason processing_failed) and is passed over. Read it there, fix what it exposed, "
                        "and re-publish it if it must count",
                        self.lane, _where(record), type(error).__name__, error, ATTEMPTS,
                    )  # fmt: skip
                else:  # its partition moved meanwhile (or it was done already): its new owner reads it
                    log.info("%s: the record at %s, failing on its own, was not passed over: its partition moved", self.lane, _where(record))
                del self._alone[where]
                self._done_with(slot, record.offset)
                # What the failed attempt took with it (friend updates waiting, states it put
                # back) is read again from the committed offsets; the record passed over is not.
                await self._rewind()
                return
            if processed != 0:  # (0: left out, fetched before a seek: it says nothing of the range read alone)
                self._done_with(slot, record.offset)
        if not self._isolating:
            self._succeeded()

    def _done_with(self, slot: tuple[str, int], offset: int) -> None:
        if offset >= self._isolating.get(slot, -1):
            self._isolating.pop(slot, None)
            if not self._isolating:
                self._succeeded()
