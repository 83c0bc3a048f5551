"""Gauges that need looking at the world: consumer lag, table sizes, assignment.

Refreshed on a timer rather than per event, so the hot path stays free of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.runtime import metrics
from streams.runtime.agents import Scorer
from topology import topics

log = logging.getLogger(__name__)

CONSUMED = (topics.PURCHASES, topics.POSTS, topics.FRIENDSHIPS, topics.FRIEND_UPDATES)
INTERVAL_S = 5.0
KEY_COUNT_INTERVAL_S = 15.0  # a key scan; cheap, but not every 5 s on a big table
#: ... and at most this share of the worker's time: at 100k users and 560k
#: pairs a scan took ~0.55 s, 3.7% of a busy worker's time every 15 s.
KEY_COUNT_SHARE = 0.01
#: A partition with records waiting whose committed offset has not moved for
#: this long is checked for being left out of Faust's fetch set (see below).
STALL_S = 20.0
#: ... and one found active (not left out) that many checks in a row is sought
#: back to its committed offset.
SEEK_AFTER_CHECKS = 3


def _dir_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


async def _count_keys(store, partition: int, chunk: int = 5000) -> tuple[int, float]:
    """Exact number of keys in one partition, and the seconds spent scanning.

    Exact: RocksDB's own estimate counts overwritten versions and was off
    several-fold. A scan of 100k users and 560k pairs held the event loop for
    hundreds of milliseconds in one go; it gives way every ``chunk`` keys, and
    the time the agents run meanwhile is not counted as the scan's.
    """
    keys = 0
    scanning = 0.0
    started = time.perf_counter()
    for keys, _ in enumerate(store.keys(partition), 1):
        if keys % chunk == 0:
            scanning += time.perf_counter() - started
            await asyncio.sleep(0)
            started = time.perf_counter()
    return keys, scanning + time.perf_counter() - started


def next_key_count_after(scanning_s: float) -> float:
    """Seconds until the next key count: every 15 s, or less often if a scan is long."""
    return max(KEY_COUNT_INTERVAL_S, scanning_s / KEY_COUNT_SHARE)


def install_monitoring(scorer: Scorer) -> None:
    app = scorer.app
    settings = scorer.settings
    clients: dict[str, object] = {}
    next_count = [float("-inf")]  # monotonic time of the next key count
    progress: dict[TopicPartition, tuple[int, float]] = {}  # tp -> (committed, since)
    checks: dict[TopicPartition, int] = {}  # tp -> stalled checks in a row with the partition active

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        metrics.REBALANCES.inc()
        metrics.CONSUMER_LAG.clear()  # partitions no longer ours must not linger

    @app.timer(interval=INTERVAL_S)
    async def refresh() -> None:
        assigned = app.assignor.assigned_actives()
        for topic in CONSUMED:
            metrics.ASSIGNED_PARTITIONS.labels(topic).set(sum(1 for tp in assigned if tp.topic == topic))
        now = time.monotonic()
        if now >= next_count[0]:
            scanning = 0.0
            for name, store in ((topics.USERS_TABLE, scorer.users), (topics.PAIRS_TABLE, scorer.pairs)):
                keys = 0
                for partition in store.partitions():
                    try:
                        counted, took = await _count_keys(store, partition)
                    except Exception:  # a DB closing during a rebalance
                        continue
                    keys += counted
                    scanning += took
                metrics.TABLE_KEYS.labels(name).set(keys)
            next_count[0] = now + next_key_count_after(scanning)
        for name, table in ((topics.USERS_TABLE, scorer.users_table), (topics.PAIRS_TABLE, scorer.pairs_table)):
            store = table.data
            metrics.TABLE_BYTES.labels(name).set(sum(_dir_bytes(Path(store.partition_path(p))) for p in list(store._dbs)))
        mine = [TopicPartition(tp.topic, tp.partition) for tp in assigned if tp.topic in CONSUMED]
        if not mine:
            return
        try:
            if not clients:
                admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options())
                consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options())
                await admin.start()
                await consumer.start()
                clients.update(admin=admin, consumer=consumer)
            committed = await clients["admin"].list_consumer_group_offsets(settings.app_id)
            ends = await clients["consumer"].end_offsets(mine)
        except Exception as error:  # monitoring must never take the worker down
            log.warning("could not refresh consumer lag: %r", error)
            for client in clients.values():
                try:
                    await client.close() if hasattr(client, "close") else await client.stop()
                except Exception:
                    pass
            clients.clear()
            return
        now = time.monotonic()
        for tp in mine:
            entry = committed.get(tp)
            done = entry.offset if entry is not None and entry.offset >= 0 else 0
            lag = max(0, ends[tp] - done)
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
            previous = progress.get(tp)
            if lag == 0 or previous is None or previous[0] != done or _held_while_applied(scorer, tp):
                progress[tp] = (done, now)
                checks.pop(tp, None)
            elif now - previous[1] >= STALL_S and scorer.ready and not getattr(app, "in_recovery", False):
                found = _resume_if_left_out(app, tp, lag, now - previous[1])
                checks[tp] = checks.get(tp, 0) + 1 if found == "active" else 0
                if checks[tp] >= SEEK_AFTER_CHECKS:  # a minute of an active partition not moving
                    checks[tp] = 0
                    await _seek_back(app, tp, done)
                progress[tp] = (done, now)  # check (and log) at most once per STALL_S
        for tp in list(progress):
            if tp not in mine:
                del progress[tp]


def _held_while_applied(scorer: Scorer, tp: TopicPartition) -> bool:
    """True if the worker holds ``tp``'s commit back itself: its friend updates were read and wait to be applied.

    A long propagation wave keeps a friend-updates commit still for minutes
    while every batch applies some of it; that partition is not stalled, and
    seeking it back would only fetch again what was read.
    """
    return tp.topic == topics.FRIEND_UPDATES and scorer.waiting_updates.held_from(tp.partition) is not None


async def _seek_back(app, tp: TopicPartition, committed: int) -> None:
    """Re-position a stalled partition's fetch at its committed offset.

    Faust's consumer drops every fetched record below its "read offset", and
    around a rebalance records fetched before its seek can push that offset
    past records it has not delivered (streams/progress.py). Usually a later
    record shows the jump and the agent seeks back at once; when nothing
    arrives after the dropped records, this is what notices. Seeking makes
    the consumer fetch from the commit again; what was processed since is
    left out by the progress guard.
    """
    consumer = app.consumer
    faust_tp = _assigned(consumer, tp)
    if faust_tp is None:
        return
    log.warning("%s[%d]: seeking the stalled partition back to its committed offset %d", tp.topic, tp.partition, committed)
    try:
        await consumer.seek(faust_tp, committed)
        metrics.PARTITIONS_RESUMED.inc()
    except Exception as error:  # a rebalance meanwhile: it will position the partition itself
        log.warning("could not seek %s[%d]: %r", tp.topic, tp.partition, error)


def _assigned(consumer, tp: TopicPartition):
    """Faust's own TP for ``tp`` if the consumer holds it, else None."""
    return next((c for c in consumer.assignment() if c.topic == tp.topic and c.partition == tp.partition), None)


def _resume_if_left_out(app, tp: TopicPartition, lag: int, stalled_s: float) -> str:
    """Put a stalled partition back into Faust's fetch set if it fell out of it.

    Faust fetches only its "active" partitions: it drops one when its stream
    buffer is under pressure or while it rebalances and recovers, and adds it
    back when the buffer drains or recovery ends; recovery also suspends the
    whole flow and resumes it at its end. Records of a partition we own
    waiting this long, with recovery over, mean one of these was not undone:
    undo it, say so, count it. Returns what was found: "gone" (no longer
    ours), "resumed", "flow resumed", or "active" (nothing left out: the
    caller may seek it back).
    """
    consumer = app.consumer
    faust_tp = _assigned(consumer, tp)
    if faust_tp is None:
        return "gone"
    active = consumer._get_active_partitions()
    paused = faust_tp in consumer._paused_partitions
    buffered = faust_tp in consumer._buffered_partitions
    if faust_tp in active and not paused:
        recovery = app.tables.recovery
        flow = {
            "consumer flow": consumer.flow_active,
            "flow control": app.flow_control.is_active(),
            "recovery completed": recovery.completed.is_set(),
            "in recovery": recovery.in_recovery,
        }
        log.warning("%s[%d]: %d records waiting, no progress for %.0f s, partition active in the consumer; %s",
                    tp.topic, tp.partition, lag, stalled_s, flow)  # fmt: skip
        if recovery.completed.is_set() and not recovery.in_recovery and not (flow["consumer flow"] and flow["flow control"]):
            # Recovery is over but the flow it suspended was not resumed (it
            # returns early when the generation moved during the seek).
            log.warning("resuming the consumer flow that recovery left suspended")
            app.flow_control.resume()
            consumer.resume_flow()
            metrics.PARTITIONS_RESUMED.inc()
            return "flow resumed"
        return "active"
    log.warning("%s[%d]: %d records waiting, no progress for %.0f s, left out of the consumer's fetch set "
                "(paused=%s, buffer-full=%s); resuming it", tp.topic, tp.partition, lag, stalled_s, paused, buffered)  # fmt: skip
    consumer._buffered_partitions.discard(faust_tp)
    consumer.resume_partitions({faust_tp})
    metrics.PARTITIONS_RESUMED.inc()
    return "resumed"
