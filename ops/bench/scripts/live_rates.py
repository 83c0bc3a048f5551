"""Live latency alone, by lane: pre-produce a population, run one worker to quiescence, then
offer live events (stamped now) at each RATE for 10 s, with `standing bench`'s own functions.

    PYTHONPATH=. .venv/bin/python ops/bench/scripts/live_rates.py USERS EVENTS RATE...

`make bench` measures the same steps (its live-rate search); this runs only them, at chosen
rates, so that a change to the worker can be compared quickly (results: ops/bench/results/).
After each step it prints where the machine's CPU went during it (Linux /proc): the busiest
threads of the broker and the worker, and how long the worker's main thread, the one that
decides, waited for a core while it could run.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from standing import bench, processes
from standing.broker import EmbeddedBroker
from standing.population import PopulationConfig
from streams.runtime.admin import ensure_topics
from topology.settings import Settings

TICKS_PER_S = 100  # USER_HZ: /proc/*/stat counts CPU time in these


def thread_cpu(processes_by_label: dict[str, int]) -> tuple[Counter, int]:
    """(CPU ticks by (process label, thread name), ns the worker's main thread waited on a run queue)."""
    ticks: Counter = Counter()
    waited = 0
    for label, pid in processes_by_label.items():
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
                schedstat = (task / "schedstat").read_text().split()
            except OSError:
                continue  # the thread ended meanwhile
            name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            ticks[(label, name)] += int(fields[11]) + int(fields[12])
            if label == "worker" and task.name == str(pid):
                waited = int(schedstat[1])
    return ticks, waited


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
            watched = {"broker": broker.pid, "worker": worker.process.pid}
            live = replace(config, seed=8, events=10**9)
            for rate in rates:
                before, waited_before, t0 = *thread_cpu(watched), time.monotonic()
                figures = bench._latency_at(worker, live, rate, 10)
                after, waited_after = thread_cpu(watched)
                seconds = time.monotonic() - t0
                shown = {key: round(value, 4) if value else value for key, value in figures.items()}
                print(rate, shown, flush=True)
                busiest = sorted(((after[k] - before.get(k, 0), k) for k in after), reverse=True)[:5]
                print(
                    "  CPU, share of one core:",
                    ", ".join(f"{label} {name} {100 * used / TICKS_PER_S / seconds:.0f}%" for used, (label, name) in busiest),
                    f"; worker main thread waited for a core {(waited_after - waited_before) / 1e6 / seconds:.0f} ms per s",
                    flush=True,
                )
            worker.stop()
        finally:
            broker.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
