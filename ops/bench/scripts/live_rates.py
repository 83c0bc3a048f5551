"""Live latency alone, by lane: pre-produce a population, run one worker to quiescence, then
offer live events (stamped now) at each RATE for 10 s, with `standing bench`'s own functions.

    PYTHONPATH=. .venv/bin/python ops/bench/scripts/live_rates.py USERS EVENTS RATE...

`make bench` measures the same steps (its live-rate search); this runs only them, at chosen
rates, so that a change to the worker can be compared quickly (results: ops/bench/results/).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from standing import bench, processes
from standing.broker import EmbeddedBroker
from standing.population import PopulationConfig
from streams.runtime.admin import ensure_topics
from topology.settings import Settings


def main(argv: list[str]) -> None:
    users, events, rates = int(argv[0]), int(argv[1]), [float(rate) for rate in argv[2:]]
    config = PopulationConfig(users=users, events=events, seed=7)
    with tempfile.TemporaryDirectory(prefix="live-rates-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(port=processes.free_port(), data_dir=workdir / "broker").start()
        try:
            settings = replace(
                Settings(), broker=broker.address, app_id="bench", data_dir=workdir / "worker", partitions=8,
                web_port=processes.free_port(), metrics_port=processes.free_port(), worker_id="bench-1",
            )  # fmt: skip
            asyncio.run(ensure_topics(settings))
            total = asyncio.run(bench._preproduce(settings, config))
            worker = bench.ScorerUnderTest(settings, workdir)
            started = worker.start(workdir / "w1", "w1")
            asyncio.run(bench._quiescent_sampling_rss(worker, progress=None))
            print(f"pre-produced {total} events, scored in {time.monotonic() - started:.1f} s", flush=True)
            live = replace(config, seed=8, events=10**9)
            for rate in rates:
                figures = bench._latency_at(worker, live, rate, 10)
                shown = {key: round(value, 4) if value else value for key, value in figures.items()}
                print(rate, shown, flush=True)
            worker.stop()
        finally:
            broker.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
