"""Gauges that need looking at the world: consumer lag, table sizes, assignment.

Refreshed on a timer rather than per event, so the hot path stays free of
it. The same lag readings feed the stall watch (``streams.runtime.stall_watch``).
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
from streams.runtime.stall_watch import StallWatch
from topology import topics

log = logging.getLogger(__name__)

INTERVAL_S = 5.0
KEY_COUNT_INTERVAL_S = 15.0  # a key scan; cheap, but not every 5 s on a big table
#: ... and at most this share of the worker's time: at 100k users and 560k
#: pairs a scan took ~0.55 s, 3.7% of a busy worker's time every 15 s.
KEY_COUNT_SHARE = 0.01


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
    consumed = (*scorer.user_topic_names, *scorer.pair_topic_names)
    stalls = StallWatch(scorer)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        metrics.REBALANCES.inc()
        metrics.CONSUMER_LAG.clear()  # partitions no longer ours must not linger

    @app.on_before_shutdown.connect
    async def close_lag_clients(sender, **kwargs) -> None:
        # Left open, their tasks (metadata sync, fetch routine, connection
        # reader) kept mode's shutdown waiting a full second for them.
        for client in list(clients.values()):
            try:
                await client.close() if hasattr(client, "close") else await client.stop()
            except Exception:
                pass
        clients.clear()

    @app.timer(interval=INTERVAL_S)
    async def refresh() -> None:
        assigned = app.assignor.assigned_actives()
        for topic in consumed:
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
        mine = [TopicPartition(tp.topic, tp.partition) for tp in assigned if tp.topic in consumed]
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
            await stalls.observe(tp, done, lag, now)
        stalls.forget_others(mine)
