"""The intake: records handed over from Faust's consumer in order, in batches, with back-pressure."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import faust
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from streams.runtime import intake as intake_module
from streams.runtime.intake import Intake

POSTS_0 = TP("posts", 0)
POSTS_1 = TP("posts", 1)


class _Consumer:
    """What the intake uses of Faust's consumer: the fetch set and the assignment."""

    def __init__(self, assigned) -> None:
        self.assigned = set(assigned)
        self.full: list = []
        self.dropped: list = []
        self._buffered_partitions: set = set()

    def assignment(self):
        return self.assigned

    def on_buffer_full(self, tp) -> None:
        self.full.append(tp)
        self._buffered_partitions.add(tp)

    def on_buffer_drop(self, tp) -> None:
        self.dropped.append(tp)
        self._buffered_partitions.discard(tp)


def _app(assigned=(POSTS_0, POSTS_1), flowing: bool = True):
    flow = FlowControlEvent()
    if flowing:
        flow.resume()
    return SimpleNamespace(flow_control=flow, consumer=_Consumer(assigned), monitor=SimpleNamespace(stream_inbound_time={}))


def _record(tp: TP, offset: int):
    return SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition, offset=offset, value=b"")


async def _feed(intake: Intake, tp: TP, offsets) -> None:
    handler = intake.handler(tp)
    for offset in offsets:
        await handler(_record(tp, offset))


def _offsets(batch):
    return [(m.partition, m.offset) for m in batch]


def test_records_come_out_in_fetch_order_in_batches_of_at_most_batch_size():
    async def scenario():
        intake = Intake(_app(), ("posts",), batch_size=3, linger=0.0)
        await _feed(intake, POSTS_0, [0, 1])
        await _feed(intake, POSTS_1, [0])
        await _feed(intake, POSTS_0, [2, 3])
        batches = intake.batches()
        return [_offsets(await batches.__anext__()) for _ in range(2)], intake.buffered()

    batches, left = asyncio.run(scenario())
    assert batches == [[(0, 0), (0, 1), (1, 0)], [(0, 2), (0, 3)]]
    assert left == 0


def test_faust_learns_which_partitions_are_being_processed():
    # Faust's livelock check logs "Stream has not started processing" for
    # partitions no stream takes records of.
    async def scenario():
        app = _app()
        intake = Intake(app, ("posts",), batch_size=10, linger=0.0)
        await _feed(intake, POSTS_1, [0])
        await intake.batches().__anext__()
        return app.monitor.stream_inbound_time

    assert set(asyncio.run(scenario())) == {POSTS_1}


def test_a_batch_waits_at_most_linger_and_no_longer_once_full():
    async def scenario():
        intake = Intake(_app(), ("posts",), batch_size=3, linger=5.0)
        batches = intake.batches()
        taking = asyncio.ensure_future(batches.__anext__())
        await _feed(intake, POSTS_0, [0])
        await asyncio.sleep(0.05)
        waited = not taking.done()  # lingering for more
        await _feed(intake, POSTS_0, [1, 2])
        batch = await asyncio.wait_for(taking, 1.0)  # full: no waiting out the 5 s
        short = Intake(_app(), ("posts",), batch_size=100, linger=0.05)
        await _feed(short, POSTS_0, [0])
        alone = await asyncio.wait_for(short.batches().__anext__(), 1.0)
        return waited, _offsets(batch), _offsets(alone)

    waited, batch, alone = asyncio.run(scenario())
    assert waited
    assert batch == [(0, 0), (0, 1), (0, 2)]
    assert alone == [(0, 0)]


def test_while_the_agent_has_work_left_a_batch_is_whatever_arrived_without_waiting():
    """Friend updates waiting (streams/waiting.py): no lingering, and no waiting for records."""

    async def scenario():
        intake = Intake(_app(), ("posts",), batch_size=100, linger=5.0)
        work_left = [True]
        batches = intake.batches(more_work=lambda: work_left[0])
        empty = await asyncio.wait_for(batches.__anext__(), 1.0)  # nothing arrived: an empty batch at once
        await _feed(intake, POSTS_0, [0])
        some = await asyncio.wait_for(batches.__anext__(), 1.0)  # one record: no waiting out the 5 s
        work_left[0] = False
        taking = asyncio.ensure_future(batches.__anext__())
        await asyncio.sleep(0.05)
        idle = not taking.done()  # no work and no records: it waits again
        taking.cancel()
        return empty, _offsets(some), idle

    empty, some, idle = asyncio.run(scenario())
    assert empty == []
    assert some == [(0, 0)]
    assert idle


def test_close_ends_the_batches_of_a_waiting_a_lingering_and_a_busy_agent_without_handing_out_more():
    """A clean stop (Scorer.stop_taking_batches): each agent's loop ends instead of waiting for records."""

    async def scenario():
        idle = Intake(_app(), ("posts",), batch_size=10, linger=5.0)
        waiting = asyncio.ensure_future(idle.batches().__anext__())  # nothing buffered: waits
        lingering_intake = Intake(_app(), ("posts",), batch_size=10, linger=5.0)
        await _feed(lingering_intake, POSTS_0, [0])
        lingering = asyncio.ensure_future(lingering_intake.batches().__anext__())  # waits to fill
        busy = Intake(_app(), ("posts",), batch_size=10, linger=5.0)
        busy_batches = busy.batches(more_work=lambda: True)
        await busy_batches.__anext__()
        await _feed(busy, POSTS_0, [0, 1])
        await asyncio.sleep(0.05)
        for intake in (idle, lingering_intake, busy):
            intake.close()
        ended = []
        for taking in (waiting, lingering, asyncio.ensure_future(busy_batches.__anext__())):
            try:
                await asyncio.wait_for(taking, 1.0)
                ended.append(False)
            except StopAsyncIteration:
                ended.append(True)
        # A loop started after the stop (Faust's supervisor restarting a crashed agent) ends at once.
        try:
            await asyncio.wait_for(busy.batches().__anext__(), 1.0)
            restarted_ended = False
        except StopAsyncIteration:
            restarted_ended = True
        return ended, restarted_ended, lingering_intake.buffered(), busy.buffered()

    ended, restarted_ended, lingering_left, busy_left = asyncio.run(scenario())
    assert ended == [True, True, True]
    assert restarted_ended
    assert (lingering_left, busy_left) == (1, 2)  # not handed out, and not committed: read again after the restart


def test_a_partition_stops_being_fetched_while_too_much_is_buffered_and_resumes_at_half():
    async def scenario():
        app = _app()
        intake = Intake(app, ("posts",), batch_size=2, linger=0.0)  # paused at 8 buffered
        await _feed(intake, POSTS_0, range(7))
        before = list(app.consumer.full)
        await _feed(intake, POSTS_0, [7, 8, 9])
        paused = list(app.consumer.full)
        batches = intake.batches()
        taken = 0
        while app.consumer.dropped == []:
            taken += len(await batches.__anext__())
        return before, paused, taken, intake.buffered(), app.consumer.dropped

    before, paused, taken, left, dropped = asyncio.run(scenario())
    assert before == [] and paused == [POSTS_0]  # once, at 8 buffered
    assert left <= 4 and taken + left == 10  # resumed at half, nothing lost
    assert dropped == [POSTS_0]


def test_records_wait_while_faust_holds_the_flow():
    async def scenario():
        app = _app(flowing=False)  # a rebalance or table recovery in progress
        intake = Intake(app, ("posts",), batch_size=10, linger=0.0)
        feeding = asyncio.ensure_future(_feed(intake, POSTS_0, [0]))
        await asyncio.sleep(0.05)
        held = intake.buffered()
        app.flow_control.resume()
        await asyncio.wait_for(feeding, 1.0)
        return held, intake.buffered()

    assert asyncio.run(scenario()) == (0, 1)


def test_clear_drops_what_is_buffered_and_resumes_paused_partitions_still_ours():
    async def scenario():
        app = _app(assigned=(POSTS_0, POSTS_1))
        intake = Intake(app, ("posts",), batch_size=1, linger=0.0)  # paused at 4 buffered
        await _feed(intake, POSTS_0, range(4))
        await _feed(intake, POSTS_1, range(2))
        app.consumer.assigned = {POSTS_1}  # posts[0] moved to another worker
        intake.clear()
        return intake.buffered(), app.consumer.dropped, app.consumer._buffered_partitions

    buffered, dropped, still_out = asyncio.run(scenario())
    assert buffered == 0
    assert dropped == [POSTS_1]  # back in the fetch set
    assert still_out == set()  # posts[0] is no longer ours: only forgotten


def test_install_routes_the_intakes_topics_and_leaves_others_to_faust():
    app = faust.App("standing-intake-test", broker="kafka://127.0.0.1:1")
    posts = Intake(app, ("posts",), batch_size=10, linger=0.0)
    intake_module.install(app, posts)
    ours = app.topics._build_handler(POSTS_0, set())
    theirs = app.topics._build_handler(TP("dead-letters", 0), set())
    assert ours.__qualname__.startswith("Intake.handler")
    assert "ConductorHandler" in type(theirs).__name__ or "on_message" in getattr(theirs, "__qualname__", "")


def test_a_rebalance_waits_for_batches_in_flight_but_not_forever():
    from streams.runtime.intake import InFlight

    async def scenario():
        in_flight = InFlight()
        assert await in_flight.finished(timeout=0.01)  # nothing running

        async def batch():
            with in_flight:
                await asyncio.sleep(0.05)

        running = asyncio.ensure_future(batch())
        await asyncio.sleep(0)
        waited = await in_flight.finished(timeout=1.0)
        finished_first = running.done()
        stuck = asyncio.ensure_future(asyncio.sleep(10))
        with in_flight:
            gave_up = not await in_flight.finished(timeout=0.05)
        stuck.cancel()
        return waited, finished_first, gave_up

    assert asyncio.run(scenario()) == (True, True, True)


def test_a_suspended_intake_hands_out_no_batch_until_resumed():
    """A rebalance suspends the intakes (Scorer's on_partitions_revoked): batches in flight finish, none starts."""

    async def scenario():
        intake = Intake(_app(), ("posts",), batch_size=2, linger=0.0)
        await _feed(intake, POSTS_0, [0, 1, 2, 3])
        busy = intake.batches(more_work=lambda: True)
        idle = intake.batches()
        intake.suspend()
        taking = [asyncio.ensure_future(busy.__anext__()), asyncio.ensure_future(idle.__anext__())]
        await asyncio.sleep(0.05)
        held = not any(t.done() for t in taking)
        intake.resume()
        batches = [_offsets(await asyncio.wait_for(t, 1.0)) for t in taking]
        return held, sorted(batches)

    held, batches = asyncio.run(scenario())
    assert held
    assert batches == [[(0, 0), (0, 1)], [(0, 2), (0, 3)]]


def test_a_batch_that_starts_as_the_last_one_ends_is_waited_for_too():
    """The idle event is set by one batch's end and cleared by the next one's start before the waiter runs:
    the waiter must see the second batch still running."""
    from streams.runtime.intake import InFlight

    async def scenario():
        in_flight = InFlight()
        second_done = asyncio.Event()

        async def two_batches():
            with in_flight:
                await asyncio.sleep(0.02)
            with in_flight:  # no await in between
                await asyncio.sleep(0.05)
                second_done.set()

        running = asyncio.ensure_future(two_batches())
        await asyncio.sleep(0)
        assert await in_flight.finished(timeout=1.0)
        seen_done = second_done.is_set()
        await running
        return seen_done

    assert asyncio.run(scenario())
