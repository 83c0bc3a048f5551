"""The Faust agents: where events enter the worker and where scores leave it.

Three agents. The two that score take their records in batches straight from
Faust's consumer (``streams.runtime.intake``: Faust's per-event stream machinery was
the cap) and hand them, partition by partition, to the pure batch code of
``streams.batch``:

* ``friendships`` (pair-keyed) -> ``PairBatch`` -> LINK updates to both users;
* ``purchases``, ``posts`` and ``friend-updates`` (user-keyed, co-partitioned)
  -> ``UserBatch`` -> estimates to friends and records on ``scores``; users'
  own events first, then a bounded slice of the friend updates waiting in
  ``streams.waiting`` (their records stay uncommitted until applied);
* ``dead-letters`` -> counted in ``standing_dead_letters_total``.

Every write of a batch is synchronous (no await between reading a state and
writing it back), so agents never interleave inside one read-modify-write;
the batch's outputs (streams/output.py: states first, then what they caused)
are acknowledged by the broker before its input events are acknowledged, so
at-least-once holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from typing import Iterable

import faust
from faust.types import Message

from schemas import codec
from topology.settings import Settings
from streams import events as ev
from streams import friend_updates
from streams.runtime import intake
from streams.runtime import recovery as restore
from streams.runtime import metrics
from streams.runtime.intake import InFlight, Intake
from streams.runtime.output import Outgoing, Outputs
from streams.waiting import PendingUpdates
from streams.runtime.commits import InputProgress, install_commit_guard
from streams.batch import EstimateOut, LinkOut, PairBatch, ScoreOut, UserBatch
from streams.rules import Rules
from streams.scoring import contributions, network_part
from streams.runtime.store import create_tables, pair_store, user_store
from topology import topics
from topology.routing import pair_key, partition_for

log = logging.getLogger(__name__)

#: Friend updates carried by one Kafka message at most (~400 KB).
UPDATES_PER_MESSAGE = 10_000

#: A propagation slice doubles at most this many times in batches without own events (10 ms -> 320 ms).
IDLE_DOUBLINGS = 5

#: States a scan of a whole table reads between two chances for the agents to run.
SCAN_YIELD_EVERY = 2000

EVENT_TYPES = {topics.PURCHASES: "purchase", topics.POSTS: "post", topics.FRIENDSHIPS: "friendship"}


def _now_ms() -> int:
    return int(time.time() * 1000)


class Scorer:
    """Builds the agents of one worker and holds what they share."""

    def __init__(self, app: faust.App, settings: Settings, rules: Rules) -> None:
        self.app = app
        self.settings = settings
        self.rules = rules
        self.users_table, self.pairs_table = create_tables(app, settings)
        self.users = user_store(self.users_table, settings.state_cache_entries)
        self.pairs = pair_store(self.pairs_table, settings.state_cache_entries)
        self.ready = False  # sets the gauge too (the property below)

        def raw_topic(*names: str) -> faust.TopicT:
            return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

        self.user_topics = raw_topic(topics.PURCHASES, topics.POSTS, topics.FRIEND_UPDATES)
        self.pair_topic = raw_topic(topics.FRIENDSHIPS)
        self.dead_letter_topic = raw_topic(topics.DEAD_LETTERS)
        #: every record the worker writes leaves through here (streams/output.py)
        self.output = Outputs(settings)
        #: the input offsets really processed; Faust commits these (streams/progress.py)
        self.progress = InputProgress(app, settings)
        app.standing_progress = self.progress
        #: friend updates read but not applied yet; their records are not committed
        self.waiting_updates = PendingUpdates()
        #: seconds to finish one changed state (decide, encode, write): the slice counts it in
        self._finish_cost = 20e-6
        #: batches in a row without users' own events (the slice grows with them)
        self._idle_batches = 0
        self.progress.hold_back(
            lambda tp: self.waiting_updates.held_from(tp.partition) if tp.topic == topics.FRIEND_UPDATES else None
        )
        install_commit_guard()
        batch_size, batch_wait = settings.batch_size, settings.batch_wait
        #: the records of the agents' input topics, handed over in bulk
        self.user_intake = Intake(app, self.user_topics.topics, batch_size=batch_size, linger=batch_wait)
        self.pair_intake = Intake(app, self.pair_topic.topics, batch_size=batch_size, linger=batch_wait)
        intake.install(app, self.user_intake, self.pair_intake)
        #: table recovery writes changelog records in batches
        self.restore = restore.ChangelogRestore(app, (self.users_table, self.pairs_table), flush_every=batch_size)
        restore.install(app, self.restore)

        #: batches being applied or delivered; a rebalance waits for them
        self.in_flight = InFlight()

        @app.agent(self.user_topics, name="score_users")
        async def score_users(stream):
            intake.subscribe(stream)
            async for batch in self.user_intake.batches(more_work=self.waiting_updates.__bool__):
                try:
                    with self.in_flight:
                        await self.process_user_events(batch)
                except BaseException:
                    self.users.forget()  # its loaded states may be half-applied
                    raise

        @app.agent(self.pair_topic, name="route_friendships")
        async def route_friendships(stream):
            intake.subscribe(stream)
            async for batch in self.pair_intake.batches():
                try:
                    with self.in_flight:
                        await self.process_friendship_events(batch)
                except BaseException:
                    self.pairs.forget()
                    raise

        @app.agent(self.dead_letter_topic, name="count_dead_letters")
        async def count_dead_letters(stream):
            async for batch in stream.take_events(batch_size, within=batch_wait):
                for event in batch:
                    try:
                        _, record = codec.decode(event.value, "dead_letter")
                        metrics.DEAD_LETTERS.labels(record["reason"], record["source"]).inc()
                    except codec.DecodeError:
                        metrics.DEAD_LETTERS.labels("not_decodable", "unknown").inc()

        @app.on_rebalance_complete.connect
        async def on_rebalance_complete(sender, **kwargs) -> None:
            self.ready = True
            # Not awaited here: recovery must not wait for the scan.
            asyncio.ensure_future(self.resend_uncommitted())

        @app.on_before_shutdown.connect
        async def stop_outputs(sender, **kwargs) -> None:
            await self.output.stop()
            await self.progress.stop()

        @app.on_partitions_revoked.connect
        async def on_partitions_revoked(sender, revoked, **kwargs) -> None:
            self.ready = False
            # Faust waits for the events its streams are processing before the
            # group moves on; it does not see the intake's batches. A batch's
            # changelog records must be in Kafka before a new owner restores.
            await self.in_flight.finished(timeout=settings.session_timeout / 2)
            self.forget_cached_states()
            self.progress.forget()

        @app.on_partitions_assigned.connect
        async def on_partitions_assigned(sender, assigned, **kwargs) -> None:
            self.forget_cached_states()  # recovery is about to write the tables
            self.progress.forget()

    @property
    def ready(self) -> bool:
        """True once the tables of the current assignment are recovered."""
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        # The gauge moves with it: readiness probes and the recovery benchmark read it.
        self._ready = value
        metrics.READY.set(1 if value else 0)

    async def stop_taking_batches(self, timeout: float) -> bool:
        """A clean stop begins here, before Faust stops its consumer, tables and producer.

        The agents take no new batch, and the batches in flight finish: their
        scores and friend updates are delivered and their offsets recorded,
        so the consumer's last commit covers them. Without it Faust closed the
        producer under a batch being delivered; the agent crashed, its
        supervisor started it again, and the new one (reading the intake, not
        Faust's stream) waited for records for ever: the worker never exited.
        Returns False when a batch was still in flight after ``timeout`` s.
        """
        self.user_intake.close()
        self.pair_intake.close()
        return await self.in_flight.finished(timeout, waiting="the stop")

    def forget_cached_states(self) -> None:
        """Partitions move: nothing held in memory for the old assignment is used again."""
        self.users.forget()
        self.pairs.forget()
        self.waiting_updates.clear()
        metrics.FRIEND_UPDATES_WAITING.set(0)
        self.user_intake.clear()
        self.pair_intake.clear()

    # --- after a crash: re-send what may not have left ----------------------

    async def resend_uncommitted(self) -> None:
        """Re-send the outputs of states changed by records not yet committed.

        A state write and the messages it causes are not atomic: a worker
        killed between them leaves a state that already shows an input as
        applied (so its redelivery is a duplicate) while the friend updates it
        caused never left. Every state records the offsets of the records that
        changed it; after a rebalance, states changed at or after the group's
        committed offset re-send their current estimate, score and links
        (receivers ignore what they already have) and re-write their changelog
        record. After a clean hand-over nothing qualifies, unless friend
        updates were still waiting (their records are read again too).
        """
        committed = await self.progress.committed_offsets()
        assigned = self.app.assignor.assigned_actives()
        user_partitions = sorted({tp.partition for tp in assigned if tp.topic in (topics.PURCHASES, topics.POSTS, topics.FRIEND_UPDATES)})
        pair_partitions = sorted({tp.partition for tp in assigned if tp.topic == topics.FRIENDSHIPS})
        pending: list[Outgoing] = []
        resent = 0
        for partition in user_partitions:
            candidates = []
            for scanned, (user, state) in enumerate(self.users.items(partition), 1):
                if any(offset >= committed.get((topic, partition), 0) for topic, offset in state.source_offsets.items()):
                    candidates.append(user)
                if scanned % SCAN_YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # the agents go on meanwhile: this scan must not stall them
            for start in range(0, len(candidates), 500):
                for user in candidates[start : start + 500]:
                    state = self.users.get(partition, user)  # fresh: agents may have moved on
                    if state is None or state.version == 0:
                        continue
                    pending.append(self.users.put(partition, user, state))
                    estimates = [
                        EstimateOut(friend, user, state.published, state.version, state.updated_ts)
                        for friend in state.current_friends()
                    ]
                    pending.extend(self._send_friend_updates(estimates=estimates))
                    pending.extend(self._send_scores([self._score_of(user, state)]))
                    resent += 1
                # Delivered right after the puts, with no await between, so that
                # a newer state an agent writes meanwhile follows these in the
                # changelog instead of being overtaken by them.
                await self._delivered(pending)
                pending = []
        for partition in pair_partitions:
            for scanned, (key, pair) in enumerate(self.pairs.items(partition), 1):
                if scanned % SCAN_YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                if pair.source_offset < committed.get((topics.FRIENDSHIPS, partition), 0):
                    continue
                pair = self.pairs.get(partition, key)
                if pair is None:
                    continue
                pending.append(self.pairs.put(partition, key, pair))
                if pair.version:
                    links = [
                        LinkOut(pair.user_a, pair.user_b, pair.weight, pair.version, friend_updates.UNKNOWN_ORIGIN),
                        LinkOut(pair.user_b, pair.user_a, pair.weight, pair.version, friend_updates.UNKNOWN_ORIGIN),
                    ]
                    pending.extend(self._send_friend_updates(links=links))
                resent += 1
        if resent:
            log.warning("recovery: re-sent the outputs of %d states changed by uncommitted records", resent)
        await self._delivered(pending)

    def _score_of(self, user: str, state) -> ScoreOut:
        rules = self.rules
        return ScoreOut(
            user_id=user,
            raw=state.published,
            score=rules.display(state.published),
            own=state.own,
            network=network_part(state.published, state.own, rules.alpha, state.has_friends()),
            version=state.version,
            ts=state.updated_ts,
            origin_ts=state.updated_ts,
        )

    # --- friendships: pair partition -> links -------------------------------

    async def process_friendship_events(self, batch: list[Message]) -> None:
        started = time.perf_counter()
        admission = await self.progress.admit(batch)
        if not self.progress.current(admission):
            return  # partitions moved while the broker was asked: the new owner reads these
        pending: list[Outgoing] = []
        tally: Counter = Counter()  # (counter, label) -> n: counted once per batch
        for partition, records in _by_partition(admission.records).items():
            pair_batch = PairBatch(
                lambda key, p=partition: self.pairs.load(p, key),
                dedup_window_ms=self.settings.dedup_window_ms,
                dedup_min_ids=self.settings.dedup_min_ids,
            )
            for message in records:
                tally[metrics.EVENTS_IN, message.topic] += 1
                friendship = self._decode_input(message, pending)
                if friendship is None:
                    continue
                key = pair_key(friendship.user_a, friendship.user_b)
                if not self._on_right_partition(key, message.partition):
                    pending.append(self._reject(message, "wrong_key", _wrong_key_detail("the pair key", key)))
                    continue
                outcome = pair_batch.friendship(
                    key,
                    friendship.user_a,
                    friendship.user_b,
                    friendship.event_id,
                    friendship.ts,
                    friendship.action,
                    friendship.weight,
                    message.offset,
                )
                tally[metrics.EVENTS_ACCEPTED if outcome == "accepted" else metrics.EVENTS_DUPLICATE, "friendship"] += 1
            output = pair_batch.finish()
            for key, pair in output.states.items():
                pending.append(self.pairs.put(partition, key, pair))
            pending.extend(self._send_friend_updates(links=output.links))
        metrics.add(tally)
        await self._delivered(pending)
        await self.progress.done(admission)
        metrics.BATCHES.labels("route_friendships").inc()
        metrics.BATCH_SECONDS.labels("route_friendships").observe(time.perf_counter() - started)

    # --- users: own part, links, estimates -> publish ------------------------

    async def process_user_events(self, batch: list[Message]) -> None:
        """Users' own events first, then a slice of the waiting friend updates.

        Friend-update records are only read here (into ``waiting_updates``);
        what they carry is applied by this and later batches, within the
        slice of time left after the users' own events, so those are never
        queued behind a propagation wave (streams/pending_updates.py).
        """
        started = time.perf_counter()
        rules = self.rules
        settings = self.settings
        admission = await self.progress.admit(batch)
        if not self.progress.current(admission):
            return  # partitions moved while the broker was asked: the new owner reads these
        pending: list[Outgoing] = []
        tally: Counter = Counter()  # (counter, label) -> n: counted once per batch
        user_batches: dict[int, UserBatch] = {}

        def user_batch_of(partition: int) -> UserBatch:
            user_batch = user_batches.get(partition)
            if user_batch is None:
                user_batch = user_batches[partition] = UserBatch(
                    rules,
                    lambda user, p=partition: self.users.load(p, user),
                    dedup_window_ms=settings.dedup_window_ms,
                    dedup_min_ids=settings.dedup_min_ids,
                )
            return user_batch

        for partition, records in _by_partition(admission.records).items():
            user_batch = None
            for message in records:
                if message.topic == topics.FRIEND_UPDATES:
                    self._keep_friend_updates(message, pending, tally)
                    continue
                tally[metrics.EVENTS_IN, message.topic] += 1
                accepted = self._decode_input(message, pending)
                if accepted is None:
                    continue
                if not self._on_right_partition(accepted.user_id, message.partition):
                    pending.append(self._reject(message, "wrong_key", _wrong_key_detail("the user_id", accepted.user_id)))
                    continue
                kind = EVENT_TYPES[message.topic]
                if user_batch is None:
                    user_batch = user_batch_of(partition)
                if user_batch.points(
                    accepted.user_id,
                    accepted.event_id,
                    accepted.ts,
                    contributions(accepted, rules),
                    message.topic,
                    message.offset,
                ):
                    tally[metrics.EVENTS_ACCEPTED, kind] += 1
                else:
                    tally[metrics.EVENTS_DUPLICATE, kind] += 1
        for message in self.waiting_updates.unqueue(settings.waiting_updates_limit):
            self._read_friend_updates(message, pending, tally, kinds=(friend_updates.ESTIMATE,))
        # A batch with none of the users' own events has no one waiting on it:
        # each such batch in a row doubles the slice (a propagation wave after
        # a burst is applied in long slices, not at a slice's overhead each).
        own_events = user_batches or self.waiting_updates.links_waiting()
        self._idle_batches = 0 if own_events else self._idle_batches + 1
        taken = self._apply_waiting_updates(user_batch_of, time.perf_counter() - started)
        finishing = time.perf_counter()
        now = _now_ms()
        scores: list[ScoreOut] = []
        written = 0
        for partition, user_batch in user_batches.items():
            output = user_batch.finish(now)
            for user, state in output.states.items():
                pending.append(self.users.put(partition, user, state))
            written += len(output.states)
            counts = output.counts
            tally[metrics.FRIEND_UPDATES_RECEIVED, "applied"] += counts.updates_applied
            tally[metrics.FRIEND_UPDATES_RECEIVED, "stale"] += counts.updates_stale
            pending.extend(self._send_friend_updates(estimates=output.estimates))
            pending.extend(self._send_scores(output.scores))
            scores.extend(output.scores)
        if written:
            per_state = (time.perf_counter() - finishing) / written
            self._finish_cost = 0.8 * self._finish_cost + 0.2 * per_state
        metrics.add(tally)
        await self._delivered(pending)
        _observe_latency(scores)
        await self.progress.done(admission)
        self.waiting_updates.release(taken)
        metrics.BATCHES.labels("score_users").inc()
        metrics.BATCH_SECONDS.labels("score_users").observe(time.perf_counter() - started)

    def _keep_friend_updates(self, message: Message, pending: list[Outgoing], tally: Counter) -> None:
        """Read a friend-updates record into ``waiting_updates``, or keep it unread while too many wait.

        A record kept unread still has its links read now: they are users'
        own friendship events, applied every batch (its estimates are read
        when the record's turn comes).
        """
        waiting = self.waiting_updates
        if not (waiting.queued_records or waiting.waiting >= self.settings.waiting_updates_limit):
            self._read_friend_updates(message, pending, tally)
            return
        if self._read_friend_updates(message, pending, tally, kinds=(friend_updates.LINK,)):
            waiting.queue(message.partition, message.offset, message)  # its estimates: once fewer wait

    def _read_friend_updates(
        self, message: Message, pending: list[Outgoing], tally: Counter, kinds=(friend_updates.ESTIMATE, friend_updates.LINK)
    ) -> bool:
        """Add the record's updates of ``kinds``; False (and a dead letter) if it is not decodable."""
        try:
            updates = friend_updates.decode(message.value)
        except codec.DecodeError as error:
            # Only Standing writes this topic: a bad record here is a bug or a
            # foreign writer. Keep it (dead letter) and go on.
            log.error("undecodable friend update at %s[%d]@%d: %s", message.topic, message.partition, message.offset, error.detail)
            pending.append(self._reject(message, error.reason, error.detail))
            return False
        if len(kinds) == 1:
            updates = [update for update in updates if update[0] == kinds[0]]
        coalesced = self.waiting_updates.add(message.partition, message.offset, updates)
        if coalesced:
            tally[metrics.FRIEND_UPDATES_RECEIVED, "coalesced"] += coalesced
        return True

    def _apply_waiting_updates(self, user_batch_of, own_events_s: float):
        """Apply waiting friend updates for the batch's propagation slice; returns what was taken."""
        waiting = self.waiting_updates
        settings = self.settings
        slice_s = settings.propagation_slice_ms / 1000.0 * 2 ** min(self._idle_batches, IDLE_DOUBLINGS)
        end = time.perf_counter() + max(slice_s, settings.propagation_share * own_events_s)
        finish_cost = self._finish_cost

        def out_of_time(taken) -> bool:
            # Finishing each state (deciding, encoding, writing) comes after: count it in.
            return time.perf_counter() + taken.receivers * finish_cost >= end

        topic = topics.FRIEND_UPDATES

        def apply(partition: int, kind: int, receiver: str, updates) -> None:
            user_batch = user_batch_of(partition)
            apply_one = user_batch.link if kind == friend_updates.LINK else user_batch.estimate
            for sender, (value, version, origin_ts, offset) in updates.items():
                apply_one(receiver, sender, value, version, origin_ts, topic, offset)

        taken = waiting.take(apply, out_of_time)
        metrics.FRIEND_UPDATES_WAITING.set(waiting.waiting)
        return taken

    # --- shared plumbing ------------------------------------------------------

    async def _delivered(self, pending: list[Outgoing]) -> None:
        """Send the batch's records and wait until the broker acknowledged every one.

        The batch's input events are acknowledged (and later committed) only
        after this returns; a failed send raises here and crashes the agent
        instead of being lost behind a committed offset.
        """
        await self.output.deliver(pending)

    def _decode_input(self, message: Message, pending: list[Outgoing]):
        """The validated event, or None after sending the record to the dead-letter topic."""
        try:
            return ev.from_bytes(message.topic, message.value)
        except ev.Rejected as rejection:
            pending.append(self._reject(message, rejection.reason, rejection.detail))
            return None

    def _on_right_partition(self, key: str, partition: int) -> bool:
        return partition_for(key, self.settings.partitions) == partition

    def _reject(self, message: Message, reason: str, detail: str) -> Outgoing:
        metrics.EVENTS_REJECTED.labels(reason).inc()
        record = {
            "reason": reason,
            "detail": detail,
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "key": message.key if isinstance(message.key, bytes) else None,
            "original": message.value if isinstance(message.value, bytes) else b"",
            "received_ts": _now_ms(),
            "source": "worker",
        }
        return self._send(topics.DEAD_LETTERS, message.key if isinstance(message.key, bytes) else None, codec.encode("dead_letter", record), None)

    def _send_friend_updates(
        self, *, estimates: Iterable[EstimateOut] = (), links: Iterable[LinkOut] = ()
    ) -> list[Outgoing]:
        """One message per receiving partition, carrying all of its updates."""
        partitions = self.settings.partitions
        outboxes: dict[int, friend_updates.Outbox] = defaultdict(friend_updates.Outbox)
        for out in estimates:
            outboxes[partition_for(out.receiver, partitions)].add(
                friend_updates.ESTIMATE, out.receiver, out.sender, out.estimate, out.version, out.origin_ts
            )
        link_count = 0
        for out in links:
            link_count += 1
            outboxes[partition_for(out.receiver, partitions)].add(
                friend_updates.LINK, out.receiver, out.sender, out.weight, out.version, out.origin_ts
            )
        sent = []
        total = 0
        for partition, outbox in outboxes.items():
            total += len(outbox)
            # A celebrity's publish reaches every friend: keep each message
            # far below the record size limit (~40 bytes per update).
            for start in range(0, len(outbox), UPDATES_PER_MESSAGE):
                value = outbox.encode(partition, start, start + UPDATES_PER_MESSAGE)
                sent.append(self._send(topics.FRIEND_UPDATES, None, value, partition))
        if outboxes:
            metrics.FRIEND_UPDATES_SENT.labels("link").inc(link_count)
            metrics.FRIEND_UPDATES_SENT.labels("estimate").inc(total - link_count)
            metrics.FRIEND_UPDATE_MESSAGES_SENT.inc(len(sent))
        return sent

    def _send_scores(self, scores: list[ScoreOut]) -> list[Outgoing]:
        sent = []
        for score in scores:
            value = codec.encode(
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
            )
            sent.append(self._send(topics.SCORES, score.user_id.encode(), value, None))
        return sent

    def _send(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> Outgoing:
        """A record for the batch to deliver (``_delivered``) once it has decided.

        Deciding is synchronous: a batch's state writes happen with no await
        between them, and its records are queued in the order they were decided.
        """
        return Outgoing(topic, key, value, partition)


def _observe_latency(scores: list[ScoreOut]) -> None:
    """The batch's scores are published (acknowledged by the broker): how long after their users' own events."""
    metrics.SCORES_PUBLISHED.inc(len(scores))
    now_ms = _now_ms()
    observe = metrics.EVENT_TO_SCORE_SECONDS.observe
    for score in scores:
        if score.direct_ts is not None:
            observe(max(0.0, (now_ms - score.direct_ts) / 1000.0))


def _by_partition(batch: Iterable[Message]) -> dict[int, list[Message]]:
    """Split a batch by partition, keeping each partition's order."""
    grouped: dict[int, list[Message]] = defaultdict(list)
    for message in batch:
        grouped[message.partition].append(message)
    return grouped


def _wrong_key_detail(what: str, key: str) -> str:
    return (
        f"the record is on a partition that does not own its subject; its Kafka key must be {what} "
        f"({key!r}) so the default partitioner routes it; re-publish it with that key"
    )

