"""Shared fixtures: a real embedded broker (noida-db) and settings pointing at it."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from standing.broker import EmbeddedBroker
from topology.settings import Settings
from tests.helpers import free_port, log_excerpt
from streams.runtime.admin import ensure_topics


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report shows the warnings and errors of the logs in its tmp_path (worker logs).

    CI prints the report, not the files; without them a failure in a
    multi-process test says only what the test saw.
    """
    outcome = yield
    report = outcome.get_result()
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if report.when != "call" or not report.failed or tmp_path is None:
        return
    for log in sorted(Path(tmp_path).glob("*.log")):
        excerpt = log_excerpt(log)
        if excerpt:
            report.sections.append((f"{log.name}: warnings and errors", excerpt))


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> EmbeddedBroker:
    """One broker for the session (tests that need isolated topics use fresh_broker)."""
    instance = EmbeddedBroker(port=free_port(), data_dir=tmp_path_factory.mktemp("broker"))
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def fresh_broker(tmp_path) -> EmbeddedBroker:
    instance = EmbeddedBroker(port=free_port(), data_dir=tmp_path / "broker")
    instance.start()
    yield instance
    instance.stop()


def _settings_for(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    return replace(
        Settings(),
        broker=broker.address,
        app_id=f"standing-test-{uuid.uuid4().hex[:8]}",
        data_dir=tmp_path / "worker",
        web_port=free_port(),
        metrics_port=free_port(),
        partitions=4,
        commit_interval=0.2,
    )


@pytest.fixture
def settings(broker, tmp_path) -> Settings:
    return _settings_for(broker, tmp_path)


@pytest.fixture
def fresh_settings(fresh_broker, tmp_path) -> Settings:
    """Settings on a broker of its own, topics created."""
    value = _settings_for(fresh_broker, tmp_path)
    asyncio.run(ensure_topics(value))
    return value
