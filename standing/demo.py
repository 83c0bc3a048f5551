"""`standing demo`: the whole system on one machine, with live figures.

Starts the embedded broker (unless one answers at --broker) and a worker,
produces a simulated population's events at a steady rate, follows the
scores topic, and prints throughput, backlog and the users whose scores
moved most. Stops everything it started on Ctrl-C or after --seconds.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from standing import processes
from standing.broker import EmbeddedBroker, port_is_open
from standing.population import LiveSimulation, PopulationConfig
from streams.runtime.producer import EventProducer
from topology.settings import Settings
from streams import events as ev
from streams.runtime.admin import ensure_topics
from streams.runtime.lookups import new_scores


@dataclass
class Movers:
    """Latest display score per user and the biggest recent moves."""

    latest: dict[str, float] = field(default_factory=dict)
    moves: dict[str, tuple[float, float]] = field(default_factory=dict)
    published: int = 0

    def record(self, user: str, score: float) -> None:
        self.published += 1
        previous = self.latest.get(user)
        self.latest[user] = score
        if previous is not None and previous != score:
            first = self.moves.get(user, (previous, score))[0]
            self.moves[user] = (first, score)

    def top(self, n: int = 5) -> list[tuple[str, float, float]]:
        ranked = sorted(self.moves.items(), key=lambda item: abs(item[1][1] - item[1][0]), reverse=True)
        return [(user, before, after) for user, (before, after) in ranked[:n]]


def _say(message: str) -> None:
    print(f"standing demo: {message}", flush=True)


def run_demo(
    settings: Settings,
    *,
    rules_path: Path | None,
    seconds: float | None,
    rate: float,
    users: int,
    seed: int,
) -> int:
    # --seconds counts from the command's start: starting the broker and the
    # worker is part of the run, so `--seconds 30` ends about 30 s after Enter.
    deadline = None if seconds is None else time.monotonic() + seconds
    host, _, port = settings.bootstrap_servers[0].rpartition(":")
    with ExitStack() as cleanup:
        if not port_is_open(host or "127.0.0.1", int(port)):
            if not _start_afresh(settings):
                return 2
            broker = EmbeddedBroker(port=int(port), data_dir=settings.broker_data_dir, host=host or "127.0.0.1")
            _say(f"starting the embedded broker at {broker.address} (data in {settings.broker_data_dir})")
            broker.start()
            cleanup.callback(broker.stop)
        else:
            _say(f"using the broker at {settings.broker}")
        asyncio.run(ensure_topics(settings))
        log_path = settings.data_dir.parent / "demo-worker.log"
        worker = processes.start_worker_process(settings, log_path=log_path, rules_path=rules_path)
        cleanup.callback(processes.stop_process, worker)
        _say(f"starting a worker (log {log_path})")
        processes.wait_for_metrics(settings.metrics_port, worker, log_path=log_path)
        _say(
            f"query API http://{settings.web_host}:{settings.web_port}/users/<id>  "
            f"metrics http://{settings.web_host}:{settings.metrics_port}/metrics"
        )
        try:
            asyncio.run(_live(settings, PopulationConfig(users=users, seed=seed, events=10**12), rate, deadline, worker))
        except KeyboardInterrupt:
            pass
        _say("stopping")
    _say("stopped cleanly")
    return 0


def _start_afresh(settings: Settings) -> bool:
    """Empty the broker's and the worker's directories of an earlier demo (False: they hold something else).

    The embedded broker loses records it acknowledged when it stops
    (streams/runtime/embedded_broker.py, defect 3): a worker restarted on its
    kept state would find changelogs shorter than what it persisted and stop
    (Faust's ConsistencyError), and its scores would have holes. So a demo that
    starts its own broker starts from nothing; against a running broker
    (--broker) nothing is removed.
    """
    earlier = []
    for path, ours in ((settings.broker_data_dir, _broker_files), (settings.data_dir, _worker_files)):
        if not path.exists() or not any(path.iterdir()):
            continue
        if not ours(path):
            _say(
                f"{path} holds files that are not an earlier demo's; the demo starts its embedded broker and worker "
                "from empty directories: choose others (STANDING_DATA_DIR, STANDING_BROKER_DATA_DIR)"
            )
            return False
        earlier.append(path)
    if earlier:
        _say(
            "starting afresh: the embedded broker loses records it acknowledged when it stops, so an earlier "
            f"demo's data cannot be continued (removing {', '.join(str(path) for path in earlier)})"
        )
        for path in earlier:
            shutil.rmtree(path)
        (settings.data_dir.parent / "demo-worker.log").unlink(missing_ok=True)  # its log went with it
    return True


def _broker_files(path: Path) -> bool:
    return (path / "noida.control.json").exists() or (path / "kafka.json").exists()


def _worker_files(path: Path) -> bool:
    """A worker's data directory holds only its versioned table directories (``v1``, ...)."""
    return all(child.is_dir() and child.name[:1] == "v" and child.name[1:].isdigit() for child in path.iterdir())


async def _live(settings: Settings, config: PopulationConfig, rate: float, deadline: float | None, worker) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    movers = Movers()
    produced = {"count": 0}

    async def produce() -> None:
        async with EventProducer(settings) as producer:
            # New event ids each run: the data directory (and the worker's
            # de-duplication memory) outlive a demo run against a broker already running.
            async for item in LiveSimulation(config, rate, run_id=f"run{int(time.time())}"):
                if stop.is_set():
                    break
                try:
                    await producer.send(ev.from_dict(item))
                    produced["count"] += 1
                except ev.Rejected:
                    continue

    async def follow_scores() -> None:
        async for score in new_scores(settings, stop.is_set):
            movers.record(score["user_id"], score["score"])

    async def report() -> None:
        started = time.monotonic()
        last_count, last_time = 0, started
        interactive = sys.stdout.isatty()
        while not stop.is_set():
            await asyncio.sleep(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))
            now = time.monotonic()
            if worker.poll() is not None:
                _say(f"the worker exited with code {worker.returncode}; see its log")
                stop.set()
                break
            try:
                samples = processes.scrape_metrics(settings.metrics_port, timeout=1.0)
            except OSError:
                samples = {}
            processed = int(processes.sum_samples(samples, "standing_events_in_total"))
            updates = int(processes.sum_samples(samples, "standing_friend_updates_sent_total"))
            count = produced["count"]
            rate_now = (count - last_count) / max(now - last_time, 1e-9)
            last_count, last_time = count, now
            lines = [
                f"t={now - started:5.0f}s  produced {count:>8} ({rate_now:6.0f}/s)  processed {processed:>8}  "
                f"friend updates {updates:>9}  scores published {movers.published:>8}  users scored {len(movers.latest):>6}",
                "top movers: "
                + "  ".join(f"{user} {before:.0f}->{after:.0f}" for user, before, after in movers.top(5)),
            ]
            if interactive:
                print("\x1b[2K" + lines[0] + "\n\x1b[2K" + lines[1] + "\x1b[2A\r", end="", flush=True)
            else:
                print("\n".join(lines), flush=True)
            if deadline is not None and now >= deadline:
                stop.set()
        if interactive:
            print("\n\n", end="")

    tasks = [asyncio.create_task(produce()), asyncio.create_task(follow_scores())]
    try:
        await report()
    finally:
        stop.set()
        for task in tasks:
            try:
                await asyncio.wait_for(task, timeout=10)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
    movers_top = movers.top(5)
    if movers_top:
        print("biggest moves this run: " + ", ".join(f"{u} {b:.0f}->{a:.0f}" for u, b, a in movers_top), flush=True)
