"""Table recovery in bulk: changelog records reach RocksDB in batches, Faust still ends recovery."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

from faust.types import TP

from topology.settings import Settings
from streams.runtime import metrics
from streams.runtime.app import create_app
from streams.runtime.recovery import BulkRecovery, install
from streams.runtime.store import FAUST_KEYS_PREFIX, create_tables

CHANGELOG = "standing-users-changelog"


def _setup(tmp_path, flush_every: int = 3):
    settings = replace(Settings(), data_dir=tmp_path, metrics_port=0, app_id="standing")
    app = create_app(settings)
    users, pairs = create_tables(app, settings)
    assert users.changelog_topic.get_topic_name() == CHANGELOG
    restore = BulkRecovery(app, (users, pairs), flush_every=flush_every)
    return app, users, restore


def _recovering(app, tp: TP, highwater: int, persisted: int | None = None):
    """Faust's recovery as it stands after seeking: ``tp`` active, read up to ``highwater``."""
    recovery = app.tables.recovery
    recovery.in_recovery = True
    recovery.active_tps.add(tp)
    recovery.active_highwaters[tp] = highwater
    recovery.active_offsets[tp] = -1 if persisted is None else persisted
    return recovery


def _record(tp: TP, offset: int, key: bytes, value: bytes | None):
    return SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition, offset=offset, key=key, value=value)


def _stored(table, partition: int) -> dict:
    db = table.data._db_for_partition(partition)
    return {key: value for key, value in db.items() if not key.startswith(FAUST_KEYS_PREFIX)}


class _FaustHandler:
    def __init__(self) -> None:
        self.got: list = []

    async def __call__(self, message) -> None:
        self.got.append(message.offset)


def test_records_before_the_last_are_written_in_batches_and_the_last_is_left_to_faust(tmp_path):
    app, users, restore = _setup(tmp_path, flush_every=3)
    app.flow_control.resume()
    tp = TP(CHANGELOG, 2)
    recovery = _recovering(app, tp, highwater=5)
    faust_handler = _FaustHandler()
    handler = restore.handler(tp, faust_handler)
    before = metrics.CHANGELOG_RECORDS_RESTORED.labels("users")._value.get()
    records = [
        _record(tp, 0, b"ann", b"1"),
        _record(tp, 1, b"bob", b"2"),
        _record(tp, 2, b"ann", b"3"),  # the third: a batch is written
        _record(tp, 3, b"cid", b"4"),
        _record(tp, 4, b"bob", None),  # a deletion
        _record(tp, 5, b"dan", b"6"),  # the highwater: Faust's own
    ]

    async def feed(upto: int) -> None:
        for record in records[:upto]:
            await handler(record)

    asyncio.run(feed(3))
    assert _stored(users, 2) == {b"ann": b"3", b"bob": b"2"}
    assert users.data.persisted_offset(tp) == 2
    assert recovery.active_offsets[tp] == 2
    asyncio.run(feed(5))  # 0-2 again (seen: skipped), then 3 and 4, kept
    assert restore.pending() == 2 and recovery.active_offsets[tp] == 4
    asyncio.run(handler(records[5]))
    # everything before the last is written before Faust gets the last
    assert _stored(users, 2) == {b"ann": b"3", b"cid": b"4"}
    assert users.data.persisted_offset(tp) == 4
    assert faust_handler.got == [5] and restore.pending() == 0
    assert metrics.CHANGELOG_RECORDS_RESTORED.labels("users")._value.get() - before == 5


def test_outside_recovery_and_for_standbys_faust_handles_every_record(tmp_path):
    app, users, restore = _setup(tmp_path)
    app.flow_control.resume()
    tp = TP(CHANGELOG, 0)
    faust_handler = _FaustHandler()
    handler = restore.handler(tp, faust_handler)
    asyncio.run(handler(_record(tp, 0, b"ann", b"1")))  # not recovering at all
    recovery = _recovering(app, TP(CHANGELOG, 1), highwater=10)  # recovering another partition
    asyncio.run(handler(_record(tp, 1, b"ann", b"2")))
    assert faust_handler.got == [0, 1] and restore.pending() == 0
    assert recovery.active_offsets[TP(CHANGELOG, 1)] == -1


def test_whatever_faust_flushes_flushes_what_the_restore_holds_first(tmp_path):
    app, users, restore = _setup(tmp_path, flush_every=100)
    app.flow_control.resume()
    install(app, restore)
    tp = TP(CHANGELOG, 3)
    recovery = _recovering(app, tp, highwater=100)
    # the conductor builds the partition's callback through the installed builder
    handler = app.topics._build_handler(tp, set())
    assert hasattr(handler, "standing_take")
    for offset in range(4):
        assert handler.standing_take(_record(tp, offset, b"k%d" % offset, b"v"))
    assert restore.pending() == 4 and _stored(users, 3) == {}
    recovery.flush_buffers()  # a rebalance, or recovery restarting or ending
    assert restore.pending() == 0
    assert _stored(users, 3) == {b"k0": b"v", b"k1": b"v", b"k2": b"v", b"k3": b"v"}
    assert users.data.persisted_offset(tp) == 3
