"""`standing bench`: the scorer against baselines, on the same events, in one run.

Every figure is measured in the same run on the same broker and reported as a
ratio against a baseline of that run (machines are noisy; ratios travel).
Results go to ops/bench/results/latest.json and a line of history.jsonl.

Baselines (each consumes the same pre-produced events from offset 0):
* plain Faust: one agent, a RocksDB Table with a per-key running sum, one
  output record per input record (the usual way to write it);
* raw aiokafka: a consume -> dict -> produce loop (an upper bound for Python).
quixstreams is not a dependency of Standing; it is measured only if installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import replace
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from standing import processes
from standing.broker import EmbeddedBroker
from standing.control import wait_until_quiescent
from standing.population import PopulationConfig, generate_events
from standing.settings import Settings
from streams import events as ev
from topology import topics
from topology.admin import ensure_topics

RESULTS_DIR = Path(__file__).resolve().parent.parent / "ops" / "bench" / "results"

PLAIN_FAUST_APP = textwrap.dedent(
    """
    import sys, faust
    broker, datadir, group, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    app = faust.App(group, broker=f"kafka://{broker}", store="rocksdb://", datadir=datadir, topic_allow_declare=True,
                    topic_disable_leader=True, consumer_auto_offset_reset="earliest", web_enabled=False,
                    autodiscover=False, topic_partitions=int(sys.argv[5]))
    source = app.topic("purchases", "posts", "friendships", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    out = app.topic("bench-plain-out", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    sums = app.Table("bench-sums", default=int, partitions=int(sys.argv[5]))
    seen = {"n": 0}
    @app.agent(source)
    async def running_sum(stream):
        async for event in stream.events():
            key = event.key.decode()
            sums[key] += len(event.value)
            await out.send(key=event.key, value=str(sums[key]).encode())
            seen["n"] += 1
            if seen["n"] == total:
                print("DONE", flush=True)
    faust.Worker(app, loglevel="error", quiet=True, redirect_stdouts=False).execute_from_commandline()
    """
)


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def _preproduce(settings: Settings, config: PopulationConfig) -> int:
    """Publish the population's valid events as fast as possible; returns the count."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks=1, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    count = 0
    try:
        futures = []
        for item in generate_events(config):
            try:
                event = ev.from_dict(item) if isinstance(item, dict) else ev.from_json_line(item)
            except ev.Rejected:
                continue
            futures.append(await producer.send(ev.topic_for(event), ev.to_bytes(event), key=ev.key_for(event).encode()))
            count += 1
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures.clear()
                _say(f"pre-produced {count} events")
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return count


async def _raw_aiokafka_loop(settings: Settings, total: int) -> float:
    """Consume every input record, keep a per-key sum in a dict, produce one record each."""
    consumer = AIOKafkaConsumer(*topics.INPUT_TOPICS, bootstrap_servers=settings.bootstrap_servers, group_id="bench-raw",
                                auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=5000)  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    await consumer.start()
    await producer.start()
    sums: dict[bytes, int] = {}
    seen = 0
    started = time.monotonic()
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            futures = []
            for records in batches.values():
                for record in records:
                    sums[record.key] = sums.get(record.key, 0) + len(record.value)
                    futures.append(await producer.send("bench-raw-out", str(sums[record.key]).encode(), key=record.key))
                    seen += 1
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
        return time.monotonic() - started
    finally:
        await consumer.stop()
        await producer.stop()


def _plain_faust(settings: Settings, workdir: Path, total: int) -> float:
    script = workdir / "plain_faust.py"
    script.write_text(PLAIN_FAUST_APP)
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(script), settings.broker, str(workdir / "plain-data"), "bench-plain", str(total), str(settings.partitions)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        for line in process.stdout:
            if line.startswith("DONE"):
                return time.monotonic() - started
        raise RuntimeError(f"the plain Faust baseline exited with {process.wait()} before consuming {total} events")
    finally:
        processes.stop_process(process)


def _scorer(settings: Settings, workdir: Path) -> tuple[float, dict, int]:
    log_path = workdir / "worker.log"
    started = time.monotonic()
    worker = processes.start_worker_process(settings, log_path=log_path)
    try:
        processes.wait_for_metrics(settings.metrics_port, worker, log_path=log_path)
        peak_rss = asyncio.run(_quiescent_sampling_rss(settings))
        elapsed = time.monotonic() - started  # includes the worker's start-up (~2 s)
        return elapsed, processes.scrape_metrics(settings.metrics_port), peak_rss
    finally:
        processes.stop_process(worker)


async def _quiescent_sampling_rss(settings: Settings) -> int:
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            try:
                samples = processes.scrape_metrics(settings.metrics_port, timeout=1)
                peak = max(peak, int(processes.sum_samples(samples, "process_resident_memory_bytes")))
            except OSError:
                pass
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    try:
        await wait_until_quiescent(settings, timeout=3600, progress=sys.stderr)
    finally:
        sampler.cancel()
    return peak


def run_bench(*, users: int, events: int, seed: int, partitions: int, out_dir: Path = RESULTS_DIR, baselines: bool = True) -> dict:
    config = PopulationConfig(users=users, events=events, seed=seed)
    with tempfile.TemporaryDirectory(prefix="standing-bench-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(port=processes.free_port(), data_dir=workdir / "broker").start()
        try:
            settings = replace(
                Settings(), broker=broker.address, app_id="bench", data_dir=workdir / "worker", partitions=partitions,
                web_port=processes.free_port(), metrics_port=processes.free_port(),
            )  # fmt: skip
            asyncio.run(ensure_topics(settings))
            _say(f"pre-producing {events} events of {users} users (seed {seed})")
            total = asyncio.run(_preproduce(settings, config))
            _say("scorer: one worker, from the first event to quiescence")
            scorer_s, samples, peak_rss = _scorer(settings, workdir)
            figures: dict = {"events": total, "users": users, "partitions": partitions}
            figures["scorer_events_per_s"] = total / scorer_s
            accepted = processes.sum_samples(samples, "standing_events_accepted_total") or 1
            figures["friend_updates_per_event"] = processes.sum_samples(samples, "standing_friend_updates_sent_total") / accepted
            figures["kafka_messages_per_event"] = processes.sum_samples(samples, "standing_friend_update_messages_sent_total") / accepted
            figures["scores_per_event"] = processes.sum_samples(samples, "standing_scores_published_total") / accepted
            user_keys = processes.sum_samples(samples, "standing_table_keys", table="users") or 1
            figures["state_bytes_per_user"] = processes.sum_samples(samples, "standing_table_bytes", table="users") / user_keys
            figures["worker_peak_rss_bytes"] = peak_rss
            if baselines:
                _say("baseline: raw aiokafka loop")
                figures["raw_aiokafka_events_per_s"] = total / asyncio.run(_raw_aiokafka_loop(settings, total))
                _say("baseline: plain Faust agent + RocksDB table")
                figures["plain_faust_events_per_s"] = total / _plain_faust(settings, workdir, total)
                figures["ratio_scorer_over_plain_faust"] = figures["scorer_events_per_s"] / figures["plain_faust_events_per_s"]
                figures["ratio_scorer_over_aiokafka"] = figures["scorer_events_per_s"] / figures["raw_aiokafka_events_per_s"]
        finally:
            broker.stop()
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {"users": users, "events": events, "seed": seed, "partitions": partitions},
        "figures": figures,
        "not_measured": [
            "quixstreams baseline (not installed)",
            "latency at half load",
            "recovery time from an empty data directory",
            "celebrity user",
        ],
    }
    _print_table(figures)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    with (out_dir / "history.jsonl").open("a") as history:
        history.write(json.dumps(result) + "\n")
    return result


def _print_table(figures: dict) -> None:
    width = max(len(name) for name in figures)
    print("\n".join(f"{name:<{width}}  {value:,.3f}" if isinstance(value, float) else f"{name:<{width}}  {value:,}" for name, value in figures.items()))
