"""What both peers and their driver share: Kafka plumbing, process sampling, the result record.

Self-contained on purpose (issue 17): it imports from this repository only
``standing.reference``, ``standing.population``, ``streams.rules``,
``streams.events`` and ``standing.broker``, so the peers keep working while the
packages around them move.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import socket
import sys
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from streams.rules import Rules

INPUT_TOPICS = ("purchases", "posts", "friendships")

#: noida-db answers a fetch with a partition's whole backlog, whatever the
#: client asked for; librdkafka refuses a response larger than this (its
#: default is 100 MB), so every librdkafka consumer here raises it to the max.
RECEIVE_MESSAGE_MAX_BYTES = 1_000_000_000


@dataclass
class PeerResult:
    """One peer's run: rate from start to quiescence, peak RSS, and whether its scores are within the bound."""

    name: str
    events_per_s: float | None
    peak_rss_bytes: int | None
    exact: bool
    max_abs_diff: float | None
    detail: str = ""
    seconds: float | None = None
    extra: dict = field(default_factory=dict)


# --- ports and processes -----------------------------------------------------------


def free_port() -> int:
    """A loopback port free now, below the ephemeral range (where client sockets take theirs)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    pick = random.SystemRandom()
    for _ in range(100):
        port = pick.randrange(20000, max(20001, low))
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                text = stat.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: split after the last ')'
        fields = text[text.rindex(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def tree_rss_bytes(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (shared pages counted in each)."""
    children = _children_map()
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += _rss_bytes(current)
        stack.extend(children.get(current, ()))
    return total


class RssSampler:
    """Samples the RSS of a process tree in a thread; ``peak`` is the largest sum seen."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def die_with_parent() -> None:
    """preexec_fn: own process group, SIGTERM when the parent dies (nothing is orphaned)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def python_module_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# --- rules across a process boundary -------------------------------------------------


def write_rules(rules: Rules, path: Path) -> Path:
    """Rules pickled for a child process (Rules pickles itself; exact floats, any source)."""
    path.write_bytes(pickle.dumps(rules))
    return path


def read_rules(path: str | Path) -> Rules:
    return pickle.loads(Path(path).read_bytes())


# --- Kafka -----------------------------------------------------------------------------


def create_topics(broker: str, partitions: int, names=INPUT_TOPICS, timeout: float = 30.0) -> None:
    """Create ``names`` with ``partitions`` partitions where missing (an existing one must agree)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker})
    existing = admin.list_topics(timeout=timeout).topics
    for name in names:
        if name in existing and len(existing[name].partitions) != partitions:
            raise RuntimeError(f"topic {name!r} has {len(existing[name].partitions)} partitions, not {partitions}")
    missing = [NewTopic(name, partitions, 1) for name in names if name not in existing]
    if missing:
        for future in admin.create_topics(missing, operation_timeout=timeout).values():
            future.result(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        if all(name in topics and len(topics[name].partitions) == partitions for name in names):
            return
        time.sleep(0.1)
    raise RuntimeError(f"topics {names} not visible with {partitions} partitions after {timeout:.0f} s")


def _partitions(consumer, topic: str, timeout: float) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return []
    return sorted(metadata.partitions)


def read_latest(broker: str, topic: str, decode, timeout: float = 60.0) -> dict:
    """key -> decode(value) of the last record of each key in ``topic``, read from offset 0 to its end now."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": broker, "group.id": f"peers-reader-{os.getpid()}-{time.monotonic_ns()}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "receive.message.max.bytes": RECEIVE_MESSAGE_MAX_BYTES,
    })  # fmt: skip
    try:
        partitions = _partitions(consumer, topic, timeout)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1] for p in partitions}
        wanted = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in wanted])
        latest: dict = {}
        deadline = time.monotonic() + timeout
        while wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {sorted(wanted)} not read to their end in {timeout:.0f} s")
            for message in consumer.consume(10_000, 0.5):
                if message.error() is not None:
                    continue
                latest[message.key()] = decode(message.value())
                if message.offset() + 1 >= ends[message.partition()]:
                    wanted.discard(message.partition())
        return latest
    finally:
        consumer.close()


def group_lag(broker: str, group: str, topics, timeout: float = 30.0) -> dict[str, int]:
    """topic -> records not yet committed by consumer group ``group`` (0 everywhere = nothing in flight)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False})
    try:
        lag: dict[str, int] = {}
        for topic in topics:
            parts = [TopicPartition(topic, p) for p in _partitions(consumer, topic, timeout)]
            committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=timeout)}
            total = 0
            for tp in parts:
                end = consumer.get_watermark_offsets(tp, timeout=timeout)[1]
                done = committed.get(tp.partition, -1)
                total += end - (done if done >= 0 else 0)
            lag[topic] = total
        return lag
    finally:
        consumer.close()


def within(actual: Mapping[str, float], expected: Mapping[str, float], bound: float):
    """(exact, max_abs_diff, text) of ``actual`` against the reference ``expected``."""
    from standing.reference import compare

    comparison = compare(actual, expected)
    ok = comparison.within(bound)
    return ok, comparison.max_abs_diff, f"{'within' if ok else 'NOT within'} {bound:.4g}: {comparison}"
