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


def test_commands_that_only_read_never_create_a_topic(fresh_broker, tmp_path):
    """`standing wait`, `dump` and `explain` on a broker that auto-creates any topic asked about."""
    import subprocess
    import sys

    from aiokafka import AIOKafkaConsumer

    base = [sys.executable, "-m", "standing"]
    common = ["--broker", fresh_broker.address, "--partitions", "4"]
    for command in (["wait", "--timeout", "10", *common], ["dump", "--out", str(tmp_path / "scores.jsonl"), *common], ["explain", "ann", "--api", f"http://127.0.0.1:{free_port()}"]):
        subprocess.run(base + command, capture_output=True, timeout=60)

    async def existing() -> set[str]:
        consumer = AIOKafkaConsumer(bootstrap_servers=fresh_broker.address)
        await consumer.start()
        try:
            return {topic for topic in await consumer.topics() if not topic.startswith("__")}
        finally:
            await consumer.stop()

    assert asyncio.run(existing()) == set()


def test_a_command_that_creates_topics_creates_all_of_them(fresh_broker, tmp_path):
    """The producer, the first to reach a new broker in a script's natural order, creates every topic at once."""
    from tests.conftest import _settings_for
    from streams import events as ev
    from streams.runtime.producer import EventProducer

    settings = _settings_for(fresh_broker, tmp_path)

    async def run() -> list[str]:
        async with EventProducer(settings) as producer:
            await producer.send(ev.Purchase("p1", 1, "ann", "groceries", 1.0))
        return await ensure_topics(settings)

    assert asyncio.run(run()) == [], "nothing left to create: the producer created every topic"
