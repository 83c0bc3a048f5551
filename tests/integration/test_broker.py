"""The embedded broker: it answers Kafka, keeps data across restarts, fails clearly, leaves no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import textwrap

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from standing.broker import BrokerError, EmbeddedBroker
from standing.processes import pid_alive
from tests.helpers import free_port


async def _produce(address: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=address)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def _read_all(address: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=address, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        while len(values) < end:
            batch = await consumer.getmany(tp, timeout_ms=2000)
            values += [record.value for record in batch.get(tp, [])]
        return values
    finally:
        await consumer.stop()


def test_records_survive_a_restart_with_the_same_data_dir(tmp_path):
    broker = EmbeddedBroker(port=free_port(), data_dir=tmp_path / "data")
    with broker:
        asyncio.run(_produce(broker.address, "kept", [b"one", b"two"]))
    assert not broker.is_running()
    with broker:
        assert asyncio.run(_read_all(broker.address, "kept")) == [b"one", b"two"]


def test_a_taken_port_is_a_clear_error(broker, tmp_path):
    port = int(broker.address.rsplit(":", 1)[1])
    with pytest.raises(BrokerError, match=f"port {port} .* in use"):
        EmbeddedBroker(port=port, data_dir=tmp_path / "other").start()


def test_no_orphan_when_the_parent_is_killed(tmp_path):
    port = free_port()
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from standing.broker import EmbeddedBroker
        broker = EmbeddedBroker(port={port}, data_dir=Path({str(tmp_path / 'data')!r})).start()
        print(broker.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    broker_pid = int(parent.stdout.readline())
    assert pid_alive(broker_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while pid_alive(broker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            os.waitpid(broker_pid, os.WNOHANG)
        except ChildProcessError:
            pass
    assert not pid_alive(broker_pid), "the broker outlived its parent"


def test_standing_broker_command_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "standing", "broker", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    line = process.stdout.readline()
    assert f"127.0.0.1:{port}" in line
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    from standing.broker import port_is_open

    assert not port_is_open("127.0.0.1", port)


async def test_fetch_pacing_calms_idle_consumers_and_still_delivers(broker):
    """noida-db answers an empty fetch at once (no long poll): an idle consumer
    re-fetches in a tight loop. With pacing, an idle consumer asks about once
    per pause, and a record produced while it idles still arrives."""
    from aiokafka.consumer import fetcher

    from streams.runtime.embedded_broker import pace_empty_fetches

    topic = f"pacing-{time.time_ns()}"
    await _produce(broker.address, topic, [b"first"])
    fetches = 0

    def counting(inner):
        async def proc(self, *args):
            nonlocal fetches
            fetches += 1
            return await inner(self, *args)

        return proc

    async def idle_fetches(pause_ms: int) -> tuple[int, list[bytes]]:
        nonlocal fetches
        pace_empty_fetches(pause_ms)
        paced = fetcher.Fetcher._proc_fetch_request
        fetcher.Fetcher._proc_fetch_request = counting(paced)
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.address, enable_auto_commit=False)
        try:
            await consumer.start()
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            received = [r.value for r in (await consumer.getmany(tp, timeout_ms=5000)).get(tp, [])]
            fetches = 0
            await asyncio.sleep(1.0)  # idle: nothing new on the topic
            idle = fetches
            await _produce(broker.address, topic, [b"second"])
            deadline = time.monotonic() + 10
            while len(received) < 2 and time.monotonic() < deadline:
                received += [r.value for r in (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])]
            return idle, received
        finally:
            await consumer.stop()
            fetcher.Fetcher._proc_fetch_request = paced
            pace_empty_fetches(0)

    unpaced_idle, _ = await idle_fetches(0)
    paced_idle, received = await idle_fetches(20)
    assert received == [b"first", b"second"]
    assert paced_idle <= 1000 / 20 * 1.5, paced_idle  # about one fetch per pause
    # If this fails, the broker now long-polls and the fetch pacing of streams/runtime/embedded_broker.py can go.
    assert unpaced_idle > 5 * paced_idle, (unpaced_idle, paced_idle)
