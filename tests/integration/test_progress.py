"""The input-progress guard asks the real broker where a partition starts and what lies in a jump."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faust.types import TP

from streams.runtime.commits import InputProgress


def test_start_offsets_are_the_groups_commits_or_the_partitions_beginning(fresh_settings):
    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=fresh_settings.bootstrap_servers)
        await producer.start()
        for index in range(5):
            await producer.send_and_wait("posts", b"x%d" % index, partition=0)
        await producer.stop()
        committer = AIOKafkaConsumer(bootstrap_servers=fresh_settings.bootstrap_servers, group_id=fresh_settings.app_id)
        await committer.start()
        try:
            committer.assign([TopicPartition("posts", 0)])
            await committer.commit({TopicPartition("posts", 0): OffsetAndMetadata(3, "")})
        finally:
            await committer.stop()
        progress = InputProgress(SimpleNamespace(consumer=None), fresh_settings)
        try:
            starts = await progress._start_offsets([TP("posts", 0), TP("posts", 1)])
            between = await progress._records_between(TP("posts", 0), 1, 4)
            committed = await progress.committed_offsets()
        finally:
            await progress.stop()
        return starts, between, committed

    starts, between, committed = asyncio.run(scenario())
    assert starts == {TP("posts", 0): 3, TP("posts", 1): 0}
    assert committed == {("posts", 0): 3}  # what the re-send reads
    assert between is True


def test_a_transaction_marker_is_a_real_gap(fresh_settings):
    """A transactional producer leaves an offset with no record (its commit marker)."""

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=fresh_settings.bootstrap_servers, transactional_id="standing-progress-test")
        await producer.start()
        plain_producer = AIOKafkaProducer(bootstrap_servers=fresh_settings.bootstrap_servers)
        await plain_producer.start()
        try:
            async with producer.transaction():
                await producer.send("posts", b"in a transaction", partition=2)
            plain = await plain_producer.send_and_wait("posts", b"after it", partition=2)
        finally:
            await producer.stop()
            await plain_producer.stop()
        progress = InputProgress(SimpleNamespace(consumer=None), fresh_settings)
        try:
            return plain.offset, await progress._records_between(TP("posts", 2), 1, plain.offset)
        finally:
            await progress.stop()

    after, between = asyncio.run(scenario())
    assert after >= 2  # the record, its marker, then this one
    assert between is False


def test_a_seek_runs_on_the_consumer_thread(settings, tmp_path):
    """A rewind seeks from the app's thread; aiokafka's fetcher, which the seek changes, lives on the
    consumer's thread and is not thread-safe. Upstream (the patch removed) the seek ran on the
    caller's thread, and rewinds in quick succession crashed the fetcher with a KeyError."""
    import threading
    from dataclasses import replace

    from streams.runtime.app import create_app
    from streams.runtime.commits import SEEK

    async def seek_threads() -> list[str]:
        app = create_app(replace(settings, data_dir=tmp_path))
        app.topic("posts")
        consumer = app.consumer
        await consumer.start()
        try:
            seen: list[str] = []
            thread, upstream_seek = consumer._thread, consumer._thread.seek

            def seek(tp, offset):  # what ran where; then aiokafka's own seek
                seen.append(threading.current_thread().name)
                consumer._thread.seek = upstream_seek
                upstream_seek(TP("posts", 0), 0)

            thread.seek = seek
            try:
                await consumer.seek(TP("posts", 0), 0)
            except AssertionError:
                pass  # aiokafka: the partition is not assigned (no group here); the seek was tried where it ran
            return seen
        finally:
            await consumer.stop()

    here = threading.current_thread().name
    SEEK.apply()  # as streams.runtime.install does in a worker
    [ran_on] = asyncio.run(seek_threads())
    assert ran_on != here
    SEEK.remove()
    try:
        [ran_on] = asyncio.run(seek_threads())
        assert ran_on == here, "upstream seeks from the caller's thread"
    finally:
        SEEK.apply()
