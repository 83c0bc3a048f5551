"""Creating the declared topics (idempotent) and waiting for a broker."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError

from topology.settings import Settings
from streams.events import CATALOG, Catalog
from topology.topics import TopicSpec, declared_topics


class TopologyError(Exception):
    pass


async def wait_for_broker(settings: Settings, timeout: float = 30.0, *, log: Callable[[str], None] = print) -> None:
    """Return once the broker answers; retry with backoff up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    said = False
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=5000, **settings.kafka_client_options())
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaError, OSError) as error:
            if time.monotonic() + delay > deadline:
                raise TopologyError(
                    f"cannot reach Kafka at {settings.broker} after {timeout:.0f} s ({type(error).__name__}); "
                    f"start it with `standing broker` or pass --broker HOST:PORT"
                ) from None
            if not said:
                log(f"waiting for Kafka at {settings.broker}…")
                said = True
        finally:
            await admin.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def all_topics(settings: Settings, catalog: Catalog = CATALOG) -> list[TopicSpec]:
    """Every topic Standing uses: its event types' and its own (topology/topics.py)."""
    return declared_topics(settings, catalog.topics())


async def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None, *, schemas: bool = True) -> list[str]:
    """Create the declared topics that are missing, all of them at once; returns the names created.

    An existing topic with another partition count is an error, not something
    to paper over: co-partitioned topics must agree or keys land on the wrong
    worker. With a Schema Registry (and ``schemas``), the schemas are
    registered there too and written with its ids (``schema_registry.ensure``).
    """
    created = await _ensure_topics(settings, specs)
    if schemas and settings.schema_registry_url:
        await ensure_schemas(settings)
    return created


async def ensure_schemas(settings: Settings) -> dict[str, int]:
    """Register Standing's schemas in the configured Schema Registry: subject -> id written."""
    from streams.runtime import schema_registry

    try:
        return await asyncio.to_thread(schema_registry.ensure, settings)
    except schema_registry.RegistryError as error:
        raise TopologyError(str(error)) from None


async def _ensure_topics(settings: Settings, specs: list[TopicSpec] | None) -> list[str]:
    specs = specs if specs is not None else all_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options())
    try:
        await admin.start()
        existing = await _partition_counts(settings, [spec.name for spec in specs])
        for spec in specs:
            have = existing.get(spec.name)
            if have is not None and have != spec.partitions:
                raise TopologyError(
                    f"topic {spec.name!r} has {have} partitions but Standing is configured for {spec.partitions}; "
                    f"set STANDING_PARTITIONS={have} (or --partitions {have}), or delete the topic so it is recreated"
                )
        await _raise_size_limits(admin, [spec for spec in specs if spec.name in existing])
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            await admin.create_topics(
                [NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.configs) for spec in missing]
            )
            await _wait_until_visible(settings, [spec.name for spec in missing])
        return [spec.name for spec in missing]
    except KafkaConnectionError:
        raise TopologyError(f"cannot reach Kafka at {settings.broker}; start it with `standing broker` or pass --broker") from None
    finally:
        await admin.close()


#: DescribeConfigs' source of a value set on the topic itself (DYNAMIC_TOPIC_CONFIG).
_SET_ON_TOPIC = 1


async def _raise_size_limits(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    """An existing topic whose max.message.bytes is below Standing's gets Standing's.

    Topics created before a release raised a limit (dead-letters once kept
    the broker's 1 MiB, so the dead letter of an input record at the limit
    did not fit and stopped its partition). Only raised, never lowered; the
    topic's other settings (an operator's retention) are kept: AlterConfigs
    replaces a topic's whole set, so it is sent with every value set on the topic.
    """
    wanted = {spec.name: int(spec.configs["max.message.bytes"]) for spec in specs if "max.message.bytes" in spec.configs}
    if not wanted:
        return
    described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted])
    changes = []
    for response in described:
        for error_code, _, _, name, entries in (resource[:5] for resource in response.resources):
            if error_code or name not in wanted:
                continue
            values = {entry[0]: entry[1] for entry in entries}
            current = int(values.get("max.message.bytes") or 0)
            if current >= wanted[name]:
                continue
            kept = {entry[0]: entry[1] for entry in entries if entry[3] is not True and entry[3] == _SET_ON_TOPIC}
            kept["max.message.bytes"] = str(wanted[name])
            changes.append(ConfigResource(ConfigResourceType.TOPIC, name, kept))
    if changes:
        await admin.alter_configs(changes)


async def _partition_counts(settings: Settings, names: list[str]) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options())
    await consumer.start()
    try:
        all_topics = await consumer.topics()
        counts = {}
        for name in names:
            if name in all_topics:
                partitions = consumer.partitions_for_topic(name)
                counts[name] = len(partitions or ())
        return counts
    finally:
        await consumer.stop()


async def _wait_until_visible(settings: Settings, names: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = await _partition_counts(settings, names)
        if all(name in counts and counts[name] > 0 for name in names):
            return
        await asyncio.sleep(0.1)
    raise TopologyError(f"topics {names} were created but are not visible after {timeout:.0f} s")


async def end_offsets(settings: Settings, topic_names: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options())
    await consumer.start()
    try:
        partitions = [TopicPartition(name, p) for name in topic_names for p in sorted(consumer.partitions_for_topic(name) or ())]
        return await consumer.end_offsets(partitions) if partitions else {}
    finally:
        await consumer.stop()


def ensure_topics_sync(settings: Settings) -> list[str]:
    return asyncio.run(ensure_topics(settings))
