"""Gauges that need looking at the world: consumer lag, table sizes, assignment.

Refreshed on a timer rather than per event, so the hot path stays free of it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams import metrics
from streams.agents import Scorer
from topology import topics

log = logging.getLogger(__name__)

CONSUMED = (topics.PURCHASES, topics.POSTS, topics.FRIENDSHIPS, topics.FRIEND_UPDATES)
INTERVAL_S = 5.0
KEY_COUNT_INTERVAL_S = 15.0  # a key scan; cheap, but not every 5 s on a big table


def _dir_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def install_monitoring(scorer: Scorer) -> None:
    app = scorer.app
    settings = scorer.settings
    clients: dict[str, object] = {}
    last_count = [float("-inf")]

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        metrics.REBALANCES.inc()
        metrics.CONSUMER_LAG.clear()  # partitions no longer ours must not linger

    @app.timer(interval=INTERVAL_S)
    async def refresh() -> None:
        metrics.READY.set(1 if scorer.ready else 0)
        assigned = app.assignor.assigned_actives()
        for topic in CONSUMED:
            metrics.ASSIGNED_PARTITIONS.labels(topic).set(sum(1 for tp in assigned if tp.topic == topic))
        now = time.monotonic()
        if now - last_count[0] >= KEY_COUNT_INTERVAL_S:
            last_count[0] = now
            for name, store in ((topics.USERS_TABLE, scorer.users), (topics.PAIRS_TABLE, scorer.pairs)):
                keys = 0
                for partition in store.partitions():
                    try:
                        keys += store.count(partition)
                    except Exception:  # a DB closing during a rebalance
                        pass
                metrics.TABLE_KEYS.labels(name).set(keys)
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
        for tp in mine:
            entry = committed.get(tp)
            done = entry.offset if entry is not None and entry.offset >= 0 else 0
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, ends[tp] - done))
