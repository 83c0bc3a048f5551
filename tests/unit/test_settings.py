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
