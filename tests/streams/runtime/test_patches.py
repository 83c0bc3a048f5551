"""Every patch of Faust and aiokafka is listed, checked against the upstream source, and refused when it differs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from streams import runtime
from streams.runtime import patches
from streams.runtime.patches import IncompatibleDependency, Patch, all_patches
from topology.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def test_the_installed_dependencies_are_the_ones_every_patch_was_written_for():
    assert patches.check_versions() == []
    for patch in all_patches():
        assert patch.check() is None, patch.check()


def test_every_patch_says_what_it_replaces_why_and_which_test_shows_it():
    seen = set()
    for patch in all_patches():
        assert patch.target not in seen, f"{patch.target} is patched twice"
        seen.add(patch.target)
        assert patch.why and patch.where and patch.shown_by.startswith("tests/"), patch
        assert (ROOT / patch.shown_by.split("::")[0]).is_file(), f"{patch.target}: {patch.shown_by} does not exist"
        assert len(patch.sha256) == 64


def test_a_changed_upstream_function_stops_the_start_naming_it_and_what_to_do():
    [real] = [p for p in all_patches() if p.target.endswith("Consumer._drain_messages")]
    upgraded = Patch(target=real.target, sha256="0" * 64, why="a reason", shown_by="tests/x.py", where="streams/runtime/dispatch.py")
    with pytest.raises(IncompatibleDependency) as raised:
        patches.check([upgraded])
    message = str(raised.value)
    assert "faust.transport.consumer:Consumer._drain_messages" in message
    assert "Install the pinned version, or review the patch" in message and "tests/x.py" in message


def test_a_function_that_is_gone_is_named_too():
    gone = Patch(target="faust.transport.consumer:Consumer._no_such_method", sha256="0" * 64, why="w", shown_by="tests/x.py")
    with pytest.raises(IncompatibleDependency, match="Consumer._no_such_method is gone"):
        patches.check([gone])


def test_a_different_version_is_refused(monkeypatch):
    monkeypatch.setitem(patches.PINNED, "aiokafka", "0.0.1")
    with pytest.raises(IncompatibleDependency, match=r"aiokafka 0\.14\.0 is installed, but Standing patches aiokafka 0\.0\.1"):
        patches.check([])


def test_install_applies_every_patch_and_the_embedded_broker_ones_only_when_on():
    embedded = [p for p in all_patches() if p.embedded_broker_only]
    assert embedded, "the embedded broker's fetch pacing is a patch"
    try:
        runtime.install(replace(Settings(), broker="kafka:9092"))
        assert all(p.applied for p in all_patches() if p.replacement is not None and not p.embedded_broker_only)
        assert not any(p.applied for p in embedded)
        runtime.install(replace(Settings(), broker="127.0.0.1:9092"))
        assert all(p.applied for p in embedded)
    finally:
        runtime.install(Settings())  # as the rest of the suite expects (loopback: on)


def test_a_patch_can_be_removed_to_show_the_upstream_behaviour():
    [patch] = [p for p in all_patches() if p.target.endswith("RocksDBOptions.as_options")]
    patch.apply()
    upstream = patch.original
    patch.remove()
    try:
        from faust.stores.rocksdb import RocksDBOptions

        assert RocksDBOptions.as_options is upstream
    finally:
        patch.apply()
