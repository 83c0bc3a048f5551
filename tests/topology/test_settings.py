"""Settings read from the environment: choices, the garbage collector."""

from __future__ import annotations

import pytest

from topology.settings import Settings


@pytest.mark.parametrize(
    "variable, attribute, default, given, chosen, unknown, listed",
    [
        ("STANDING_EVENT_LOOP", "event_loop", "uvloop", " AsyncIO ", "asyncio", "trio", "uvloop, asyncio"),
        ("STANDING_ROCKSDB_COMPRESSION", "rocksdb_compression", "zstd", " Snappy", "snappy", "brotli", "zstd, lz4, snappy, none"),
    ],
)
def test_a_choice_has_a_default_ignores_case_and_refuses_what_it_does_not_know(
    monkeypatch, variable, attribute, default, given, chosen, unknown, listed
):
    monkeypatch.delenv(variable, raising=False)
    assert getattr(Settings.from_env(), attribute) == default
    monkeypatch.setenv(variable, given)
    assert getattr(Settings.from_env(), attribute) == chosen
    monkeypatch.setenv(variable, unknown)
    with pytest.raises(SystemExit, match=f"{variable}='{unknown}'.*give one of {listed}$"):
        Settings.from_env()


def test_the_garbage_collector_runs_less_often_in_a_worker(monkeypatch):
    import gc

    from streams.runtime.worker import tune_garbage_collector

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

