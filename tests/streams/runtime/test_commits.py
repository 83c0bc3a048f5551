"""The input-progress guard: skipped records are noticed before anything commits past them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import faust
from faust.types import TP

from topology.settings import Settings
from streams.runtime import metrics
from streams.runtime.commits import InputProgress
from streams.runtime.patches import all_patches

POSTS_0 = TP("posts", 0)
POSTS_1 = TP("posts", 1)


def _event(tp: TP, offset: int):
    """A fetched record as the intake hands it over (the fields of faust.types.Message used)."""
    return SimpleNamespace(tp=tp, offset=offset, topic=tp.topic, partition=tp.partition)


class _Progress(InputProgress):
    """The guard with the broker's answers given: committed offsets, and where records exist."""

    def __init__(self, committed: dict, holes: dict | None = None) -> None:
        super().__init__(app=SimpleNamespace(consumer=None), settings=Settings())
        self.committed = committed
        #: tp -> offsets with no record (transaction markers, compaction)
        self.holes = holes or {}
        self.asked: list = []

    async def _start_offsets(self, tps):
        return {tp: self.committed[tp] for tp in tps}

    async def _records_between(self, tp, start, end):
        self.asked.append((tp, start, end))
        return any(offset not in self.holes.get(tp, ()) for offset in range(start, end))


def _offsets(admission):
    return [(m.tp.partition, m.offset) for m in admission.records]


def test_in_order_records_pass_and_move_on_only_when_done():
    progress = _Progress({POSTS_0: 10, POSTS_1: 0})
    admission = asyncio.run(progress.admit([_event(POSTS_0, 10), _event(POSTS_1, 0), _event(POSTS_0, 11)]))
    assert _offsets(admission) == [(0, 10), (0, 11), (1, 0)]
    assert progress.committable(POSTS_0) is None  # nothing delivered yet
    asyncio.run(progress.done(admission))
    assert progress.committable(POSTS_0) == 12
    assert progress.committable(POSTS_1) == 1


def test_a_skip_is_left_out_and_the_partition_sought_back():
    progress = _Progress({POSTS_0: 10})
    sought = []

    async def seek(tp, offset):
        sought.append((tp, offset))

    progress._app = SimpleNamespace(consumer=SimpleNamespace(seek=seek))
    before = metrics.INPUT_RECORDS_SKIPPED.labels("posts")._value.get()
    admission = asyncio.run(progress.admit([_event(POSTS_0, 10), _event(POSTS_0, 13), _event(POSTS_0, 14)]))
    assert _offsets(admission) == [(0, 10)]  # 13 and 14 wait until 11 and 12 are read
    asyncio.run(progress.done(admission))
    assert sought == [(POSTS_0, 11)]
    assert progress.committable(POSTS_0) == 11  # never past the missing records
    assert metrics.INPUT_RECORDS_SKIPPED.labels("posts")._value.get() == before + 2
    # Read again: stale records fetched before the seek arrive mixed with the
    # fresh ones; each offset is processed once, in order.
    again = asyncio.run(progress.admit([_event(POSTS_0, 15), _event(POSTS_0, 11), _event(POSTS_0, 12), _event(POSTS_0, 13)]))
    assert _offsets(again) == [(0, 11), (0, 12), (0, 13)]
    asyncio.run(progress.done(again))
    assert progress.committable(POSTS_0) == 14


def test_records_already_done_are_not_processed_twice():
    progress = _Progress({POSTS_0: 5})
    first = asyncio.run(progress.admit([_event(POSTS_0, 5), _event(POSTS_0, 6)]))
    asyncio.run(progress.done(first))
    again = asyncio.run(progress.admit([_event(POSTS_0, 5), _event(POSTS_0, 6), _event(POSTS_0, 7)]))
    assert _offsets(again) == [(0, 7)]


def test_a_real_gap_confirmed_by_the_broker_is_passed():
    progress = _Progress({POSTS_0: 0}, holes={POSTS_0: {1, 2}})  # e.g. transaction markers
    admission = asyncio.run(progress.admit([_event(POSTS_0, 0), _event(POSTS_0, 3)]))
    assert _offsets(admission) == [(0, 0), (0, 3)]
    assert progress.asked == [(POSTS_0, 1, 3)]
    asyncio.run(progress.done(admission))
    assert progress.committable(POSTS_0) == 4


def test_a_batch_from_before_a_rebalance_does_not_move_the_new_generation():
    progress = _Progress({POSTS_0: 0})
    admission = asyncio.run(progress.admit([_event(POSTS_0, 0)]))
    progress.forget()  # partitions revoked while the batch was delivered
    asyncio.run(progress.done(admission))
    assert progress.committable(POSTS_0) is None


def test_a_broker_that_does_not_answer_delays_the_batch_without_stopping_it(monkeypatch):
    import streams.runtime.commits as progress_module

    monkeypatch.setattr(progress_module, "RETRY_MAX_S", 0.01)
    progress = _Progress({POSTS_0: 0})
    failures = [ConnectionError("broker restarting"), ConnectionError("still restarting")]
    answer = progress._start_offsets

    async def flaky(tps):
        if failures:
            raise failures.pop(0)
        return await answer(tps)

    progress._start_offsets = flaky
    admission = asyncio.run(progress.admit([_event(POSTS_0, 0)]))
    assert _offsets(admission) == [(0, 0)] and not failures


def _guarded_consumer(name: str, progress: _Progress):
    """A Faust consumer (not started) whose commits the guard decides."""
    for patch in all_patches():
        if not patch.embedded_broker_only:
            patch.apply()
    app = faust.App(name, broker="kafka://127.0.0.1:1")
    app.standing_progress = progress
    return app.consumer


def test_faust_commits_the_guarded_offset_not_its_acknowledgements():
    progress = _Progress({POSTS_0: 10})
    consumer = _guarded_consumer("standing-progress-test", progress)
    # Faust's own bookkeeping after a skip: 13.. acknowledged, 10..12 counted
    # as a "gap" — its own _new_offset would commit 16.
    consumer._committed_offset[POSTS_0] = 10
    consumer._acked[POSTS_0] = [13, 14, 15]
    consumer._acked_index[POSTS_0] = {13, 14, 15}
    progress._next[POSTS_0] = 11
    assert consumer._new_offset(POSTS_0) == 11
    assert consumer._acked[POSTS_0] == [13, 14, 15]  # kept: not yet covered
    progress._next[POSTS_0] = 14
    assert consumer._new_offset(POSTS_0) == 14
    assert consumer._acked[POSTS_0] == [14, 15] and consumer._acked_index[POSTS_0] == {14, 15}
    progress.confirm({POSTS_0: 14}, progress.generation)  # the broker accepted 14
    assert consumer._new_offset(POSTS_0) is None  # nothing new to commit
    # Partitions the guard does not track keep Faust's own rule.
    other = TP("dead-letters", 0)
    consumer._committed_offset[other] = 3
    consumer._acked[other] = [3, 4]
    consumer._acked_index[other] = {3, 4}
    assert consumer._new_offset(other) == 5


def test_faust_looks_for_commits_in_tracked_partitions_it_saw_no_acknowledgement_for():
    # The intake (streams/runtime/intake.py) acknowledges nothing to Faust, whose
    # commit only looks at partitions with acknowledgements.
    progress = _Progress({POSTS_0: 0})
    consumer = _guarded_consumer("standing-progress-test-2", progress)
    assert list(consumer._filter_tps_with_pending_acks()) == []
    progress._next[POSTS_0] = 7
    dead = TP("dead-letters", 0)
    consumer._acked[dead] = [1]
    assert sorted(consumer._filter_tps_with_pending_acks()) == sorted([dead, POSTS_0])
    assert list(consumer._filter_tps_with_pending_acks({"dead-letters"})) == [dead]
    assert consumer._filter_committable_offsets([POSTS_0]) == {POSTS_0: 7}


def _committing_consumer(name: str, progress: _Progress, *, accepted: list[bool]):
    """A guarded consumer whose commits the broker accepts or refuses in turn (``accepted``), owning POSTS_0."""
    consumer = _guarded_consumer(name, progress)
    sent: list[dict] = []

    async def commit_to_broker(offsets):
        sent.append(dict(offsets))
        return accepted.pop(0)

    async def flush():
        pass

    consumer._commit = commit_to_broker
    consumer.assignment = lambda: {POSTS_0}
    consumer.app.producer.flush = flush
    consumer.sent = sent
    return consumer


def test_a_failed_commit_is_sent_again_though_faust_counts_it_as_committed():
    # CI: a commit failed in a rebalance (IllegalGeneration); Faust recorded its
    # offsets as committed all the same, and the guard, which asked Faust,
    # never sent them again: 295 records stayed "waiting" for 300 s.
    progress = _Progress({POSTS_0: 0})
    consumer = _committing_consumer("standing-progress-test-3", progress, accepted=[False, True])
    progress._next[POSTS_0] = 295
    assert asyncio.run(consumer.force_commit()) is False
    assert consumer._committed_offset[POSTS_0] == 295  # Faust's record of the failed commit
    assert asyncio.run(consumer.force_commit()) is True
    assert consumer.sent == [{POSTS_0: 295}, {POSTS_0: 295}]
    assert asyncio.run(consumer.force_commit()) is False  # accepted: nothing left to send
    assert consumer.sent == [{POSTS_0: 295}, {POSTS_0: 295}]


def test_a_commit_accepted_after_partitions_moved_does_not_count_for_the_new_assignment():
    progress = _Progress({POSTS_0: 0})
    consumer = _committing_consumer("standing-progress-test-4", progress, accepted=[True, True])
    progress._next[POSTS_0] = 40
    generation = progress.generation
    progress.forget()  # a rebalance while the commit was on its way
    progress._next[POSTS_0] = 40  # the same partition again, from the group's commit
    progress.confirm({POSTS_0: 40}, generation)
    assert consumer._filter_committable_offsets([POSTS_0]) == {POSTS_0: 40}
    # Faust's own record, left over from before the partitions moved, does not hold it back either.
    consumer._committed_offset[POSTS_0] = 40
    assert asyncio.run(consumer.force_commit()) is True
    assert consumer.sent == [{POSTS_0: 40}]


def test_a_batch_admitted_before_partitions_moved_is_not_current():
    progress = _Progress({POSTS_0: 0})
    admission = asyncio.run(progress.admit([_event(POSTS_0, 0)]))
    assert progress.current(admission)
    progress.forget()  # a rebalance while the batch waited for the broker
    assert not progress.current(admission)


def test_a_re_send_scan_holds_commits_where_the_assignment_started_until_it_is_done():
    """While the re-send scan looks for states changed by uncommitted records, the lanes read those
    records again as duplicates; committed past them before the scan re-sent what they caused, a
    crash would leave nothing that finds it again (streams/runtime/resend.py)."""
    progress = _Progress({POSTS_0: 10, POSTS_1: 0})
    hold = progress.hold()  # taken when the rebalance completes, before anything is read
    asyncio.run(progress.done(asyncio.run(progress.admit([_event(POSTS_0, o) for o in range(10, 20)] + [_event(POSTS_1, 0)]))))
    assert progress.started_at() == {("posts", 0): 10, ("posts", 1): 0}
    assert progress.committable(POSTS_0) == 10 and progress.committable(POSTS_1) == 0
    progress.release(hold)
    progress.release(hold)  # released twice: nothing more happens
    assert progress.committable(POSTS_0) == 20 and progress.committable(POSTS_1) == 1
    progress.hold_back(lambda tp: 12 if tp == POSTS_0 else None)  # friend updates still waiting hold too
    assert progress.committable(POSTS_0) == 12
    kept = progress.hold()
    assert progress.committable(POSTS_0) == 10
    progress.forget()  # partitions moved: a hold of the old assignment holds nothing
    asyncio.run(progress.done(asyncio.run(progress.admit([_event(POSTS_0, 10)]))))
    assert progress.started_at() == {("posts", 0): 10} and progress.committable(POSTS_0) == 11
    progress.release(kept)


def test_a_record_passed_over_is_left_out_when_read_again_after_a_rewind():
    progress = _Progress({POSTS_0: 10}, holes={POSTS_0: {12}})  # 12: a transaction marker
    sought = []

    async def seek(tp, offset):
        sought.append((tp, offset))

    progress._app = SimpleNamespace(consumer=SimpleNamespace(seek=seek, assignment=lambda: {POSTS_0}))
    for offset in (10, 11, 13):
        failing = asyncio.run(progress.admit([_event(POSTS_0, offset)]))
        asyncio.run(progress.done(failing))
        progress.passed_over(failing)  # dead-lettered; the group's commit is still at 10
    asyncio.run(progress.rewind(["posts"]))
    assert sought == [(POSTS_0, 10)]
    again = asyncio.run(progress.admit([_event(POSTS_0, o) for o in (10, 11, 13, 14)]))
    assert _offsets(again) == [(0, 14)]  # 13 comes after a real gap: left out there too
    asyncio.run(progress.done(again))
    assert progress.committable(POSTS_0) == 15
