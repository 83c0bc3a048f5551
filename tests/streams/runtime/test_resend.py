"""The re-send scan after a rebalance holds commits until it succeeds, and scans again while it fails:
the broker not answering, or refusing what it sends (a topic's configuration: fixing it is enough)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from streams.runtime import resend


def test_a_scan_that_fails_scans_again_and_releases_its_hold_only_once_it_succeeds(monkeypatch, caplog):
    failures = [KafkaConnectionError(), MessageSizeTooLargeError(), MessageSizeTooLargeError()]
    released: list[object] = []

    async def scan(scorer, committed, current):
        if failures:
            assert not released, "the hold is kept while the scan fails"
            raise failures.pop(0)
        return 7

    async def committed_offsets():
        return {}

    progress = SimpleNamespace(generation=0, committed_offsets=committed_offsets, started_at=dict, release=released.append)
    naps: list[float] = []

    async def nap(seconds: float) -> None:
        naps.append(seconds)

    monkeypatch.setattr(resend, "_resend", scan)
    hold = object()
    assert asyncio.run(resend.resend_uncommitted(SimpleNamespace(progress=progress), hold, sleep=nap)) == 7
    assert released == [hold] and len(naps) == 3
    said = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(said) == 1 and "Fix the topics' configuration" in said[0].getMessage(), "a refusal is said once"


def test_a_scan_that_fails_for_a_bug_stops_and_keeps_its_hold(monkeypatch):
    released: list[object] = []

    async def scan(scorer, committed, current):
        raise KeyError("a bug")

    async def committed_offsets():
        return {}

    async def nap(seconds: float) -> None:
        raise AssertionError("a bug is not scanned again every 30 s: it would read whole tables for nothing")

    progress = SimpleNamespace(generation=0, committed_offsets=committed_offsets, started_at=dict, release=released.append)
    monkeypatch.setattr(resend, "_resend", scan)
    with pytest.raises(KeyError):
        asyncio.run(resend.resend_uncommitted(SimpleNamespace(progress=progress), object(), sleep=nap))
    assert released == [], "the hold stays: a restart scans again from there"
