"""A healthy worker logs nothing at WARNING or above, however long it runs.

Faust's livelock check once logged "Stream has not started processing" for
every changelog partition about six times a second, from five minutes after
start (its stream_processing_timeout); so this watches an idle worker, with
data in its tables, for six minutes. Marked slow: `make test` runs it, and
`pytest -m "not slow"` leaves it out.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from standing import processes
from standing.control import wait_until_quiescent
from standing.population import PopulationConfig, generate_events, write_jsonl
from standing.produce import produce_file
from streams.rules import load_rules

IDLE_SECONDS = 6 * 60
LEVEL = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]|Traceback")


@pytest.mark.slow
@pytest.mark.timeout(IDLE_SECONDS + 300)
def test_an_idle_worker_with_data_logs_nothing_at_warning_or_above_for_six_minutes(fresh_settings, tmp_path):
    events = tmp_path / "events.jsonl"
    write_jsonl(events, generate_events(PopulationConfig(users=300, events=3000, seed=5), load_rules()))
    log_path = tmp_path / "worker.log"
    worker = processes.start_worker_process(fresh_settings, log_path=log_path)
    try:
        processes.wait_for_metrics(fresh_settings.metrics_port, worker, log_path=log_path)
        asyncio.run(produce_file(fresh_settings, events, progress=False))
        asyncio.run(wait_until_quiescent(fresh_settings, timeout=180, progress=None))
        time.sleep(IDLE_SECONDS)
        assert worker.poll() is None
    finally:
        processes.stop_process(worker)
    noisy = [line for line in log_path.read_text(errors="replace").splitlines() if LEVEL.search(line)]
    assert noisy == [], f"{len(noisy)} lines at WARNING or above, the first: {noisy[:5]}"
