"""One batch, as a pure function: records and a store in; states, records to send, offsets and counts out.

``score_users`` (the user lane: purchases, posts and friend updates of some
user partitions) and ``route_friendships`` (the pair lane) are the whole of
what a worker does with a batch; the runtime (``streams.runtime.agents``)
only takes batches from Kafka, calls them, writes the states, sends the
records and commits. Nothing here knows Kafka or Faust, so whole batches --
decoding, dead letters, de-duplication, coalescing, propagation across
partitions -- run in-process in tests (``streams.local``).

Coalescing happens here: however many records reach a user in one batch,
the user is written once, decides once whether to publish, and sends at most
one estimate to each friend (``UserBatch``, ``PairBatch``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple, Protocol, Sequence, TypeVar

from schemas import codec
from streams import events as ev
from streams import friend_updates, scoring
from streams.events import Catalog, Rejected
from streams.friend_updates import ESTIMATE, LINK, UNKNOWN_ORIGIN, earliest_origin
from streams.rules import Rules
from streams.state import PairState, UserState
from streams.waiting import Taken, WaitingUpdates
from topology import topics
from topology.routing import partition_for

log = logging.getLogger(__name__)


@dataclass(slots=True)
class EstimateOut:
    """An estimate for one receiver (becomes a FriendUpdate of kind ESTIMATE)."""

    receiver: str
    sender: str
    estimate: float
    version: int
    origin_ts: int


@dataclass(slots=True)
class LinkOut:
    """A link change for one endpoint (becomes a FriendUpdate of kind LINK)."""

    receiver: str
    sender: str
    weight: float
    version: int
    origin_ts: int


@dataclass(slots=True)
class ScoreOut:
    user_id: str
    raw: float
    score: float
    own: float
    network: float
    version: int
    ts: int
    #: event time of the oldest input that led to this score, through any
    #: number of friends (coalescing keeps the oldest, so under steady load it
    #: is the age of the oldest change still travelling, not a latency)
    origin_ts: int
    #: event time of the oldest of this user's own events (purchase, post,
    #: friendship) in the batch; None when only friends' estimates moved it.
    #: Event-to-score latency is measured from this.
    direct_ts: int | None = None


@dataclass(slots=True)
class BatchCounts:
    accepted: int = 0
    duplicates: int = 0
    #: friend updates applied / ignored as stale or duplicate
    updates_applied: int = 0
    updates_stale: int = 0


@dataclass(slots=True)
class UserBatchOutput:
    states: dict[str, UserState]
    estimates: list[EstimateOut]
    scores: list[ScoreOut]
    counts: BatchCounts


class UserBatch:
    """Applies one batch of per-user records and decides what to publish."""

    def __init__(
        self,
        rules: Rules,
        load: Callable[[str], UserState | None],
        *,
        dedup_window_ms: int,
        dedup_min_ids: int,
    ) -> None:
        self._rules = rules
        self._load = load
        self._dedup_window_ms = dedup_window_ms
        self._dedup_min_ids = dedup_min_ids
        self._states: dict[str, UserState] = {}
        self._changed: dict[str, int] = {}  # user -> oldest origin_ts of what changed it
        self._direct: dict[str, int] = {}  # user -> oldest ts of their own events that changed it
        self._new_links: dict[str, list[str]] = {}
        self.counts = BatchCounts()

    def _state(self, user: str) -> UserState:
        state = self._states.get(user)
        if state is None:
            state = self._load(user) or UserState()
            self._states[user] = state
        return state

    def _mark(self, user: str, state: UserState, origin_ts: int, topic: str, offset: int) -> None:
        previous = self._changed.get(user)
        self._changed[user] = origin_ts if previous is None else earliest_origin(previous, origin_ts)
        if offset > state.source_offsets.get(topic, -1):
            state.source_offsets[topic] = offset

    def points(
        self,
        user: str,
        event_id: str,
        ts: int,
        contributions: Iterable[tuple[str, float]],
        topic: str,
        offset: int,
    ) -> bool:
        """An accepted purchase or post; False if it is a duplicate."""
        state = self._state(user)
        if not scoring.remember_event(state.recent_events, event_id, ts, self._dedup_window_ms, self._dedup_min_ids):
            self.counts.duplicates += 1
            return False
        scoring.apply_points(state, contributions)
        self.counts.accepted += 1
        self._mark(user, state, ts, topic, offset)
        self._mark_direct(user, ts)
        return True

    def _mark_direct(self, user: str, ts: int) -> None:
        if ts == UNKNOWN_ORIGIN:
            return  # a link re-sent after a crash: no event time to measure a latency from
        previous = self._direct.get(user)
        self._direct[user] = ts if previous is None else min(previous, ts)

    def link(self, user: str, friend: str, weight: float, link_version: int, origin_ts: int, topic: str, offset: int) -> None:
        state = self._state(user)
        outcome = scoring.apply_link(state, friend, weight, link_version)
        if outcome is None:
            self.counts.updates_stale += 1
            return
        if outcome == "new":
            self._new_links.setdefault(user, []).append(friend)
        self.counts.updates_applied += 1
        self._mark(user, state, origin_ts, topic, offset)
        self._mark_direct(user, origin_ts)  # a LINK carries the friendship event's time

    def estimate(self, user: str, sender: str, value: float, version: int, origin_ts: int, topic: str, offset: int) -> None:
        state = self._state(user)
        if scoring.apply_estimate(state, sender, value, version):
            self.counts.updates_applied += 1
            self._mark(user, state, origin_ts, topic, offset)
        else:
            self.counts.updates_stale += 1

    def finish(self, now_ms: int) -> UserBatchOutput:
        """Publish where the target moved, and tell new friends our estimate."""
        rules = self._rules
        estimates: list[EstimateOut] = []
        scores: list[ScoreOut] = []
        written: dict[str, UserState] = {}
        for user, origin_ts in self._changed.items():
            state = self._states[user]
            state.updated_ts = now_ms
            written[user] = state
            publish, value = scoring.should_publish(state, rules)
            if publish:
                scoring.publish(state, value, now_ms)
                receivers: Iterable[str] = state.current_friends()
                has_friends = state.has_friends()
                scores.append(
                    ScoreOut(
                        user_id=user,
                        raw=value,
                        score=rules.display(value),
                        own=state.own,
                        network=scoring.network_part(value, state.own, rules.alpha, has_friends),
                        version=state.version,
                        ts=now_ms,
                        origin_ts=origin_ts,
                        direct_ts=self._direct.get(user),
                    )
                )
            else:
                # Not moved enough to publish, but a new friend must still
                # learn our current estimate once.
                receivers = self._new_links.get(user, ())
            for friend in receivers:
                estimates.append(EstimateOut(friend, user, state.published, state.version, origin_ts))
        return UserBatchOutput(written, estimates, scores, self.counts)


@dataclass(slots=True)
class PairBatchOutput:
    states: dict[str, PairState]
    links: list[LinkOut]
    counts: BatchCounts = field(default_factory=BatchCounts)


class PairBatch:
    """Applies friendship events of one pair-keyed partition, in order.

    Only the final state of each pair in the batch is sent to its two
    endpoints: links carry absolute weights with the pair's version, so the
    intermediate steps are not needed by anyone.
    """

    def __init__(
        self,
        load: Callable[[str], PairState | None],
        *,
        dedup_window_ms: int,
        dedup_min_ids: int,
    ) -> None:
        self._load = load
        self._dedup_window_ms = dedup_window_ms
        self._dedup_min_ids = dedup_min_ids
        self._states: dict[str, PairState] = {}
        self._changed: dict[str, int] = {}  # pair key -> oldest origin_ts
        self._written: set[str] = set()
        self.counts = BatchCounts()

    def friendship(self, key: str, user_a: str, user_b: str, event_id: str, ts: int, action: str, weight: float, offset: int) -> str:
        """Apply one friendship event; returns "accepted" or "duplicate"."""
        state = self._states.get(key)
        if state is None:
            loaded = self._load(key)
            state = loaded if loaded is not None else PairState(*sorted((user_a, user_b)))
            self._states[key] = state
        if not scoring.remember_event(state.recent_events, event_id, ts, self._dedup_window_ms, self._dedup_min_ids):
            self.counts.duplicates += 1
            return "duplicate"
        self.counts.accepted += 1
        self._written.add(key)
        state.source_offset = max(state.source_offset, offset)
        new_weight = weight if action == "add" else 0.0
        if new_weight != state.weight:
            state.weight = new_weight
            state.version += 1
            previous = self._changed.get(key)
            self._changed[key] = ts if previous is None else min(previous, ts)
        return "accepted"

    def finish(self) -> PairBatchOutput:
        links: list[LinkOut] = []
        for key, origin_ts in self._changed.items():
            state = self._states[key]
            links.append(LinkOut(state.user_a, state.user_b, state.weight, state.version, origin_ts))
            links.append(LinkOut(state.user_b, state.user_a, state.weight, state.version, origin_ts))
        states = {key: self._states[key] for key in self._written}
        return PairBatchOutput(states, links, self.counts)


# --- the batch as a function ---------------------------------------------------------

T = TypeVar("T")


class Record(Protocol):
    """A record read from Kafka, as the batch sees it (Faust's Message has these)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Store(Protocol[T]):
    """A table by partition: the state of ``key``, or None."""

    def load(self, partition: int, key: str) -> T | None: ...


class Send(NamedTuple):
    """A record to send: ``partition`` None lets the producer's partitioner place it by key."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None


#: Names of the counts a batch returns: (name, label) -> n (the runtime adds them to its metrics).
EVENTS_IN, ACCEPTED, DUPLICATE, REJECTED, REROUTED = "events_in", "accepted", "duplicate", "rejected", "rerouted"
UPDATES_RECEIVED, UPDATES_SENT, UPDATE_MESSAGES_SENT = "updates_received", "updates_sent", "update_messages_sent"

#: Friend updates carried by one Kafka message at most (~400 KB).
UPDATES_PER_MESSAGE = 10_000


@dataclass(frozen=True)
class Context:
    """What a batch needs besides its records: the rules and the few settings of the model."""

    rules: Rules
    partitions: int
    catalog: Catalog = ev.CATALOG
    dedup_window_ms: int = 24 * 3600 * 1000
    dedup_min_ids: int = 64
    #: friend updates held decoded at most; beyond it their records wait unread
    waiting_limit: int = 1_000_000


@dataclass
class BatchResult:
    """What a batch decided. The runtime writes ``writes`` first, then sends ``sends``."""

    #: (partition, key, state) to write back, in order
    writes: list = field(default_factory=list)
    #: records to send (friend updates, scores, dead letters, rerouted inputs)
    sends: list[Send] = field(default_factory=list)
    #: (topic, partition) -> the next offset to read once this batch is delivered
    advance: dict = field(default_factory=dict)
    #: (count name, label) -> n
    counts: Counter = field(default_factory=Counter)
    #: the scores published (their event-to-score latency is observed once delivered)
    scores: list = field(default_factory=list)
    #: waiting friend updates applied by this batch (``WaitingUpdates.release`` once delivered)
    taken: Taken | None = None
    #: seconds spent deciding and encoding the changed states (the propagation slice counts it in)
    finish_seconds: float = 0.0
    #: states changed
    changed: int = 0


class PropagationSlice:
    """How long a batch applies waiting friend updates after its users' own events.

    At least ``slice_ms`` and at least ``share`` of the time the own events
    took; each batch in a row without own events doubles the slice (up to
    ``IDLE_DOUBLINGS`` times), so a propagation wave after a burst is applied
    in long slices, not at a slice's overhead each. Finishing a changed state
    (deciding, encoding, writing) comes after the slice and is counted in.
    """

    IDLE_DOUBLINGS = 5
    chunk = 64

    def __init__(self, slice_ms: float = 10, share: float = 0.25, clock: Callable[[], float] = time.perf_counter) -> None:
        self._slice_s = slice_ms / 1000.0
        self._share = share
        self._clock = clock
        #: seconds to finish one changed state, smoothed
        self._finish_cost = 20e-6
        #: batches in a row without users' own events
        self._idle_batches = 0

    def deadline(self, own_events: bool, own_events_s: float) -> Callable[[Taken], bool]:
        self._idle_batches = 0 if own_events else self._idle_batches + 1
        clock = self._clock
        slice_s = self._slice_s * 2 ** min(self._idle_batches, self.IDLE_DOUBLINGS)
        end = clock() + max(slice_s, self._share * own_events_s)
        finish_cost = self._finish_cost

        def out_of_time(taken: Taken) -> bool:
            return clock() + taken.receivers * finish_cost >= end

        return out_of_time

    def observe_finish(self, seconds: float, states: int) -> None:
        if states:
            self._finish_cost = 0.8 * self._finish_cost + 0.2 * seconds / states


class ApplyAll:
    """A slice that never runs out: every waiting update is applied in the batch that reads it."""

    chunk = 64

    def deadline(self, own_events: bool, own_events_s: float) -> Callable[[Taken], bool]:
        return lambda taken: False

    def observe_finish(self, seconds: float, states: int) -> None:
        pass


def score_users(
    records: Sequence[Record],
    users: Store[UserState],
    context: Context,
    waiting: WaitingUpdates,
    propagation: PropagationSlice | ApplyAll,
    now_ms: int,
) -> BatchResult:
    """One batch of the user lane: users' own events first, then a slice of the waiting friend updates.

    Friend-update records are only read here (into ``waiting``); what they
    carry is applied by this and later batches, within the slice of time left
    after the users' own events, so those are never queued behind a
    propagation wave (streams/waiting.py).
    """
    started = time.perf_counter()
    rules = context.rules
    catalog = context.catalog
    result = BatchResult()
    counts = result.counts
    sends = result.sends
    user_batches: dict[int, UserBatch] = {}

    def user_batch_of(partition: int) -> UserBatch:
        user_batch = user_batches.get(partition)
        if user_batch is None:
            user_batch = user_batches[partition] = UserBatch(
                rules,
                lambda user, p=partition: users.load(p, user),
                dedup_window_ms=context.dedup_window_ms,
                dedup_min_ids=context.dedup_min_ids,
            )
        return user_batch

    for partition, batch in _by_partition(records).items():
        user_batch = None
        for record in batch:
            topic = record.topic
            if topic == topics.FRIEND_UPDATES:
                _keep_friend_updates(record, waiting, context, sends, counts, now_ms)
                continue
            counts[EVENTS_IN, topic] += 1
            event = _decode(catalog, record, sends, counts, now_ms)
            if event is None:
                continue
            event_type = catalog.by_topic[topic]
            user = event_type.key(event)
            if partition_for(user, context.partitions) != record.partition:
                sends.append(_reroute(record, user, context, counts))
                continue
            if user_batch is None:
                user_batch = user_batch_of(partition)
            if user_batch.points(user, event.event_id, event.ts, event_type.points(event, rules), topic, record.offset):
                counts[ACCEPTED, event_type.name] += 1
            else:
                counts[DUPLICATE, event_type.name] += 1
        _advance(result.advance, batch)
    for record in waiting.unqueue(context.waiting_limit):
        _read_friend_updates(record, waiting, sends, counts, now_ms, kinds=(ESTIMATE,))
    own_events = bool(user_batches) or waiting.links_waiting()
    out_of_time = propagation.deadline(own_events, time.perf_counter() - started)

    def apply(partition: int, kind: int, receiver: str, updates) -> None:
        user_batch = user_batch_of(partition)
        apply_one = user_batch.link if kind == LINK else user_batch.estimate
        for sender, (value, version, origin_ts, offset) in updates.items():
            apply_one(receiver, sender, value, version, origin_ts, topics.FRIEND_UPDATES, offset)

    result.taken = waiting.take(apply, out_of_time, chunk=propagation.chunk)
    finishing = time.perf_counter()
    for partition, user_batch in user_batches.items():
        output = user_batch.finish(now_ms)
        result.writes.extend((partition, user, state) for user, state in output.states.items())
        result.changed += len(output.states)
        counts[UPDATES_RECEIVED, "applied"] += output.counts.updates_applied
        counts[UPDATES_RECEIVED, "stale"] += output.counts.updates_stale
        sends.extend(friend_update_sends(context, output.estimates, (), counts))
        sends.extend(score_sends(output.scores))
        result.scores.extend(output.scores)
    result.finish_seconds = time.perf_counter() - finishing
    return result


def route_friendships(records: Sequence[Record], pairs: Store[PairState], context: Context, now_ms: int) -> BatchResult:
    """One batch of the pair lane: friendship events applied in order per pair, links sent to both users."""
    catalog = context.catalog
    result = BatchResult()
    counts = result.counts
    sends = result.sends
    for partition, batch in _by_partition(records).items():
        pair_batch = PairBatch(
            lambda key, p=partition: pairs.load(p, key),
            dedup_window_ms=context.dedup_window_ms,
            dedup_min_ids=context.dedup_min_ids,
        )
        for record in batch:
            counts[EVENTS_IN, record.topic] += 1
            event = _decode(catalog, record, sends, counts, now_ms)
            if event is None:
                continue
            event_type = catalog.by_topic[record.topic]
            key = event_type.key(event)
            if partition_for(key, context.partitions) != record.partition:
                sends.append(_reroute(record, key, context, counts))
                continue
            outcome = pair_batch.friendship(
                key, event.user_a, event.user_b, event.event_id, event.ts, event.action, event.weight, record.offset
            )
            counts[ACCEPTED if outcome == "accepted" else DUPLICATE, event_type.name] += 1
        output = pair_batch.finish()
        result.writes.extend((partition, key, pair) for key, pair in output.states.items())
        result.changed += len(output.states)
        sends.extend(friend_update_sends(context, (), output.links, counts))
        _advance(result.advance, batch)
    return result


# --- records to send -------------------------------------------------------------------


def friend_update_sends(
    context: Context, estimates: Iterable[EstimateOut], links: Iterable[LinkOut], counts: Counter | None = None
) -> list[Send]:
    """One message per receiving partition, carrying all of its updates (a celebrity's: several)."""
    partitions = context.partitions
    outboxes: dict[int, friend_updates.Outbox] = defaultdict(friend_updates.Outbox)
    for out in estimates:
        outboxes[partition_for(out.receiver, partitions)].add(ESTIMATE, out.receiver, out.sender, out.estimate, out.version, out.origin_ts)
    link_count = 0
    for out in links:
        link_count += 1
        outboxes[partition_for(out.receiver, partitions)].add(LINK, out.receiver, out.sender, out.weight, out.version, out.origin_ts)
    sent: list[Send] = []
    total = 0
    for partition, outbox in outboxes.items():
        total += len(outbox)
        # Keep each message far below the record size limit (~40 bytes per update).
        for start in range(0, len(outbox), UPDATES_PER_MESSAGE):
            sent.append(Send(topics.FRIEND_UPDATES, None, outbox.encode(partition, start, start + UPDATES_PER_MESSAGE), partition))
    if counts is not None and outboxes:
        counts[UPDATES_SENT, "link"] += link_count
        counts[UPDATES_SENT, "estimate"] += total - link_count
        counts[UPDATE_MESSAGES_SENT, ""] += len(sent)
    return sent


def score_sends(scores: Iterable[ScoreOut]) -> list[Send]:
    """Records of the compacted ``scores`` topic, keyed by user_id."""
    encode = codec.encode
    return [
        Send(
            topics.SCORES,
            score.user_id.encode(),
            encode(
                "score",
                {
                    "user_id": score.user_id,
                    "raw": score.raw,
                    "score": score.score,
                    "own": score.own,
                    "network": score.network,
                    "version": score.version,
                    "ts": score.ts,
                },
            ),
            None,
        )
        for score in scores
    ]


def score_of(user: str, state: UserState, rules: Rules) -> ScoreOut:
    """The score record of a stored state as it stands (re-sent after a crash)."""
    return ScoreOut(
        user_id=user,
        raw=state.published,
        score=rules.display(state.published),
        own=state.own,
        network=scoring.network_part(state.published, state.own, rules.alpha, state.has_friends()),
        version=state.version,
        ts=state.updated_ts,
        origin_ts=state.updated_ts,
    )


#: Largest dead letter written: the topic's limit, less room for the record's framing.
DEAD_LETTER_MAX_BYTES = topics.MAX_RECORD_BYTES - 64 * 1024


def dead_letter(record: Record, reason: str, detail: str, now_ms: int) -> Send:
    """A rejected record for the dead-letter topic, with where it came from and why.

    The original bytes are kept whole (``dead-letters`` takes records 16x
    larger than an input topic); an original that would still not fit (an
    input topic configured beyond that) is cut, and the detail says so and
    where the whole record is.
    """
    key = record.key if isinstance(record.key, bytes) else None
    original = record.value if isinstance(record.value, bytes) else b""
    value = {
        "reason": reason,
        "detail": detail,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": key,
        "original": original,
        "received_ts": now_ms,
        "source": "worker",
    }
    encoded = codec.encode("dead_letter", value)
    excess = len(encoded) + 2 * len(key or b"") - DEAD_LETTER_MAX_BYTES
    if excess > 0:
        kept = max(0, len(original) - excess - 1024)
        value["original"] = original[:kept]
        value["detail"] = (
            f"{detail} [original cut to its first {kept} of {len(original)} bytes; "
            f"the whole record is at {record.topic}[{record.partition}]@{record.offset} until the topic's retention]"
        )
        encoded = codec.encode("dead_letter", value)
    return Send(topics.DEAD_LETTERS, key, encoded, None)


# --- reading records ---------------------------------------------------------------------


def _decode(catalog: Catalog, record: Record, sends: list[Send], counts: Counter, now_ms: int):
    """The validated event, or None after queueing the record for the dead-letter topic."""
    try:
        return catalog.from_bytes(record.topic, record.value)
    except Rejected as rejection:
        counts[REJECTED, rejection.reason] += 1
        sends.append(dead_letter(record, rejection.reason, rejection.detail, now_ms))
        return None


def _reroute(record: Record, key: str, context: Context, counts: Counter) -> Send:
    """A valid event on a partition that does not own its subject: the same bytes, to the partition that does.

    Producers choose partitions with their client's partitioner: librdkafka's
    default (confluent-kafka, Go, .NET, kcat) hashes keys with CRC32, Java's
    and aiokafka's with murmur2, which is what Standing's partitions follow.
    Any other choice is routed here, once, and counted; the event is scored
    when it is read on its own partition, exactly as if produced there.
    """
    counts[REROUTED, record.topic] += 1
    return Send(record.topic, key.encode(), record.value, partition_for(key, context.partitions))


def _keep_friend_updates(
    record: Record, waiting: WaitingUpdates, context: Context, sends: list[Send], counts: Counter, now_ms: int
) -> None:
    """Read a friend-updates record into ``waiting``, or keep it unread while too many wait.

    A record kept unread still has its links read now: they are users' own
    friendship events, applied every batch (its estimates are read when the
    record's turn comes).
    """
    if not (waiting.queued_records or waiting.waiting >= context.waiting_limit):
        _read_friend_updates(record, waiting, sends, counts, now_ms)
        return
    if _read_friend_updates(record, waiting, sends, counts, now_ms, kinds=(LINK,)):
        waiting.queue(record.partition, record.offset, record)  # its estimates: once fewer wait


def _read_friend_updates(
    record: Record, waiting: WaitingUpdates, sends: list[Send], counts: Counter, now_ms: int, kinds=(ESTIMATE, LINK)
) -> bool:
    """Add the record's updates of ``kinds``; False (and a dead letter) if it is not decodable."""
    try:
        updates = friend_updates.decode(record.value)
    except codec.DecodeError as error:
        # Only Standing writes this topic: a bad record here is a bug or a
        # foreign writer. Keep it (dead letter) and go on.
        log.error(
            "undecodable friend update at %s[%d]@%d (%s); kept on the dead-letter topic. Only Standing's workers "
            "should write this topic: look for another writer", record.topic, record.partition, record.offset, error.detail,
        )  # fmt: skip
        counts[REJECTED, error.reason] += 1
        sends.append(dead_letter(record, error.reason, error.detail, now_ms))
        return False
    if len(kinds) == 1:
        updates = [update for update in updates if update[0] == kinds[0]]
    coalesced = waiting.add(record.partition, record.offset, updates)
    if coalesced:
        counts[UPDATES_RECEIVED, "coalesced"] += coalesced
    return True


def _by_partition(records: Iterable[Record]) -> dict[int, list[Record]]:
    """Split a batch by partition, keeping each partition's order."""
    grouped: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        grouped[record.partition].append(record)
    return grouped


def _advance(advance: dict, records: list[Record]) -> None:
    for record in records:
        slot = (record.topic, record.partition)
        if record.offset + 1 > advance.get(slot, -1):
            advance[slot] = record.offset + 1
