"""Topic creation is idempotent, keeps configs, and refuses a partition mismatch."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaProducer

from streams.runtime.admin import TopologyError, all_topics, ensure_topics, wait_for_broker
from topology.routing import partition_for
from tests.helpers import free_port


def test_ensure_topics_is_idempotent(fresh_broker, tmp_path):
    from tests.conftest import _settings_for

    settings = _settings_for(fresh_broker, tmp_path)
    created = asyncio.run(ensure_topics(settings))
    assert sorted(created) == sorted(spec.name for spec in all_topics(settings))
    assert asyncio.run(ensure_topics(settings)) == []


def test_a_partition_mismatch_says_what_to_do(fresh_settings):
    wrong = replace(fresh_settings, partitions=fresh_settings.partitions + 2)
    with pytest.raises(TopologyError, match="has 4 partitions .* configured for 6"):
        asyncio.run(ensure_topics(wrong))


def test_waiting_for_a_dead_broker_gives_up_with_a_clear_message(settings):
    dead = replace(settings, broker=f"127.0.0.1:{free_port()}")
    with pytest.raises(TopologyError, match="cannot reach Kafka .* `standing broker`"):
        asyncio.run(wait_for_broker(dead, timeout=2, log=lambda message: None))


def test_partition_for_matches_where_the_producer_puts_keyed_records(fresh_settings):
    async def run() -> list[tuple[str, int]]:
        producer = AIOKafkaProducer(bootstrap_servers=fresh_settings.broker)
        await producer.start()
        try:
            placed = []
            for i in range(200):
                key = f"user-{i}"
                metadata = await producer.send_and_wait("purchases", b"x", key=key.encode())
                placed.append((key, metadata.partition))
            return placed
        finally:
            await producer.stop()

    for key, partition in asyncio.run(run()):
        assert partition_for(key, fresh_settings.partitions) == partition
