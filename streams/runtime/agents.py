"""The Faust agents: take a batch, call the pure batch function, write, send, mark done.

Three agents. The two that score take their records in batches straight from
Faust's consumer (``streams.runtime.intake``: Faust's per-event stream
machinery was the cap) and hand them to ``streams.batch``:

* ``route_friendships`` (the PAIR lane) -> ``route_friendships`` -> links to both users;
* ``score_users`` (the USER lane and ``friend-updates``, co-partitioned) ->
  ``score_users`` -> estimates to friends and records on ``scores``; users'
  own events first, then a bounded slice of the friend updates waiting in
  ``streams.waiting`` (their records stay uncommitted until applied);
* ``count_dead_letters`` -> ``standing_dead_letters_total``.

The lanes' topics come from the event catalog (``streams.events.CATALOG``).
A batch's writes happen with no await between reading a state and writing it
back, so agents never interleave inside one read-modify-write; its records
(``streams.runtime.output``: states first, then what they caused) are
acknowledged by the broker before its input offsets may be committed, so
at-least-once holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass

import faust
from aiokafka.errors import KafkaError
from faust.types import Message

from schemas import codec
from streams import batch as core
from streams.events import CATALOG, PAIR, USER, Catalog
from streams.rules import Rules
from streams.waiting import WaitingUpdates
from streams.runtime import intake, metrics
from streams.runtime import recovery
from streams.runtime.commits import InputProgress
from streams.runtime.failures import ATTEMPTS, FailureGuard, Held, transient
from streams.runtime.intake import InFlight, Intake
from streams.runtime.output import Outgoing, Outputs
from streams.runtime.resend import resend_uncommitted
from streams.runtime.store import create_tables, pair_store, user_store
from topology import topics
from topology.topics import MAX_RECORD_BYTES
from topology.settings import Settings

log = logging.getLogger(__name__)


def _report_resend(task: asyncio.Future) -> None:
    """The re-send scan runs on its own: its failure is said here, not as "Task exception was never retrieved"."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error(
            "re-sending the outputs of uncommitted records after a rebalance failed (%s: %s), a failure that is not "
            "the broker's; nothing past them is committed until a scan succeeds. A restart scans again; if it fails "
            "the same way, it is a bug: report it with this log.",
            type(error).__name__,
            error,
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


class Scorer:
    """Builds the agents of one worker and holds what they share."""

    def __init__(self, app: faust.App, settings: Settings, rules: Rules, catalog: Catalog = CATALOG, *, epoch: int = 0) -> None:
        self.app = app
        self.settings = settings
        self.rules = rules
        self.catalog = catalog
        self.context = core.Context(
            rules=rules,
            partitions=settings.partitions,
            catalog=catalog,
            dedup_window_ms=settings.dedup_window_ms,
            dedup_min_ids=settings.dedup_min_ids,
            waiting_limit=settings.waiting_updates_limit,
            epoch=epoch,
            native_receivers=settings.native_receivers,
        )
        self.users_table, self.pairs_table = create_tables(app, settings)
        self.users = user_store(self.users_table, settings.state_cache_entries)
        self.pairs = pair_store(self.pairs_table, settings.state_cache_entries)
        self._recovered = False
        #: the scan of the last rebalance (resend.py), not awaited by recovery
        self._resend: asyncio.Future | None = None

        def raw_topic(*names: str) -> faust.TopicT:
            return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

        #: the USER lane's input topics and friend-updates (co-partitioned: one user, one partition number)
        self.user_topic_names = (*catalog.topics(USER), topics.FRIEND_UPDATES)
        #: the PAIR lane's input topics and pair-updates (erasure notices for the pairs)
        self.pair_topic_names = (*catalog.topics(PAIR), topics.PAIR_UPDATES)
        self.user_topics = raw_topic(*self.user_topic_names)
        self.pair_topic = raw_topic(*self.pair_topic_names)
        self.dead_letter_topic = raw_topic(topics.DEAD_LETTERS)
        #: every record the worker writes leaves through here
        self.output = Outputs(settings)
        #: the input offsets really processed; Faust commits these (streams/runtime/commits.py)
        self.progress = InputProgress(app, settings)
        #: friend updates read but not applied yet; their records are not committed
        self.waiting_updates = WaitingUpdates()
        #: when held purchases and posts reach their maximum age, per user partition
        self.expiry = core.Expiry()
        self.propagation = core.PropagationSlice(settings.propagation_slice_ms, settings.propagation_share)
        self.progress.hold_back(
            lambda tp: self.waiting_updates.held_from(tp.partition) if tp.topic == topics.FRIEND_UPDATES else None
        )
        batch_size, batch_wait = settings.batch_size, settings.batch_wait
        #: the records of the agents' input topics, handed over in bulk
        self.user_intake = Intake(app, self.user_topic_names, batch_size=batch_size, linger=batch_wait)
        self.pair_intake = Intake(app, self.pair_topic_names, batch_size=batch_size, linger=batch_wait)
        intake.install(app, self.user_intake, self.pair_intake)
        #: table recovery writes changelog records in batches
        self.recovery = recovery.BulkRecovery(app, (self.users_table, self.pairs_table), flush_every=batch_size)
        recovery.install(app, self.recovery)

        #: batches being applied or delivered; a rebalance waits for them
        self.in_flight = InFlight()
        #: per lane: what its last delivery, which failed, left to send before it decides anything new
        self._undelivered: dict[str, _Kept] = {}
        #: no record can stop a lane: retries, then one record at a time, then dead letters
        self.user_guard = FailureGuard(
            "score_users", process=self.process_user_batch, pass_over=self._pass_over, rewind=self._rewind_users
        )
        self.pair_guard = FailureGuard(
            "route_friendships", process=self.process_pair_batch, pass_over=self._pass_over, rewind=self._rewind_pairs
        )

        @app.agent(self.user_topics, name="score_users")
        async def score_users(stream):
            intake.subscribe(stream)
            async for batch in self.user_intake.batches(more_work=self.waiting_updates.__bool__):
                try:
                    with self.in_flight:
                        await self.user_guard.run(batch)
                    self._publish_ready()
                except BaseException:
                    self.users.forget()  # its loaded states may be half-applied
                    raise

        @app.agent(self.pair_topic, name="route_friendships")
        async def route_friendships(stream):
            intake.subscribe(stream)
            async for batch in self.pair_intake.batches():
                try:
                    with self.in_flight:
                        await self.pair_guard.run(batch)
                    self._publish_ready()
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
            # Taken now, before the lanes can commit anything of this assignment; the scan releases it.
            hold = self.progress.hold()
            # Not awaited here: recovery must not wait for the scan.
            self._resend = asyncio.ensure_future(resend_uncommitted(self, hold))
            self._resend.add_done_callback(_report_resend)

        @app.on_before_shutdown.connect
        async def stop_outputs(sender, **kwargs) -> None:
            # A scan still re-sending is stopped here, before the producer closes under it
            # (which ended it anyway, with "Task exception was never retrieved" in the log).
            await self._stop_resend()
            await self.output.stop()
            await self.progress.stop()

        @app.on_partitions_revoked.connect
        async def on_partitions_revoked(sender, revoked, **kwargs) -> None:
            self.ready = False
            # A scan still re-sending would write and send states of partitions about to move
            # (after their new owner's newer ones): the next rebalance's scan takes over.
            await self._stop_resend()
            # Faust waits for the events its streams are processing before the
            # group moves on; it does not see the intake's batches. A batch's
            # changelog records must be in Kafka before a new owner recovers:
            # no new batch starts (the intakes resume once partitions are assigned),
            # and the ones in flight finish.
            self.user_intake.suspend()
            self.pair_intake.suspend()
            await self.in_flight.finished(timeout=settings.session_timeout / 2)
            self.forget_cached_states()
            self.progress.forget()

        @app.on_partitions_assigned.connect
        async def on_partitions_assigned(sender, assigned, **kwargs) -> None:
            self.forget_cached_states()  # recovery is about to write the tables
            self.progress.forget()
            self.user_guard.reset()
            self.pair_guard.reset()
            self.user_intake.resume()
            self.pair_intake.resume()

    async def _stop_resend(self) -> None:
        resend, self._resend = self._resend, None
        if resend is not None and not resend.done():
            resend.cancel()
            await asyncio.gather(resend, return_exceptions=True)

    @property
    def ready(self) -> bool:
        """True once the tables of the current assignment are recovered, and while no lane keeps failing."""
        return self._recovered and not (self.user_guard.failing or self.pair_guard.failing)

    @ready.setter
    def ready(self, recovered: bool) -> None:
        self._recovered = recovered
        self._publish_ready()

    def _publish_ready(self) -> None:
        # The gauge moves with it: readiness probes and the recovery benchmark read it.
        metrics.READY.set(1 if self.ready else 0)

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
        self.expiry.clear()
        metrics.FRIEND_UPDATES_WAITING.set(0)
        self.user_intake.clear()
        self.pair_intake.clear()
        self._undelivered.clear()  # the re-send scan after the rebalance sends it (or the new owner's)
        for lane in (self.user_guard.lane, self.pair_guard.lane):
            metrics.LANE_HELD.labels(lane).set(0)

    # --- one batch: admit, decide (pure), write, send, mark done ---------------------

    async def process_pair_batch(self, batch: list[Message]) -> int:
        """Returns how many of its records were processed (the rest were fetched before a seek, or done)."""
        started = time.perf_counter()
        await self._send_kept(self.pair_guard.lane)
        admission = await self.progress.admit(batch)
        if not self.progress.current(admission):
            return 0  # partitions moved while the broker was asked: the new owner reads these
        self.pairs.begin()
        result = core.route_friendships(admission.records, self.pairs, self.context, _now_ms())
        await self._deliver(self.pair_guard.lane, self.pairs, result)
        await self.progress.done(admission)
        metrics.BATCHES.labels("route_friendships").inc()
        metrics.BATCH_SECONDS.labels("route_friendships").observe(time.perf_counter() - started)
        return len(admission.records)

    async def process_user_batch(self, batch: list[Message]) -> int:
        started = time.perf_counter()
        await self._send_kept(self.user_guard.lane)
        admission = await self.progress.admit(batch)
        if not self.progress.current(admission):
            return 0  # partitions moved while the broker was asked: the new owner reads these
        # One by one, a record's batch applies what it brings and nothing left waiting by others (ApplyAll):
        # a fault of theirs must not be blamed on it.
        propagation = core.ApplyAll() if self.user_guard.one_by_one else self.propagation
        self.users.begin()
        result = core.score_users(
            admission.records, self.users, self.context, self.waiting_updates, propagation, _now_ms(), self.expiry
        )
        metrics.FRIEND_UPDATES_WAITING.set(self.waiting_updates.waiting)
        await self._deliver(self.user_guard.lane, self.users, result)
        _observe_latency(result.scores)
        await self.progress.done(admission)
        self.waiting_updates.release(result.taken)
        metrics.BATCHES.labels("score_users").inc()
        metrics.BATCH_SECONDS.labels("score_users").observe(time.perf_counter() - started)
        return len(admission.records)

    # --- after a failed batch (streams/runtime/failures.py) -------------------------------

    async def _rewind_users(self) -> None:
        self.users.forget()
        self.waiting_updates.clear()  # their records are read again from the committed offsets
        self.expiry.clear()
        metrics.FRIEND_UPDATES_WAITING.set(0)
        self.user_intake.clear()
        await self.progress.rewind(self.user_topic_names)
        self._publish_ready()

    async def _rewind_pairs(self) -> None:
        self.pairs.forget()
        self.pair_intake.clear()
        await self.progress.rewind(self.pair_topic_names)
        self._publish_ready()

    async def _pass_over(self, record, error: BaseException) -> bool:
        """A record that fails on its own: to the dead-letter topic, and its offset is done (False: not
        this worker's to pass over any more, or done already)."""
        admission = await self.progress.admit([record])
        if not self.progress.current(admission) or not admission.records:
            return False
        detail = f"the worker failed to process this record {ATTEMPTS} times on its own: {type(error).__name__}: {error}"
        await self.output.deliver([Outgoing(*core.dead_letter(record, "processing_failed", detail[:2000], _now_ms()))])
        metrics.EVENTS_REJECTED.labels("processing_failed").inc()
        await self.progress.done(admission)
        self.progress.passed_over(admission)
        return True

    async def _send_kept(self, lane: str) -> None:
        """Before a lane decides anything new, it sends what its last delivery left (``_deliver``).

        Nothing of the new batch is applied while that fails: the lane
        waits (the broker's silence), or is held (``Held``: the broker
        refuses what Standing decided; no record read now is to blame).
        """
        kept = self._undelivered.pop(lane, None)
        if kept is None or kept.generation != self.progress.generation:
            return
        try:
            await self.output.deliver(kept.outgoing)
        except BaseException as error:
            if self.progress.generation == kept.generation:
                self._undelivered[lane] = kept
                if not (isinstance(error, asyncio.CancelledError) or transient(error)):
                    raise self._held(lane, kept, error) from error
            raise
        metrics.add_counts(kept.counts)
        _observe_latency(kept.scores)
        metrics.LANE_HELD.labels(lane).set(0)

    async def _deliver(self, lane: str, store, result: core.BatchResult) -> None:
        """Write the batch's states, then send its records and wait until the broker acknowledged every one.

        The writes happen here, before the first await, right after the batch
        decided: nothing else touches these states in between. A failed send
        raises here, so the batch's offsets are not committed; the lane
        rewinds (streams/runtime/failures.py) and reads the batch again.

        Read again, its records would be duplicates (the states already show
        them) and cause nothing, so a failure is never left at that:

        * while writing (a state that does not encode or is too large,
          ``StateTooLarge``; a bug), nothing has been sent: the states go back
          to what they were (``PartitionedStore.restore``), so the records
          count anew and the one to blame is found;
        * once sending (the broker did not answer, or refuses what Standing
          decided: a topic's configuration, ACLs): what the delivery had to
          send is kept and sent before the lane decides anything new
          (``_send_kept``), so no offset past it is committed. Putting the
          states back could publish versions that may have left again with
          other values, which receivers ignore.

        A rebalance or a stop drops what is kept (also from a delivery still
        failing after its partitions moved: it belongs to the old assignment);
        the states show it, and the re-send scan (streams/runtime/resend.py)
        of the next assignment sends it.
        """
        generation = self.progress.generation
        writing, before, outgoing = True, [], []
        try:
            before = store.before(result.writes)
            started = time.perf_counter()
            outgoing = [store.put(partition, key, state) for partition, key, state in result.writes]
            if store is self.users:
                self.propagation.observe_finish(result.finish_seconds + time.perf_counter() - started, result.changed)
            outgoing.extend(Outgoing(*send) for send in result.sends)
            writing = False
            await self.output.deliver(outgoing)  # states acknowledged first, then what they caused
        except BaseException as error:
            if writing:
                store.restore(before)  # no await since the batch decided: nothing of it was sent or read
                raise
            if self.progress.generation != generation:
                raise  # partitions moved meanwhile: the re-send scan of the rebalance (or the new owner's) sends it
            kept = self._undelivered[lane] = _Kept(generation, outgoing, result.counts, result.scores)
            if isinstance(error, asyncio.CancelledError) or transient(error):
                raise
            raise self._held(lane, kept, error) from error
        metrics.add_counts(result.counts)

    def _held(self, lane: str, kept: "_Kept", error: BaseException) -> Held:
        """The lane waits until the broker takes what it refuses: said once, with what to do."""
        metrics.LANE_HELD.labels(lane).set(1)
        if not kept.said:
            kept.said = True
            topic_names = ", ".join(sorted({r.topic for r in kept.outgoing}))
            if isinstance(error, KafkaError):
                log.error(
                    "%s: the broker refuses records Standing decided (%s: %s; topics %s). The lane keeps them, sends "
                    "them again every few seconds and commits nothing past them; a restart does not help. Fix the "
                    "topics' configuration (max.message.bytes at least %d, ACLs); /ready answers 503 meanwhile",
                    lane, type(error).__name__, error, topic_names, MAX_RECORD_BYTES,
                )  # fmt: skip
            else:
                log.error(
                    "%s: records Standing decided could not be sent (%s: %s; topics %s), a failure that is not the "
                    "broker's (a bug). The lane keeps them, tries again every few seconds and commits nothing past "
                    "them; /ready answers 503 meanwhile. Report it with this log",
                    lane, type(error).__name__, error, topic_names, exc_info=error,
                )  # fmt: skip
        return Held(f"records Standing decided could not be sent: {type(error).__name__}: {error}")


@dataclass
class _Kept:
    """What a lane's failed delivery leaves, to be sent before it decides anything new (``Scorer._send_kept``)."""

    generation: int
    outgoing: list[Outgoing]
    #: the counts of the batch they came from, added once delivered
    counts: Counter
    #: its scores, observed once delivered
    scores: list
    #: the ERROR that the lane is held was logged
    said: bool = False


def _observe_latency(scores: list[core.ScoreOut]) -> None:
    """The batch's scores are published (acknowledged by the broker): how long after their users' own events."""
    metrics.SCORES_PUBLISHED.inc(len(scores))
    now_ms = _now_ms()
    by_lane = metrics.EVENT_TO_SCORE_BY_LANE
    for score in scores:
        if score.direct_ts is not None:
            by_lane[score.direct_lane].observe(max(0.0, (now_ms - score.direct_ts) / 1000.0))
