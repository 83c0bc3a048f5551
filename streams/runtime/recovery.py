"""Table recovery in bulk: changelog records written to RocksDB in batches.

Faust restores a table by sending every changelog record through its
per-event path: an Event per record, a queue, and a loop that awaits one
record at a time (a task per ``wait_for``, two debug strings formatted, the
remaining work recounted over every partition) before buffering it. Measured
here, that was 120-200 us of the worker's main thread per record, so the
2.2M changelog records of 100k users took about five minutes to restore.

``BulkRecovery`` keeps Faust's recovery in charge: it decides which
partitions to restore and from which offset to which highwater, when recovery
starts, ends or restarts, and it still applies the last record of each
partition itself, which is what tells it that partition is done. Only the
records before the last take a shorter road: the callback Faust's conductor
builds for a changelog partition appends them to a list and advances the
offset Faust's recovery reads. The list is written with Faust's own
``apply_changelog_batch`` (one RocksDB write batch, then the persisted
offset) every ``flush_every`` records (the worker's batch size), before the
last record, and whenever Faust flushes its own buffers (a rebalance,
recovery restarting or ending).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import faust
from faust.types import TP, Message

from streams.runtime import dispatch
from streams.runtime import metrics
from streams.runtime.patches import Patch


class _Restored:
    """What ``apply_changelog_batch`` reads of an event: its message."""

    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message


class BulkRecovery:
    """The active changelog partitions of some tables, restored in batches."""

    def __init__(self, app: faust.App, tables: Iterable[faust.Table], *, flush_every: int = 8000) -> None:
        self._app = app
        self._tables = {table.changelog_topic.get_topic_name(): table for table in tables}
        self._flush_every = flush_every
        self._pending: dict[TP, list[Message]] = {}

    @property
    def topic_names(self) -> frozenset[str]:
        return frozenset(self._tables)

    def handler(self, tp: TP, faust_handler: Callable[[Message], object]) -> Callable[[Message], object]:
        """The callback for changelog partition ``tp``; Faust's own one takes what we do not."""
        app = self._app
        recovery = app.tables.recovery
        acquire_flow = app.flow_control.acquire
        pending = self._pending
        flush_every = self._flush_every

        def take(message: Message) -> bool:
            """Keep a record before the partition's last; False leaves it to Faust."""
            if not (recovery.in_recovery and tp in recovery.active_tps):
                return False
            offset = message.offset
            highwater = recovery.active_highwaters.get(tp)
            if highwater is None or offset >= highwater:
                # The last record: everything before it is written first, then
                # Faust applies it and sees the partition restored.
                self.flush(tp)
                return False
            seen = recovery.active_offsets.get(tp)
            if seen is None or offset > seen:
                records = pending.get(tp)
                if records is None:
                    records = pending[tp] = []
                records.append(message)
                recovery.active_offsets[tp] = offset
                if len(records) >= flush_every:
                    self.flush(tp)
            return True

        async def on_message(message: Message) -> None:
            # Blocks while Faust holds the flow (a rebalance), as Faust's callback does.
            await acquire_flow()
            if not take(message):
                await faust_handler(message)

        # While the flow runs, Faust's consumer calls ``take`` directly (streams/runtime/dispatch.py).
        return dispatch.direct(on_message, take)

    def flush(self, tp: TP) -> None:
        """Write what is pending for ``tp`` (records, then the offset they reach)."""
        records = self._pending.pop(tp, None)
        if not records:
            return
        table = self._tables[tp.topic]
        table.apply_changelog_batch([_Restored(message) for message in records])
        metrics.CHANGELOG_RECORDS_RESTORED.labels(table.name).inc(len(records))
        self._app.tables.recovery._last_flush_at = time.monotonic()

    def flush_all(self) -> None:
        for tp in list(self._pending):
            self.flush(tp)

    def pending(self) -> int:
        return sum(len(records) for records in self._pending.values())


def install(app: faust.App, bulk: BulkRecovery) -> None:
    """Route the changelog partitions of ``bulk``'s tables through it.

    Its callback wraps the one Faust builds for the partition
    (``streams.runtime.dispatch.route``). Whenever Faust's recovery flushes its
    buffers, what ``bulk`` holds is written first.
    """
    wrapped: list = []

    def build(tp: TP, faust_callback):
        if not wrapped:  # Faust's recovery exists by the first assignment
            wrapped.append(_flush_with_faust(app.tables.recovery, bulk))
        return bulk.handler(tp, faust_callback())

    dispatch.route(app, bulk.topic_names, build)


def _flush_with_faust(recovery, bulk: BulkRecovery) -> Callable[[], None]:
    original_flush = recovery.flush_buffers

    def flush_buffers() -> None:
        bulk.flush_all()
        original_flush()

    recovery.flush_buffers = flush_buffers
    return flush_buffers


FLUSH_BUFFERS = Patch(
    target="faust.tables.recovery:Recovery.flush_buffers",
    sha256="6fa9c17f1071018c49cb6d411a34fb4a2c2ac4f41c3de650bbee15831abd6f1f",
    why="whenever Faust's recovery flushes its buffers (a rebalance, recovery restarting or ending), "
    "the records held by the bulk recovery must be written first, in order",
    shown_by="tests/streams/runtime/test_recovery.py",
    where="streams/runtime/recovery.py: install() wraps it on each app's recovery",
)
PATCHES = [FLUSH_BUFFERS]
