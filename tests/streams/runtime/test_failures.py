"""No record can stop a lane: retried, then read one by one, a record that fails alone passed over."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError, RequestTimedOutError

from streams.runtime.failures import ATTEMPTS, FailureGuard, transient


#: offsets from here on stand for records fetched before a seek back, which admission leaves out
STALE = 1000


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int


class Lane:
    """A lane over one partition: a log of offsets, processed in order, committed as processed."""

    def __init__(self, poison: set[int], *, error=ValueError("this record breaks the batch")) -> None:
        self.poison = poison
        self.error = error
        self.committed = 0
        self.processed: list[int] = []
        self.passed_over: list[int] = []
        self.rewinds = 0
        self.guard = FailureGuard("test", process=self.process, pass_over=self.pass_over, rewind=self.rewind, sleep=self.nap)
        self.naps: list[float] = []

    async def process(self, records) -> int:
        records = [r for r in records if r.offset < STALE]  # fetched before a seek back: left out, as admission does
        if not records:
            return 0
        if any(r.offset in self.poison for r in records):
            raise self.error
        self.processed += [r.offset for r in records]
        self.committed = records[-1].offset + 1
        return len(records)

    async def pass_over(self, record, error) -> bool:
        self.passed_over.append(record.offset)
        self.committed = record.offset + 1
        return True

    async def rewind(self) -> None:
        self.rewinds += 1

    async def nap(self, seconds: float) -> None:
        self.naps.append(seconds)

    def run(self, end: int, batch: int = 5, rounds: int = 100) -> None:
        """Batches from the committed offset, as a consumer sought back to it would read them."""

        async def go() -> None:
            for _ in range(rounds):
                if self.committed >= end:
                    return
                records = [Rec("posts", 0, o) for o in range(self.committed, min(end, self.committed + batch))]
                await self.guard.run(records)

        asyncio.run(go())


def test_a_record_that_fails_alone_is_passed_over_and_everything_else_is_processed():
    lane = Lane(poison={7})
    lane.run(end=20)
    assert lane.passed_over == [7]
    assert lane.processed == [o for o in range(20) if o != 7]
    assert not lane.guard.failing, "healthy again once past it"


def test_while_batches_keep_failing_the_lane_counts_as_failing():
    lane = Lane(poison={2})
    lane.run(end=10, rounds=ATTEMPTS)  # the failed batches, before any record is read alone
    assert lane.guard.failing and lane.rewinds == ATTEMPTS and lane.passed_over == []


def test_a_broker_that_does_not_answer_dead_letters_nothing_and_is_waited_out():
    lane = Lane(poison={3}, error=KafkaConnectionError("no broker"))
    lane.run(end=10, rounds=20)
    assert lane.passed_over == [] and lane.committed == 0
    assert lane.naps and max(lane.naps) <= 5.0 and lane.naps == sorted(lane.naps), "a growing back-off"
    lane.poison.clear()  # the broker is back
    lane.run(end=10)
    assert lane.processed == list(range(10)) and not lane.guard.failing


def test_which_errors_are_the_brokers():
    assert transient(KafkaConnectionError()) and transient(asyncio.TimeoutError()) and transient(ConnectionResetError())
    # aiokafka gave up waiting for the broker (a batch queued behind one that did not leave in time): not a record's fault
    assert transient(KafkaTimeoutError()) and transient(RequestTimedOutError())
    assert not transient(MessageSizeTooLargeError()) and not transient(ValueError("a bug"))


def test_partitions_moving_forget_the_suspects():
    lane = Lane(poison={1})
    lane.run(end=10, rounds=ATTEMPTS)
    assert lane.guard.failing
    lane.guard.reset()
    assert not lane.guard.failing


def test_failures_in_a_row_isolate_the_records_whatever_offset_each_retry_began_at():
    """After a rewind, records fetched before the seek still arrive: each retry's batch can begin
    somewhere else, and still fails on the same record. Judged by the batches' first offsets,
    the lane never read one by one and never found the record to blame."""
    lane = Lane(poison={3})

    async def go() -> None:
        for retry in range(40):
            if lane.committed >= 10:
                return
            begin = lane.committed + (retry % 3 if not lane.guard.one_by_one else 0)  # 0, 1, 2: all hold offset 3
            await lane.guard.run([Rec("posts", 0, o) for o in range(begin, min(10, begin + 5))])

    asyncio.run(go())
    assert lane.passed_over == [3]


def test_read_one_by_one_until_past_the_failed_batch_and_rewound_after_a_pass_over():
    """What the failed attempt of the record passed over took with it (friend updates waiting) is
    read again: the lane is rewound after the pass-over too, not only after each failure."""
    lane = Lane(poison={2})
    lane.run(end=10, rounds=ATTEMPTS)
    rewinds = lane.rewinds
    asyncio.run(lane.guard.run([Rec("posts", 0, o) for o in range(0, 5)]))
    assert lane.guard.one_by_one and lane.processed == [0, 1] and lane.rewinds == rewinds + 1
    for _ in range(ATTEMPTS - 1):
        asyncio.run(lane.guard.run([Rec("posts", 0, o) for o in range(lane.committed, 5)]))
    assert lane.passed_over == [2] and lane.rewinds == rewinds + ATTEMPTS, "rewound after the pass-over"
    assert lane.guard.one_by_one, "offsets 3 and 4 failed with it: still read one by one"
    lane.run(end=10)
    assert lane.processed == [0, 1, 3, 4, 5, 6, 7, 8, 9] and not lane.guard.one_by_one and not lane.guard.failing


def test_a_batch_that_processed_none_of_its_records_does_not_break_the_row_of_failures():
    """After each rewind, records fetched before the seek arrive first, in a batch admission leaves
    wholly out. Taken for progress, it reset the count between every two failures: the lane
    failed and "succeeded" in turn for ever, never reading one by one, never dead-lettering."""
    lane = Lane(poison={3})

    async def go() -> None:
        for _ in range(40):
            if lane.committed >= 10:
                return
            await lane.guard.run([Rec("posts", 0, STALE + o) for o in range(5)])
            await lane.guard.run([Rec("posts", 0, o) for o in range(lane.committed, min(10, lane.committed + 5))])

    asyncio.run(go())
    assert lane.passed_over == [3] and lane.processed == [0, 1, 2, 4, 5, 6, 7, 8, 9]
