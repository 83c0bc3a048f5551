"""Nothing lost: workers killed with SIGKILL mid-replay, restarted on the same or an
empty data directory, a second worker taking over, the broker restarted, every
event sent twice. Each run must end within epsilon/(1-alpha) of the reference."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka import AIOKafkaConsumer

from standing import processes
from standing.control import wait_until_quiescent
from streams.runtime.lookups import backlog, read_scores
from standing.population import PopulationConfig, generate_events, write_jsonl
from standing.produce import produce_file
from schemas import codec
from standing.reference import compute_reference, reference_file
from streams.rules import load_rules
from streams.runtime.store import closed_partition_entries
from topology import topics
from tests.helpers import free_port, read_dead_letters

RULES = load_rules()


@pytest.fixture
def events_file(tmp_path) -> Path:
    config = PopulationConfig(users=600, events=6000, seed=23, duplicate_share=0.02, invalid_share=0.01)
    path = tmp_path / "events.jsonl"
    write_jsonl(path, generate_events(config, RULES))
    return path


#: Small batches, so that a replay of this file spans many batches and commits
#: and there is a middle to kill a worker in (the default, 8000 records, takes
#: the whole intake in one batch).
FAULT_BATCH_SIZE = 100
#: Each hop of a propagation wave that finds nothing waiting waits this long
#: to fill its batch, so the wave outlasts the last input by more than a
#: commit interval and the "propagation" moment (inputs committed, friend
#: updates still held) can be caught; with the default (5 ms) this small
#: population's wave often ended between two commits.
SLOW_PROPAGATION = dict(batch_wait=0.3)
#: So few friend updates held decoded that records are also kept unread
#: (streams/waiting.py) when the worker is killed.
FEW_WAITING = dict(waiting_updates_limit=200)


class Workers:
    """Worker processes of one test, each with its own ports; all stopped at the end."""

    def __init__(self, settings, tmp_path: Path) -> None:
        self.settings = replace(settings, batch_size=FAULT_BATCH_SIZE, **SLOW_PROPAGATION, **FEW_WAITING)
        self.tmp_path = tmp_path
        self.started: list = []

    def start(self, data_dir: Path, worker_id: str = "", *, ports_of=None):
        """A worker on ``data_dir``; with ``ports_of``, on the web and metrics ports of that earlier worker."""
        web, metrics = (ports_of.web_port, ports_of.metrics_port) if ports_of is not None else (free_port(), free_port())
        settings = replace(self.settings, data_dir=data_dir, worker_id=worker_id, web_port=web, metrics_port=metrics)
        log_path = self.tmp_path / f"worker-{len(self.started)}.log"
        process = processes.start_worker_process(settings, log_path=log_path)
        process.metrics_port, process.web_port, process.log_path = settings.metrics_port, settings.web_port, log_path
        self.started.append(process)
        processes.wait_for_metrics(settings.metrics_port, process, log_path=log_path)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            processes.stop_process(process)


@pytest.fixture
def workers(fresh_settings, tmp_path):
    group = Workers(fresh_settings, tmp_path)
    yield group
    group.stop_all()


async def _remaining(settings) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    await consumer.start()
    try:
        return (await backlog(settings, admin, consumer)).per_topic
    finally:
        await consumer.stop()
        await admin.close()


def _wait_for(settings, condition, timeout: float = 60.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = asyncio.run(_remaining(settings))
        if condition(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"condition not reached; backlog {state}")


def _pause_when(settings, process, condition, timeout: float = 60.0, slice_seconds: float = 0.05) -> dict[str, int]:
    """Run ``process`` in short slices until ``condition`` holds, and leave it stopped there.

    Polling a running worker can miss a moment: a fast machine takes the whole
    intake between two looks at the group's offsets. Stopped (SIGSTOP) while the
    test looks, the worker cannot run past the moment; it is stopped at whatever
    instruction it had reached, which is what a SIGKILL should hit."""
    deadline = time.monotonic() + timeout
    while True:
        process.send_signal(signal.SIGSTOP)
        state = asyncio.run(_remaining(settings))
        if condition(state):
            return state
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGCONT)
            raise AssertionError(f"condition not reached; backlog {state}")
        process.send_signal(signal.SIGCONT)
        time.sleep(slice_seconds)


def _assert_exact(settings, events: Path) -> None:
    asyncio.run(wait_until_quiescent(settings, timeout=300, progress=None))
    expected = reference_file(events, RULES)
    scores = asyncio.run(read_scores(settings))
    assert set(scores) == set(expected.raw)
    worst = max(abs(scores[user]["raw"] - raw) for user, raw in expected.raw.items())
    assert worst <= RULES.error_bound, worst


def _kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


INPUTS = ("purchases", "posts", "friendships")

# A defect of the embedded broker (noida-db 0.2.3), reproduced without
# Standing or Faust; Apache Kafka does not have it. (Its other defect, dead
# group members never expiring, is worked around by streams/runtime/embedded_broker.py.)
DURABILITY_BUG = pytest.mark.xfail(
    run=False,
    reason="noida-db 0.2.3 loses records it acknowledged (acks=all) shortly before it stops: after the restart "
    "the partition's next records take their offsets. Seen here as a whole batch of a worker's changelog "
    "records and friendship links gone while its state and input offsets moved on (about 1 run in 2), and "
    "earlier as a changelog high watermark going backwards (Faust's ConsistencyError). No client can "
    "restore acknowledged records a broker dropped; Apache Kafka keeps them",
)


@pytest.mark.parametrize("restart_dir", ["same", "empty"])
@pytest.mark.parametrize("moment", ["intake", "propagation"])
def test_sigkill_then_restart_ends_exact(fresh_settings, workers, events_file, tmp_path, moment, restart_dir):
    # The replacement has the killed worker's identity (static membership), as
    # a restarted process, container or pod does; "empty" is a new machine.
    first = workers.start(tmp_path / "data-1", worker_id="w1")
    asyncio.run(produce_file(fresh_settings, events_file, progress=False))
    total = sum(asyncio.run(_remaining(fresh_settings))[topic] for topic in INPUTS)
    if moment == "intake":
        _pause_when(fresh_settings, first, lambda s: 0 < sum(s[t] for t in INPUTS) < total * 0.7)
    else:
        _pause_when(fresh_settings, first, lambda s: sum(s[t] for t in INPUTS) == 0 and s["friend-updates"] > 0)
    _kill(first)  # SIGKILL ends a stopped process too
    workers.start(tmp_path / ("data-1" if restart_dir == "same" else "data-2"), worker_id="w1")
    _assert_exact(fresh_settings, events_file)


def test_a_replacement_on_a_new_path_with_the_same_ports_takes_over(fresh_settings, workers, events_file, tmp_path):
    """Killed, then replaced at once by a worker of another identity on the killed one's ports.

    The dead member's liveness probe reaches the replacement's metrics port,
    which must not answer for the dead process (streams/runtime/embedded_broker.py);
    the replacement binds the ports its predecessor still held for a moment.
    """
    first = workers.start(tmp_path / "data-1")
    asyncio.run(produce_file(fresh_settings, events_file, progress=False))
    total = sum(asyncio.run(_remaining(fresh_settings))[topic] for topic in INPUTS)
    _pause_when(fresh_settings, first, lambda s: 0 < sum(s[t] for t in INPUTS) < total * 0.7)
    _kill(first)
    workers.start(tmp_path / "elsewhere" / "data-2", ports_of=first)
    _assert_exact(fresh_settings, events_file)


def _table_contents(data_dir: Path) -> dict[str, dict[bytes, bytes]]:
    """Every key and value of every partition database (Faust's offset bookkeeping left out)."""
    return {path.name: dict(closed_partition_entries(path)) for path in sorted(data_dir.rglob("*.db"))}


def test_a_new_machine_restores_the_tables_byte_for_byte(fresh_settings, workers, events_file, tmp_path):
    first = workers.start(tmp_path / "data-1", worker_id="w1")
    asyncio.run(produce_file(fresh_settings, events_file, progress=False))
    asyncio.run(wait_until_quiescent(fresh_settings, timeout=300, progress=None))
    assert processes.stop_process(first) == 0
    second = workers.start(tmp_path / "data-2", worker_id="w1")
    deadline = time.monotonic() + 120
    while processes.sum_samples(processes.scrape_metrics(second.metrics_port), "standing_ready") < 1:
        assert time.monotonic() < deadline, "the worker on the empty data directory never became ready"
        time.sleep(0.1)
    samples = processes.scrape_metrics(second.metrics_port)
    assert processes.stop_process(second) == 0
    original, restored = _table_contents(tmp_path / "data-1"), _table_contents(tmp_path / "data-2")
    assert len(original) == 2 * fresh_settings.partitions
    assert sum(len(keys) for keys in original.values()) > 1000
    assert restored == original
    # The bulk path (streams/runtime/recovery.py) restored them, in many batches of FAULT_BATCH_SIZE.
    assert processes.sum_samples(samples, "standing_changelog_records_restored_total") > 10 * FAULT_BATCH_SIZE


def test_killed_during_a_rebalance_and_a_survivor_takes_over(fresh_settings, workers, events_file, tmp_path):
    first = workers.start(tmp_path / "data-1")
    asyncio.run(produce_file(fresh_settings, events_file, progress=False))
    _pause_when(fresh_settings, first, lambda s: sum(s[t] for t in INPUTS) > 0)
    first.send_signal(signal.SIGCONT)  # input still left: it cannot have finished unseen
    second = workers.start(tmp_path / "data-2")  # joins: the group rebalances
    time.sleep(0.5)
    _kill(first)  # dies while partitions move
    _assert_exact(fresh_settings, events_file)
    assert second.poll() is None


def test_two_workers_share_a_replay_and_one_is_killed(fresh_settings, workers, events_file, tmp_path):
    first = workers.start(tmp_path / "data-1")
    second = workers.start(tmp_path / "data-2")
    time.sleep(2)  # both in the group
    asyncio.run(produce_file(fresh_settings, events_file, progress=False))
    _wait_for(fresh_settings, lambda s: sum(s[t] for t in INPUTS) < 4000)
    _kill(second)
    _assert_exact(fresh_settings, events_file)
    assert first.poll() is None


def test_clean_sigterm_commits_and_exits_promptly(fresh_settings, workers, events_file, tmp_path):
    first = workers.start(tmp_path / "data-1")
    asyncio.run(produce_file(fresh_settings, events_file, progress=False))
    _wait_for(fresh_settings, lambda s: sum(s[t] for t in INPUTS) < 3000)
    started = time.monotonic()
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    assert time.monotonic() - started < 15
    # The batches in flight finished before Faust closed the producer: no agent
    # crashed on the way out (one that did was restarted and kept the worker alive).
    assert "Crashed" not in (tmp_path / "worker-0.log").read_text()
    workers.start(tmp_path / "data-1")
    _assert_exact(fresh_settings, events_file)


def test_every_event_sent_twice_ends_at_the_same_scores(fresh_settings, workers, events_file, tmp_path):
    doubled = tmp_path / "doubled.jsonl"
    lines = events_file.read_text().splitlines(keepends=True)
    doubled.write_text("".join(line + line for line in lines))
    workers.start(tmp_path / "data-1")
    asyncio.run(produce_file(fresh_settings, doubled, progress=False))
    _assert_exact(fresh_settings, events_file)


@DURABILITY_BUG
def test_broker_restarted_mid_replay(fresh_broker, fresh_settings, workers, events_file, tmp_path):
    workers.start(tmp_path / "data-1")
    asyncio.run(produce_file(fresh_settings, events_file, progress=False))
    _wait_for(fresh_settings, lambda s: sum(s[t] for t in INPUTS) < 4000)
    fresh_broker.stop()
    time.sleep(2)
    fresh_broker.start()
    _assert_exact(fresh_settings, events_file)


def test_a_broker_that_stops_answering_mid_replay_loses_nothing(fresh_broker, fresh_settings, workers, events_file, tmp_path):
    """The broker stops answering (SIGSTOP: a long GC pause, a network split) for longer than the
    worker's producer waits for acknowledgements, while batches are being delivered. Their states
    are written; their deliveries fail; the lanes rewind and read those records again, which are
    duplicates now. What those batches caused must still leave, and the worker must not restart.
    (Without Scorer._deliver keeping those records, scores ended off by 1.7-2.5 in 5 runs of 6.)"""
    workers.settings = replace(workers.settings, request_timeout_ms=2000)
    worker = workers.start(tmp_path / "data-1")
    asyncio.run(produce_file(fresh_settings, events_file, progress=False))
    total = sum(asyncio.run(_remaining(fresh_settings))[topic] for topic in INPUTS)
    # The worker is stopped with input left, so that it is mid-batch when the broker stops answering.
    _pause_when(fresh_settings, worker, lambda s: 0 < sum(s[t] for t in INPUTS) < total * 0.8)
    os.killpg(fresh_broker.pid, signal.SIGSTOP)  # the broker runs in a process group of its own
    try:
        worker.send_signal(signal.SIGCONT)
        time.sleep(6)  # three request timeouts
    finally:
        os.killpg(fresh_broker.pid, signal.SIGCONT)
    assert worker.poll() is None, "the worker exited"
    _assert_exact(fresh_settings, events_file)
    failures = processes.sum_samples(processes.scrape_metrics(worker.metrics_port), "standing_batch_failures_total")
    assert failures > 0, "no delivery failed: the broker was not stopped long enough to test anything"


async def _set_max_message_bytes(settings, topic: str, limit: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(limit)})])
    finally:
        await admin.close()


def _refused_for_three_seconds(settings, workers, tmp_path, topic: str) -> tuple:
    """A worker replaying a file (no duplicates: a dead-lettered event's twin could count while it
    does not), stopped mid-replay; ``topic``'s max.message.bytes set below every record for three
    seconds of its run (an operator's slip: a refusal is no timeout, so no waiting helps), then
    put back. Returns the worker and the events file, once the worker is quiet."""
    config = PopulationConfig(users=600, events=6000, seed=29)
    events = tmp_path / "events.jsonl"
    write_jsonl(events, generate_events(config, RULES))
    worker = workers.start(tmp_path / "data-1")
    asyncio.run(produce_file(settings, events, progress=False))
    friendships = asyncio.run(_remaining(settings))["friendships"]
    _pause_when(settings, worker, lambda s: 0 < s["friendships"] < friendships * 0.8)
    asyncio.run(_set_max_message_bytes(settings, topic, 16))
    try:
        worker.send_signal(signal.SIGCONT)
        time.sleep(3)
        held = processes.sum_samples(processes.scrape_metrics(worker.metrics_port), "standing_lane_held")
    finally:
        asyncio.run(_set_max_message_bytes(settings, topic, topics.MAX_RECORD_BYTES))
    asyncio.run(wait_until_quiescent(settings, timeout=300, progress=None))
    assert worker.poll() is None, "the worker exited"
    assert held >= 1, "no lane showed as held while the topic refused"
    assert processes.sum_samples(processes.scrape_metrics(worker.metrics_port), "standing_lane_held") == 0
    return worker, events


def _assert_exact_without(settings, events: Path, left_out: set[str]) -> None:
    kept = [line for line in events.read_bytes().splitlines(keepends=True) if json.loads(line)["event_id"] not in left_out]
    expected = compute_reference(kept, RULES)
    scores = asyncio.run(read_scores(settings))
    assert set(scores) == set(expected.raw)
    worst = max(abs(scores[user]["raw"] - raw) for user, raw in expected.raw.items())
    assert worst <= RULES.error_bound, (worst, len(left_out))


@pytest.mark.parametrize("refusing", ["pairs-changelog", "friend-updates"])
def test_records_the_broker_refuses_for_a_while_are_sent_once_it_takes_them(fresh_settings, workers, tmp_path, refusing):
    """A topic refuses every record for three seconds: the pairs changelog (states), or friend-updates
    (what states caused, some of which may have left). Neither is a record's fault, so nothing may
    be dead-lettered; the lanes keep what they decided, say once what to fix, and send it when the
    topic takes it; every score must end exact.

    Before: a refused delivery left its states written; read again, its records were duplicates that
    caused nothing, so they went through with nothing sent. Scores ended off by 5.02 (friend-updates);
    with the states put back instead, every friendship read meanwhile was dead-lettered (pairs)."""
    topic = topics.changelog_topic(fresh_settings.app_id, topics.PAIRS_TABLE) if refusing == "pairs-changelog" else topics.FRIEND_UPDATES
    worker, events = _refused_for_three_seconds(fresh_settings, workers, tmp_path, topic)
    assert not [letter for letter in asyncio.run(read_dead_letters(fresh_settings)) if letter["reason"] == "processing_failed"]
    _assert_exact_without(fresh_settings, events, set())
    failures = processes.sum_samples(processes.scrape_metrics(worker.metrics_port), "standing_batch_failures_total")
    assert failures > 0, "nothing was refused: the test tested nothing"
    said = [line for line in worker.log_path.read_text().splitlines() if "the broker refuses records Standing decided" in line and "ERROR" in line]
    assert 1 <= len(said) <= 2, said  # once per lane held
