"""Settings read from the environment: the event loop."""

from __future__ import annotations

import pytest

from standing.settings import Settings


def test_the_event_loop_is_uvloop_unless_asked_otherwise(monkeypatch):
    monkeypatch.delenv("STANDING_EVENT_LOOP", raising=False)
    assert Settings.from_env().event_loop == "uvloop"
    monkeypatch.setenv("STANDING_EVENT_LOOP", " AsyncIO ")
    assert Settings.from_env().event_loop == "asyncio"
    monkeypatch.setenv("STANDING_EVENT_LOOP", "trio")
    with pytest.raises(SystemExit, match="STANDING_EVENT_LOOP='trio'.*uvloop or asyncio"):
        Settings.from_env()


def test_the_garbage_collector_runs_less_often_in_a_worker(monkeypatch):
    import gc

    from streams.worker import tune_garbage_collector

    monkeypatch.delenv("STANDING_GC_YOUNG_THRESHOLD", raising=False)
    assert Settings.from_env().gc_young_threshold == 50_000
    monkeypatch.setenv("STANDING_GC_YOUNG_THRESHOLD", "0")
    assert Settings.from_env().gc_young_threshold == 0

    before = gc.get_threshold()
    try:
        tune_garbage_collector(0)
        assert gc.get_threshold() == before  # 0 keeps Python's own
        tune_garbage_collector(50_000)
        assert gc.get_threshold()[0] == 50_000
        assert gc.get_freeze_count() > 0  # start-up objects are out of its scans
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_rocksdb_compression_is_zstd_unless_asked_otherwise(monkeypatch):
    monkeypatch.delenv("STANDING_ROCKSDB_COMPRESSION", raising=False)
    assert Settings.from_env().rocksdb_compression == "zstd"
    monkeypatch.setenv("STANDING_ROCKSDB_COMPRESSION", " Snappy")
    assert Settings.from_env().rocksdb_compression == "snappy"
    monkeypatch.setenv("STANDING_ROCKSDB_COMPRESSION", "brotli")
    with pytest.raises(SystemExit, match="STANDING_ROCKSDB_COMPRESSION='brotli'.*zstd, lz4, snappy, none"):
        Settings.from_env()
