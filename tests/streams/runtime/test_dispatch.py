"""Faust's fetch loop hands records to a callback's synchronous ``take`` while the flow runs."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

from faust.types import TP
from mode.utils.queues import FlowControlEvent

from streams.runtime import dispatch

OURS = TP("posts", 0)
THEIRS = TP("dead-letters", 0)


class _Consumer:
    """What the loop uses of Faust's consumer, with one fetch of ``records``."""

    consumer_stopped_errors = ()

    def __init__(self, records, callbacks, *, flowing=True, suspended=False) -> None:
        flow = FlowControlEvent()
        if flowing:
            flow.resume()
        self.app = SimpleNamespace(
            flow_control=flow,
            topics=SimpleNamespace(_tp_to_callback=callbacks, _tp_to_callback_lock=asyncio.Lock(), acks_enabled_for=lambda topic: True),
        )
        self.records = records
        self._stopped = asyncio.Event()
        self.suspend_flow = asyncio.Event()
        if suspended:
            self.suspend_flow.set()
        self._read_offset = defaultdict(lambda: None)
        self._commit_every = None
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self.should_stop = False
        self.slow: list = []  # records that went through Faust's wait_first path
        self.gaps: list = []

    async def callback(self, message) -> None:
        await self.app.topics._tp_to_callback[message.tp](message)

    async def getmany(self, timeout: float):
        for record in self.records:
            yield record.tp, record
        self._stopped.set()  # one fetch round, then the loop ends

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_first(self, coro, *others) -> None:
        for other in others:
            other.close()
        self.slow.append(coro)
        await coro

    async def _add_gap(self, tp, start, end) -> None:
        self.gaps.append((tp, start, end))


def _record(tp: TP, offset: int):
    return SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition, offset=offset, key=b"", value=b"")


def _run(records, *, take_result=True, **flags):
    taken, handled = [], []

    async def ours(message) -> None:
        handled.append(("ours", message.offset))

    async def theirs(message) -> None:
        handled.append(("theirs", message.offset))

    def take(message) -> bool:
        taken.append(message.offset)
        return take_result

    async def scenario():
        callbacks = {OURS: dispatch.direct(ours, take), THEIRS: theirs}
        consumer = _Consumer(records, callbacks, **flags)
        await dispatch._drain_messages(consumer, SimpleNamespace(_stopped=asyncio.Event()))
        return consumer

    consumer = asyncio.run(scenario())
    return taken, handled, len(consumer.slow), dict(consumer._read_offset), consumer.gaps


def test_while_the_flow_runs_our_records_are_taken_directly_and_others_go_faust_s_way():
    records = [_record(OURS, 0), _record(THEIRS, 0), _record(OURS, 1), _record(OURS, 3)]
    taken, handled, slow, read, gaps = _run(records)
    assert taken == [0, 1, 3]
    assert handled == [("theirs", 0)] and slow == 1
    assert read == {OURS: 3, THEIRS: 0}
    assert gaps == [(OURS, 2, 3)]  # Faust's gap bookkeeping is kept


def test_a_record_take_declines_goes_through_the_callback():
    taken, handled, slow, read, _ = _run([_record(OURS, 0)], take_result=False)
    assert taken == [0] and handled == [("ours", 0)] and slow == 1
    assert read == {OURS: 0}


def test_while_the_flow_is_held_or_suspended_every_record_goes_faust_s_way():
    # Faust's path is the one a rebalance can abandon (wait_first on suspend_flow).
    for flags in ({"flowing": False}, {"suspended": True}):
        taken, handled, slow, _, _ = _run([_record(OURS, 0)], **flags)
        assert taken == [] and handled == [("ours", 0)] and slow == 1, flags
