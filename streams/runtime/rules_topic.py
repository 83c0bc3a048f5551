"""The rules through Kafka (spec section 8): one compacted topic, the audit trail of which rules made which score.

``rules`` holds one record per rules version in force at some time, keyed by
its epoch (0 for the first rules, then one more per change). Every worker
scores with the latest; a worker started with ``--rules FILE`` on a broker
where none were ever published publishes FILE, and one whose FILE differs
from the rules in force refuses to start.

A change (``publish``) is two writes: the record, then one ``rescore``
record on every partition of ``friend-updates``. Each user partition switches
when it reads its own, in order with everything else it reads, and rescores
every user it holds; ``standing wait`` returns once all of it has settled,
because those records are committed only once processed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import codec
from streams.rules import Rules, rules_from_text
from topology import topics
from topology.settings import Settings


@dataclass(frozen=True)
class RulesVersion:
    """One version of the rules in the audit trail."""

    epoch: int
    version: str
    rules: Rules
    published_ts: int
    #: the stream time when it was published (it took effect from there); -1 if unknown
    stream_time: int
    source: str


async def history(settings: Settings) -> list[RulesVersion]:
    """Every rules version published, oldest first (empty if none ever was)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, **settings.kafka_client_options())
    await consumer.start()
    found: dict[int, RulesVersion] = {}
    try:
        if topics.RULES not in await consumer.topics():
            return []
        partition = TopicPartition(topics.RULES, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        while await consumer.position(partition) < end:
            for records in (await consumer.getmany(partition, timeout_ms=1000)).values():
                for record in records:
                    if record.value is None:
                        continue
                    _, value = codec.decode(record.value, "rules_record")
                    found[value["epoch"]] = RulesVersion(
                        epoch=value["epoch"],
                        version=value["version"],
                        rules=rules_from_text(value["rules"], where=f"rules epoch {value['epoch']}", source=f"rules topic, epoch {value['epoch']}"),
                        published_ts=value["published_ts"],
                        stream_time=value["stream_time"],
                        source=value["source"],
                    )
    finally:
        await consumer.stop()
    return [found[epoch] for epoch in sorted(found)]


async def stream_time(settings: Settings) -> tuple[int, float]:
    """(the stream time, its rules' half-life in days): the largest time any user partition reached; (-1, 0) if none."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, **settings.kafka_client_options())
    await consumer.start()
    latest, half_life = -1, 0.0
    try:
        if topics.STREAM_TIME not in await consumer.topics():
            return latest, half_life
        partitions = [TopicPartition(topics.STREAM_TIME, p) for p in consumer.partitions_for_topic(topics.STREAM_TIME) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            for tp, records in (await consumer.getmany(*remaining, timeout_ms=1000)).items():
                for record in records:
                    _, value = codec.decode(record.value, "stream_time")
                    if value["stream_time"] >= latest:
                        latest, half_life = value["stream_time"], value["half_life_days"]
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return latest, half_life


async def publish(settings: Settings, rules: Rules, *, source: str, first: bool = False) -> RulesVersion:
    """Make ``rules`` the rules in force: the record, then (unless they are the first) a rescore on every user partition."""
    known = await history(settings)
    epoch = known[-1].epoch + 1 if known else 0
    now, (current, _) = int(time.time() * 1000), await stream_time(settings)
    entry = RulesVersion(epoch, rules.version, rules, now, current, source)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", **settings.kafka_client_options())
    await producer.start()
    try:
        value = codec.encode(
            "rules_record",
            {"epoch": epoch, "version": rules.version, "rules": rules.text, "published_ts": now, "stream_time": current, "source": source},
        )
        await producer.send_and_wait(topics.RULES, value, key=str(epoch).encode(), partition=0)
        if epoch > 0 and not first:
            rescore = codec.encode("rescore", {"epoch": epoch, "version": rules.version, "rules": rules.text})
            for partition in range(settings.partitions):
                await producer.send_and_wait(topics.FRIEND_UPDATES, rescore, partition=partition)
    finally:
        await producer.stop()
    return entry
