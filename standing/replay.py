"""`standing replay`: produce a file, wait for quiescence, dump the scores.

Starts what is not running (the embedded broker on the given loopback port,
a worker) and stops what it started, whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from standing import control, processes
from streams.runtime.lookups import group_has_members
from standing.broker import EmbeddedBroker, port_is_open
from standing.produce import produce_file
from topology.settings import Settings
from streams.runtime.admin import ensure_topics

WORKER_COUNTERS = ("standing_events_accepted_total", "standing_events_duplicate_total")


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


def _say(message: str) -> None:
    print(f"standing replay: {message}", file=sys.stderr, flush=True)


def replay(
    settings: Settings,
    events_file: Path,
    out: Path,
    *,
    rules_path: Path | None = None,
    summary_path: Path | None = None,
    timeout: float = 3600.0,
) -> dict:
    """Run the whole pipeline on one file; returns the summary of the spec."""
    with ExitStack() as cleanup:
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="standing-replay-")))
        host, port = _host_port(settings.bootstrap_servers[0])
        if not port_is_open(host, port):
            if host not in ("127.0.0.1", "localhost"):
                raise control.ControlError(f"cannot reach Kafka at {settings.broker}; start it or pass --broker")
            _say(f"no broker at {settings.broker}: starting the embedded one (data in {workdir / 'broker'})")
            broker = EmbeddedBroker(port=port, data_dir=workdir / "broker", host=host).start()
            cleanup.callback(broker.stop)
        asyncio.run(ensure_topics(settings))

        metrics_port = settings.metrics_port
        if not asyncio.run(group_has_members(settings)):
            metrics_port = processes.free_port()
            worker_settings = replace(
                settings, data_dir=workdir / "worker", metrics_port=metrics_port, web_port=processes.free_port()
            )
            log_path = workdir / "worker.log"
            _say(f"starting a worker (log {log_path})")
            worker = processes.start_worker_process(worker_settings, log_path=log_path, rules_path=rules_path)
            cleanup.callback(processes.stop_process, worker)
            processes.wait_for_metrics(metrics_port, worker, log_path=log_path)
        before = processes.scrape_metrics(metrics_port)

        produced = asyncio.run(produce_file(settings, events_file))
        asyncio.run(control.wait_until_quiescent(settings, timeout=timeout))
        after = processes.scrape_metrics(metrics_port)
        count, _ = asyncio.run(control.dump(settings, out))
        _say(f"wrote {count} scores to {out}")

    def delta(name: str) -> int:
        return int(processes.sum_samples(after, name) - processes.sum_samples(before, name))

    rejected = Counter(produced.rejected)
    worker_before = processes.by_label(before, "standing_events_rejected_total", "reason")
    for reason, value in processes.by_label(after, "standing_events_rejected_total", "reason").items():
        if value - worker_before.get(reason, 0):
            rejected[reason] += int(value - worker_before.get(reason, 0))
    summary = {
        "accepted": delta("standing_events_accepted_total"),
        "duplicates": delta("standing_events_duplicate_total"),
        "rejected": dict(sorted(rejected.items())),
    }
    print(json.dumps(summary), flush=True)
    if summary_path is not None:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
