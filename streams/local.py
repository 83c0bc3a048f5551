"""The whole flow in one process: a testing source and sink, topics as lists, tables as dicts of bytes.

``LocalPipeline`` runs exactly the batch functions a worker runs
(``streams.batch.score_users`` and ``route_friendships``), with what Kafka
and Faust provide replaced by the least that keeps their contract: each topic
partition is an append-only list read in order; a batch's records are read
from the partitions of one lane, its states are written back (encoded, as
RocksDB holds them) and its records appended to their topics before its
offsets count as committed; friend updates waiting in memory hold their
records' commit back. Randomness (an ``rng``) picks which lane and
partitions go next, how big batches are, whether a record is delivered twice
and whether the "worker" restarts (losing what waits in memory and reading
again from the committed offsets), so property tests cover the delivery
orders Kafka allows. Like bytewax's testing source and sink: whole flows,
no broker, in milliseconds.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Generic, Iterable, TypeVar

from schemas import codec
from streams import batch as core
from streams import state_codec
from streams.events import CATALOG, PAIR, USER, Catalog, Rejected
from streams.rules import Rules
from streams.state import PairState, UserState
from streams.waiting import WaitingUpdates
from topology import topics
from topology.routing import partition_for

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LocalRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class LocalStore(Generic[T]):
    """A table: partition -> key -> encoded state (decoded afresh on every load, as from RocksDB)."""

    def __init__(self, encode: Callable[[T], bytes], decode: Callable[[bytes], T]) -> None:
        self._encode = encode
        self._decode = decode
        self.data: dict[int, dict[str, bytes]] = {}

    def load(self, partition: int, key: str) -> T | None:
        raw = self.data.get(partition, {}).get(key)
        return None if raw is None else self._decode(raw)

    def load_raw(self, partition: int, key: str) -> bytes | None:
        return self.data.get(partition, {}).get(key)

    def put(self, partition: int, key: str, state: T) -> None:
        value = state.value if isinstance(state, core.Raw) else self._encode(state)
        self.data.setdefault(partition, {})[key] = value

    def has_key_with_prefix(self, partition: int, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self.data.get(partition, {}))

    def items(self, partition: int) -> Iterable[tuple[str, T]]:
        """The states of one partition (keys that hold no state, such as erasure markers, left out)."""
        for key, raw in list(self.data.get(partition, {}).items()):
            if not key.startswith("\x00"):
                yield key, self._decode(raw)

    def all(self) -> Iterable[tuple[int, str, T]]:
        for partition in list(self.data):
            for key, state in self.items(partition):
                yield partition, key, state


@dataclass
class LocalPipeline:
    """Topics, tables and the two lanes of a worker, in memory.

    ``produce`` (or ``produce_events``) appends input records; ``run`` processes
    batches until nothing is unread or waiting; ``scores`` reads the scores
    topic as a consumer would (the highest version per user).
    """

    rules: Rules
    partitions: int = 4
    catalog: Catalog = CATALOG
    #: None: lanes and partitions in turn, every batch as large as ``max_batch``, nothing repeated
    rng: random.Random | None = None
    max_batch: int = 8000
    #: chance that a record read is delivered once more, later (at-least-once)
    duplicate_p: float = 0.0
    #: chance, after a batch, that the worker restarts: what waits in memory is lost and
    #: reading starts again from the committed offsets
    restart_p: float = 0.0
    #: chance, after a batch, that the worker is killed while its outputs are in flight: of each
    #: changelog partition and each output topic partition only a prefix (maybe nothing) lands,
    #: no offset is committed, and the next owner re-sends what uncommitted records changed
    crash_p: float = 0.0
    #: how the user lane gives time to waiting friend updates (default: all of them in each batch)
    propagation: object = field(default_factory=core.ApplyAll)
    waiting_limit: int = 1_000_000
    now_ms: Callable[[], int] = lambda: 0
    #: users only friends' estimates and links reach go through the C path (False: the Python path for all)
    native_receivers: bool = True

    def __post_init__(self) -> None:
        self.context = core.Context(
            rules=self.rules,
            partitions=self.partitions,
            catalog=self.catalog,
            waiting_limit=self.waiting_limit,
            native_receivers=self.native_receivers,
        )
        self.logs: dict[tuple[str, int], list[LocalRecord]] = {}
        #: (topic, partition) -> next offset to read / offset committed
        self.position: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.users: LocalStore[UserState] = LocalStore(state_codec.encode_user, state_codec.decode_user)
        self.pairs: LocalStore[PairState] = LocalStore(state_codec.encode_pair, state_codec.decode_pair)
        self.waiting = WaitingUpdates()
        self.expiry = core.Expiry()
        self.epoch = 0
        self.counts: Counter = Counter()
        self.batches = 0
        self.restarts = 0
        self.crashes = 0
        #: records delivered a second time, per (topic, partition): (offset, record) to slip in later
        self._again: dict[tuple[str, int], list[LocalRecord]] = {}
        self.user_topics = (*self.catalog.topics(USER), topics.FRIEND_UPDATES)
        self.pair_topics = (*self.catalog.topics(PAIR), topics.PAIR_UPDATES)

    # --- the testing source ------------------------------------------------------

    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> LocalRecord:
        """Append a record, on ``partition`` or where Kafka's default partitioner puts ``key``."""
        if partition is None:
            partition = partition_for(key, self.partitions) if key is not None else 0
        log = self.logs.setdefault((topic, partition), [])
        record = LocalRecord(topic, partition, len(log), key, value)
        log.append(record)
        return record

    def produce_event(self, event) -> LocalRecord:
        """A validated event, encoded and keyed as ``EventProducer`` sends it."""
        return self.produce(self.catalog.topic_for(event), self.catalog.key_for(event).encode(), self.catalog.to_bytes(event))

    def produce_lines(self, lines: Iterable[str | bytes]) -> Counter:
        """JSON Lines as `standing produce` publishes them; returns the rejections by reason (as produce reports them)."""
        rejected: Counter = Counter()
        for line in lines:
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
            if not text.strip():
                continue
            try:
                event = self.catalog.from_json_line(text)
            except Rejected as rejection:
                rejected[rejection.reason] += 1
                continue
            self.produce_event(event)
        return rejected

    def publish_rules(self, rules: Rules) -> int:
        """What `standing rules publish` does: a rules change reaches every user partition, in order; returns its epoch."""
        self.epoch += 1
        self._in_force = rules
        value = codec.encode("rescore", {"epoch": self.epoch, "version": rules.version, "rules": rules.text})
        for partition in range(self.partitions):
            self.produce(topics.FRIEND_UPDATES, None, value, partition)
        return self.epoch

    # --- running -------------------------------------------------------------------

    def unread(self, topic_names: Iterable[str], partition: int) -> bool:
        for topic in topic_names:
            slot = (topic, partition)
            if self.position.get(slot, 0) < len(self.logs.get(slot, ())) or self._again.get(slot):
                return True
        return False

    def idle(self) -> bool:
        every = (*self.user_topics, *self.pair_topics)
        return not self.waiting and not any(self.unread(every, p) for p in range(self.partitions))

    def run(self, max_batches: int = 1_000_000) -> int:
        """Process batches until nothing is unread or waiting; returns how many ran."""
        ran = 0
        while not self.idle():
            if ran >= max_batches:
                raise RuntimeError(f"not quiet after {max_batches} batches")
            self.step()
            ran += 1
        return ran

    def step(self, *, killed_before_sends: bool = False, lane: str | None = None) -> None:
        """One batch of one lane (``lane``: USER or PAIR; default: the pipeline picks one with work).

        ``killed_before_sends``: the worker is killed once the batch's states are
        acknowledged and before anything they cause leaves (the widest gap a
        delivery has), then restarts.
        """
        rng, only = self.rng, lane
        candidates = [
            (lane, p)
            for lane, names in ((USER, self.user_topics), (PAIR, self.pair_topics))
            for p in range(self.partitions)
            if self.unread(names, p) or (lane == USER and self.waiting)
        ]
        if only is not None:
            candidates = [(lane, p) for lane, p in candidates if lane == only]
        if rng is None:
            lane, first = candidates[self.batches % len(candidates)]
            chosen = [first]
        else:
            lane, first = rng.choice(candidates)
            # A consumer's fetch mixes the partitions it owns: sometimes several in one batch.
            same_lane = [p for l, p in candidates if l == lane and p != first]
            chosen = [first] + [p for p in same_lane if rng.random() < 0.3]
        names = self.user_topics if lane == USER else self.pair_topics
        records = self._read(names, chosen)
        now = self.now_ms()
        if lane == USER:
            result = core.score_users(records, self.users, self.context, self.waiting, self.propagation, now, self.expiry)
            store = self.users
        else:
            result = core.route_friendships(records, self.pairs, self.context, now)
            store = self.pairs
        self.counts.update(result.counts)
        crash = killed_before_sends or (rng is not None and rng.random() < self.crash_p)
        if crash:
            if killed_before_sends:
                for partition, key, state in result.writes:
                    store.put(partition, key, state)
            else:
                self._land_some(store, result)
            self.batches += 1
            self.crashes += 1
            self.restart()
            return
        for partition, key, state in result.writes:
            store.put(partition, key, state)
        for send in result.sends:
            self.produce(*send)
        for slot, offset in result.advance.items():
            self.committed[slot] = max(self.committed.get(slot, 0), offset)
        if result.taken is not None:
            self.waiting.release(result.taken)
        self.batches += 1
        if rng is not None and rng.random() < self.restart_p:
            self.restart()

    def committable(self, slot: tuple[str, int]) -> int:
        """What a commit now would store: the next offset processed, held back where friend updates wait."""
        offset = self.committed.get(slot, 0)
        if slot[0] == topics.FRIEND_UPDATES:
            held = self.waiting.held_from(slot[1])
            if held is not None:
                offset = min(offset, held)
        return offset

    def _land_some(self, store: LocalStore, result: core.BatchResult) -> None:
        """A kill mid-flight, as ``streams.runtime.output.Outputs.deliver`` orders a delivery: the state
        writes first (a random prefix of each changelog partition lands), and only once all of them
        are acknowledged, the records they cause (a random prefix of each topic partition)."""
        rng = self.rng
        writes: dict[int, list] = {}
        for write in result.writes:
            writes.setdefault(write[0], []).append(write)
        every_write = True
        for partition_writes in writes.values():
            landed = rng.randint(0, len(partition_writes))
            every_write = every_write and landed == len(partition_writes)
            for partition, key, state in partition_writes[:landed]:
                store.put(partition, key, state)
        if not every_write:
            return
        sends: dict[tuple[str, int | None], list] = {}
        for send in result.sends:
            partition = send.partition if send.partition is not None else partition_for(send.key, self.partitions)
            sends.setdefault((send.topic, partition), []).append(send)
        for topic_sends in sends.values():
            for send in topic_sends[: rng.randint(0, len(topic_sends))]:
                self.produce(*send)

    def restart(self) -> None:
        """The worker restarts: memory is lost, reading resumes at the committed offsets, and what
        uncommitted records changed is sent again (streams.runtime.resend does the same)."""
        resume = {slot: self.committable(slot) for slot in self.position}
        self.waiting.clear()
        self.expiry.clear()
        if self.epoch:  # the worker comes back with the rules in force (and their epoch), as a real one does
            self.context = dataclasses.replace(self.context, rules=self._in_force, epoch=self.epoch)
        self._again.clear()
        self.position.update(resume)
        self.committed.update(resume)  # what the group holds: the next owner starts there
        self.restarts += 1
        self._resend_uncommitted()

    def _resend_uncommitted(self) -> None:
        for partition in range(self.partitions):
            for send in core.resend_partition(self.context, self.users, partition):
                self.produce(*send)
            _, rules, _ = core.partition_time(self.users, partition, self.context)
            for user, state in list(self.users.items(partition)):
                if core.uncommitted_user(state, partition, self.committed):
                    for send in core.resend_user(self.context, user, state, rules):
                        self.produce(*send)
            for send in core.resend_pair_partition(self.context, self.pairs, partition):
                self.produce(*send)
            for _, pair in list(self.pairs.items(partition)):
                if core.uncommitted_pair(pair, partition, self.committed, self.catalog.topics(PAIR)):
                    for send in core.resend_pair(self.context, pair):
                        self.produce(*send)

    def _read(self, names: Iterable[str], partitions: list[int]) -> list[LocalRecord]:
        rng = self.rng
        size = self.max_batch if rng is None else rng.randint(1, self.max_batch)
        streams = []
        for partition in partitions:
            for topic in names:
                slot = (topic, partition)
                log = self.logs.get(slot, ())
                start = self.position.get(slot, 0)
                taken = list(log[start : start + size])
                self.position[slot] = start + len(taken)
                again = self._again.pop(slot, [])
                if again:
                    taken.extend(again)  # delivered once more, after what followed it
                if taken:
                    streams.append(taken)
        records: list[LocalRecord] = []
        if rng is None:
            for taken in streams:
                records.extend(taken)
        else:
            # Interleave the topic partitions (each in its own order), as fetches arrive.
            while streams:
                taken = rng.choice(streams)
                records.append(taken.pop(0))
                if not taken:
                    streams.remove(taken)
            for record in records:
                if rng.random() < self.duplicate_p:
                    self._again.setdefault((record.topic, record.partition), []).append(record)
        return records

    # --- the testing sink -----------------------------------------------------------

    def topic(self, name: str) -> list[LocalRecord]:
        return [record for (topic, _), log in sorted(self.logs.items()) if topic == name for record in log]

    def scores(self) -> dict[str, dict]:
        """The newest score record of each user (highest version), decoded; a tombstone removes the user."""
        latest: dict[str, dict] = {}
        erased: dict[str, int] = {}
        for record in self.topic(topics.SCORES):
            if record.value is None:
                user = record.key.decode()
                gone = latest.pop(user, None)
                erased[user] = max(erased.get(user, -1), -1 if gone is None else gone["version"])
                continue
            _, score = codec.decode(record.value, "score")
            held = latest.get(score["user_id"])
            if (held is None or score["version"] >= held["version"]) and score["version"] > erased.get(score["user_id"], -1):
                latest[score["user_id"]] = score
        return latest

    def stream_time(self) -> int:
        """The largest stream time a user partition reached (what `standing dump` reads from ``stream-time``)."""
        times = [codec.decode(r.value, "stream_time")[1]["stream_time"] for r in self.topic(topics.STREAM_TIME)]
        return max(times, default=0)

    def raw_scores(self, as_of: int | None = None) -> dict[str, float]:
        """Each user's raw score valid at the stream time (or ``as_of``): records decay from their own ``as_of``."""
        times = [codec.decode(r.value, "stream_time")[1] for r in self.topic(topics.STREAM_TIME)]
        at = max((entry["stream_time"] for entry in times), default=0) if as_of is None else as_of
        half_life_days = times[-1]["half_life_days"] if times else 0.0
        return {user: decayed(score["raw"], score["as_of"], at, half_life_days) for user, score in self.scores().items()}

    def dead_letters(self) -> list[dict]:
        return [codec.decode(record.value, "dead_letter")[1] for record in self.topic(topics.DEAD_LETTERS)]


def decayed(raw: float, valid_at: int, at: int, half_life_days: float) -> float:
    """A raw score valid at ``valid_at``, made valid at ``at`` (spec section 7)."""
    if not half_life_days or at == valid_at:
        return raw
    return raw * 2.0 ** (-(at - valid_at) / (half_life_days * 24 * 3600 * 1000))
