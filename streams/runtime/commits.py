"""Which input records have really been processed: the offsets Standing commits.

Faust's consumer can skip records around a rebalance. Its fetch loop keeps
delivering records fetched before the rebalance's seek to the committed
offsets; the jump that follows counts as a compaction "gap" whose offsets it
treats as done, the same records fetched again are dropped as already read,
and its commit check lets a missing record at the head through (off by one,
and not at all when the group has no commit yet; faust-streaming #216, #221,
#312, #606). Seen here as friendship links and posts that never reached a
user after a worker was killed and its partitions moved.

So the agents do not trust Faust's acknowledgements for the input topics:

* ``admit`` looks at each batch before anything is applied. Per partition it
  knows the next offset to process (from the group's committed offset when a
  partition is new to it); records before it are done and are left out (Faust
  delivers some twice around a seek). A record beyond it means records were skipped
  unless the broker confirms that nothing lies in between (transaction
  markers, compaction): the partition's records from there on are left out
  of the batch, and after the batch the partition is sought back to the
  first missing offset, so it is read again in order.
* ``done`` moves the next offsets once the batch's outputs are acknowledged.
* ``passed_over`` remembers records dead-lettered in this assignment: read
  again after a rewind (which goes back to the committed offsets), they are
  left out.
* the commit guard (``PATCHES``, with ``SEEK``) makes Faust commit exactly those offsets for the
  partitions tracked here (its own bookkeeping still serves every other
  partition), so a commit never passes a record that was not processed.
  Whether an offset still needs committing is judged against the offsets the
  broker accepted (``confirm``), not Faust's record of its commits: Faust
  records a commit's offsets as committed even when the commit failed
  (``Consumer._commit_offsets``), and a commit that failed in a rebalance and
  returned after the revocation left a partition that Faust took for
  committed while the broker held no commit. Its records were processed again
  by the next owner and never committed (seen in CI: 295 purchases left
  "waiting" for 300 s).
* ``SEEK`` runs every seek on the consumer's thread: aiokafka's fetcher,
  which a seek changes, is not thread-safe, and rewinds in quick succession
  crashed it (a KeyError, and the worker stopped fetching).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import faust
from faust.types import Message
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from topology.settings import Settings
from streams.runtime import metrics
from streams.runtime.patches import Patch

log = logging.getLogger(__name__)

#: How long to wait for the broker when checking what lies in a jump.
LOOKUP_TIMEOUT_MS = 5000
#: Longest pause between two attempts when the broker does not answer.
RETRY_MAX_S = 5.0


@dataclass
class Admission:
    """What ``admit`` let through of one batch, and what to do once it is delivered."""

    records: list[Message]
    generation: int
    #: partition -> next offset once this batch is delivered
    advance: dict = field(default_factory=dict)
    #: partition -> offset to seek back to (records were skipped)
    seek_back: dict = field(default_factory=dict)


class InputProgress:
    """Per input partition, the next offset to process; everything before it is done."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        self._next: dict = {}  # Faust TP -> offset
        #: Faust TP -> the offset the broker last accepted as committed, this assignment
        self._confirmed: dict = {}
        self._generation = 0
        self._admin: AIOKafkaAdminClient | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._lookup_lock = asyncio.Lock()
        self._held_from = None
        #: Faust TP -> the offset this assignment started reading it from (the committed offset then)
        self._started_at: dict = {}
        #: while a re-send scan runs (streams/runtime/resend.py): token -> the generation it holds in
        self._scan_holds: dict[object, int] = {}
        #: Faust TP -> offsets passed over (dead-lettered) this assignment: read again after a rewind, left out
        self._passed: dict = {}
        app.standing_progress = self  # what the commit guard reads (the commit guard, PATCHES)

    # --- bookkeeping --------------------------------------------------------

    def forget(self) -> None:
        """Partitions moved: start again from the group's committed offsets."""
        self._next.clear()
        self._confirmed.clear()
        self._started_at.clear()
        self._passed.clear()
        self._generation += 1

    async def rewind(self, topic_names) -> None:
        """The partitions of these topics start again from the group's committed offsets.

        After a failed batch (streams/runtime/failures.py): whatever was read
        since the commit is read again, in order, and the consumer is sought
        there so that it fetches it again.
        """
        names = set(topic_names)
        assigned = [tp for tp in self._app.consumer.assignment() if tp.topic in names]
        for tp in assigned:
            self._next.pop(tp, None)
            self._confirmed.pop(tp, None)
        if not assigned:
            return
        starts = await self._asking(self._start_offsets, assigned)
        for tp, offset in starts.items():
            try:
                await self._app.consumer.seek(tp, offset)
            except asyncio.TimeoutError:  # the consumer's thread did not get to it (SEEK)
                log.warning(
                    "could not seek %s[%d] back to %d within %.0f s; the stall watch seeks it back if it stops moving",
                    tp.topic, tp.partition, offset, SEEK_TIMEOUT_S,
                )  # fmt: skip
            except Exception as error:  # a rebalance meanwhile positions it from the commit
                log.debug("could not seek %s[%d] back to %d: %r", tp.topic, tp.partition, offset, error)

    def hold_back(self, held_from) -> None:
        """Never commit a partition past ``held_from(tp)`` (an offset, or None for no limit).

        Records read but with work still waiting (streams/waiting.py)
        must be read again after a crash.
        """
        self._held_from = held_from

    def hold(self) -> object:
        """Commit no partition of this assignment past where it started until ``release`` of the token returned.

        For the re-send scan: it looks for states changed by records past the
        committed offsets. The lanes read those records again meanwhile, as
        duplicates that cause nothing; committed past them before the scan
        re-sent what they caused, a crash would leave nothing that finds it.
        Taken synchronously when the rebalance completes, before any commit
        of the new assignment; a hold of an older assignment holds nothing.
        """
        self._scan_holds = {token: generation for token, generation in self._scan_holds.items() if generation == self._generation}
        token = object()
        self._scan_holds[token] = self._generation
        return token

    def release(self, token: object) -> None:
        self._scan_holds.pop(token, None)

    def started_at(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the offset this assignment started reading it from, where known."""
        return {(tp.topic, tp.partition): offset for tp, offset in self._started_at.items()}

    def position(self, tp) -> int | None:
        """The next offset of ``tp`` to process: how far the worker got, committed or not (None: not tracked)."""
        return self._next.get(tp)

    def committable(self, tp) -> int | None:
        """The offset to commit for ``tp``, or None if it is not tracked here."""
        offset = self._next.get(tp)
        if offset is None:
            return None
        if self._held_from is not None:
            held = self._held_from(tp)
            if held is not None and held < offset:
                offset = held
        if self._generation in self._scan_holds.values():
            held = self._started_at.get(tp)
            if held is not None and held < offset:
                offset = held
        return offset

    def needs_commit(self, tp, offset: int) -> bool:
        """True unless the broker already accepted ``offset`` (or more) for ``tp`` in this assignment."""
        confirmed = self._confirmed.get(tp)
        return confirmed is None or offset > confirmed

    @property
    def generation(self) -> int:
        """Moves on every ``forget``: what was started before belongs to an older assignment."""
        return self._generation

    def confirm(self, committed: dict, generation: int) -> None:
        """The broker accepted these offsets (Faust TP -> offset) in a commit begun at ``generation``."""
        if generation != self._generation:
            return  # partitions moved while the commit was on its way
        for tp, offset in committed.items():
            if tp in self._next and offset > self._confirmed.get(tp, -1):
                self._confirmed[tp] = offset

    def tracked(self) -> list:
        """The partitions whose offsets are kept here (Faust commits them: the commit guard)."""
        return list(self._next)

    # --- per batch ----------------------------------------------------------

    async def admit(self, batch: Sequence[Message]) -> Admission:
        generation = self._generation
        by_tp: dict = {}
        for message in batch:
            by_tp.setdefault(message.tp, []).append(message)
        unknown = [tp for tp in by_tp if tp not in self._next]
        starts = await self._asking(self._start_offsets, unknown) if unknown else {}
        admission = Admission([], generation)
        for tp, messages in by_tp.items():
            expected = self._next.get(tp, starts.get(tp))
            if tp not in self._started_at and expected is not None and generation == self._generation:
                self._started_at[tp] = expected
            # By offset, each once: after a seek, records fetched before it
            # can arrive mixed with the same records fetched again.
            by_offset: dict[int, Message] = {}
            for message in messages:
                by_offset.setdefault(message.offset, message)
            passed = self._passed.get(tp, ())
            for offset in sorted(by_offset):
                if offset < expected:
                    continue  # read again after a seek: processed and delivered already
                if offset == expected:
                    if offset not in passed:
                        admission.records.append(by_offset[offset])
                    expected += 1
                    continue
                if not await self._asking(self._records_between, tp, expected, offset):
                    if offset not in passed:
                        admission.records.append(by_offset[offset])  # a real gap: nothing to process there
                    expected = offset + 1
                    continue
                metrics.INPUT_RECORDS_SKIPPED.labels(tp.topic).inc(offset - expected)
                log.warning(
                    "%s[%d]: the consumer skipped offsets %d..%d (fetched before a seek, or a Faust race around rebalances); "
                    "reading them again from %d",
                    tp.topic, tp.partition, expected, offset - 1, expected,
                )  # fmt: skip
                admission.seek_back[tp] = expected
                break
            admission.advance[tp] = expected
        return admission

    def passed_over(self, admission: Admission) -> None:
        """``admission``'s records are dead-lettered: read again after a rewind (streams/runtime/failures.py), they
        are left out, as if committed."""
        if admission.generation == self._generation:
            for record in admission.records:
                self._passed.setdefault(record.tp, set()).add(record.offset)

    def current(self, admission: Admission) -> bool:
        """False once partitions moved after ``admission``: its batch must not be applied."""
        return admission.generation == self._generation

    async def done(self, admission: Admission) -> None:
        """The batch's outputs are acknowledged: move on, and re-read what was skipped."""
        if admission.generation != self._generation:
            return  # partitions moved meanwhile; the new owner starts from the commit
        for tp, offset in admission.advance.items():
            if offset > self._next.get(tp, -1):
                self._next[tp] = offset
        for tp, offset in admission.seek_back.items():
            try:
                await self._app.consumer.seek(tp, offset)
            except Exception as error:  # a rebalance meanwhile positions it from the commit
                log.warning("could not seek %s[%d] back to %d: %r", tp.topic, tp.partition, offset, error)

    # --- asking the broker --------------------------------------------------

    async def _asking(self, question, *args):
        """``question(*args)``, asked again until the broker answers.

        The batch cannot be applied without the answer, and an exception here
        would stop the agent for good; a broker that is restarting or
        unreachable for a while only delays the batch.
        """
        delay = 0.5
        while True:
            try:
                return await question(*args)
            except Exception as error:
                log.warning("input progress: the broker did not answer (%r); asking again in %.1f s", error, delay)
                await self.stop()  # fresh connections next time
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None:
            options = self._settings.kafka_client_options()
            admin = AIOKafkaAdminClient(bootstrap_servers=self._settings.bootstrap_servers, **options)
            reader = AIOKafkaConsumer(
                bootstrap_servers=self._settings.bootstrap_servers, enable_auto_commit=False, **options
            )
            try:
                await admin.start()
                await reader.start()
            except BaseException:
                await _quietly(reader.stop())
                await _quietly(admin.close())
                raise
            self._admin, self._reader = admin, reader
        return self._admin, self._reader

    async def committed_offsets(self) -> dict[tuple[str, int], int]:
        """The group's committed offsets, (topic, partition) -> offset; partitions without one are absent.

        For the re-send (streams/runtime/resend.py): it finds the states changed
        by uncommitted records. Waits for the broker like the guard does.
        """
        return await self._asking(self._committed)

    async def _committed(self, tps: Iterable | None = None) -> dict[tuple[str, int], int]:
        async with self._lookup_lock:
            admin, _ = await self._clients()
            wanted = None if tps is None else [TopicPartition(tp.topic, tp.partition) for tp in tps]
            committed = await admin.list_consumer_group_offsets(self._settings.app_id, partitions=wanted)
        return {(tp.topic, tp.partition): entry.offset for tp, entry in committed.items() if entry.offset >= 0}

    async def _start_offsets(self, tps: Iterable) -> dict:
        """The group's committed offset of each partition (its first offset if none)."""
        committed = await self._committed(tps)
        starts = {tp: committed[(tp.topic, tp.partition)] for tp in tps if (tp.topic, tp.partition) in committed}
        missing = [tp for tp in tps if tp not in starts]
        if missing:
            async with self._lookup_lock:
                _, reader = await self._clients()
                beginnings = await reader.beginning_offsets([TopicPartition(tp.topic, tp.partition) for tp in missing])
            for tp in missing:
                starts[tp] = beginnings[TopicPartition(tp.topic, tp.partition)]
        return starts

    async def _records_between(self, tp, start: int, end: int) -> bool:
        """True if the broker holds a record at an offset in [start, end)."""
        async with self._lookup_lock:
            _, reader = await self._clients()
            partition = TopicPartition(tp.topic, tp.partition)
            reader.assign([partition])
            reader.seek(partition, start)
            fetched = await reader.getmany(partition, timeout_ms=LOOKUP_TIMEOUT_MS, max_records=1)
            records = fetched.get(partition, [])
            # Nothing at all within the timeout: assume records are there
            # (reading them again is harmless; skipping them is not).
            return not records or records[0].offset < end

    async def stop(self) -> None:
        if self._reader is not None:
            await _quietly(self._reader.stop())
        if self._admin is not None:
            await _quietly(self._admin.close())
        self._admin = self._reader = None


async def _quietly(closing) -> None:
    try:
        await closing
    except Exception:
        pass


# --- the commit guard: Faust commits, for the partitions InputProgress tracks, its offsets ---
#
# Faust computes a partition's commit offset from the acknowledgements and the
# "gaps" it recorded (``Consumer._new_offset``). For a tracked partition the
# offset is the one ``InputProgress`` vouches for instead, and the
# acknowledgements below it are dropped so Faust's list stays short; it is
# committed unless the broker already accepted it (``InputProgress.confirm``,
# fed from the commits that succeeded), since Faust's ``_committed_offset``
# also holds the offsets of failed commits. The app carries its tracker as
# ``app.standing_progress``.


def _new_offset(self, tp):
    progress = getattr(self.app, "standing_progress", None)
    verified = progress.committable(tp) if progress is not None else None
    if verified is None:
        return NEW_OFFSET.original(self, tp)
    acked = self._acked[tp]
    if acked:
        below = [offset for offset in acked if offset < verified]
        if below:
            self._acked_index[tp].difference_update(below)
            acked[:] = [offset for offset in acked if offset >= verified]
    return verified if progress.needs_commit(tp, verified) else None


def _should_commit(self, tp, offset):
    progress = getattr(self.app, "standing_progress", None)
    if progress is not None and progress.committable(tp) is not None:
        return True  # _new_offset above decided, against what the broker accepted
    return SHOULD_COMMIT.original(self, tp, offset)


async def _commit_offsets(self, offsets, start_new_transaction: bool = True):
    progress = getattr(self.app, "standing_progress", None)
    if progress is None:
        return await COMMIT_OFFSETS.original(self, offsets, start_new_transaction)
    generation = progress.generation
    assigned = self.assignment()
    did_commit = await COMMIT_OFFSETS.original(self, offsets, start_new_transaction)
    if did_commit:  # Faust records the offsets as committed either way
        progress.confirm({tp: offset for tp, offset in offsets.items() if tp in assigned}, generation)
    return did_commit


def _filter_tps_with_pending_acks(self, topics=None):
    # Faust looks for partitions to commit among those it saw acknowledged;
    # the intake (streams/runtime/intake.py) acknowledges nothing to Faust.
    listed = set()
    for tp in PENDING_ACKS.original(self, topics):
        listed.add(tp)
        yield tp
    progress = getattr(self.app, "standing_progress", None)
    for tp in progress.tracked() if progress is not None else ():
        if tp not in listed and (topics is None or tp in topics or tp.topic in topics):
            yield tp


#: Longest wait for the consumer's thread to carry out a seek (it is stopping, or busy for that long).
SEEK_TIMEOUT_S = 2.0


def _seek_now(thread, partition, offset) -> None:
    thread.seek(partition, offset)


async def _seek(self, partition, offset) -> None:
    # Upstream calls the consumer thread's seek from the caller's thread. aiokafka's fetcher is not
    # thread-safe: the seek drops the partition from the dict of fetched records that the consumer
    # thread may be iterating (Fetcher.fetched_records), and the fetcher crashed with a KeyError
    # (the worker stopped fetching for good) when a lane rewound several times in a second.
    thread = self._thread
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is thread.thread_loop:
        thread.seek(partition, offset)
        return
    await asyncio.wait_for(thread.call_thread(_seek_now, thread, partition, offset), SEEK_TIMEOUT_S)


_GUARD_TEST = "tests/streams/runtime/test_commits.py"
NEW_OFFSET = Patch(
    target="faust.transport.consumer:Consumer._new_offset",
    sha256="1d2c7ea89a7ad4f1a216c1d51936e569162cd66bd56f889e13fd29c910b58eb0",
    why="Faust's offset from acknowledgements and gaps can pass records it skipped around a rebalance "
    "(faust-streaming #216, #221, #312, #606); a tracked partition commits the offset InputProgress vouches for",
    shown_by=_GUARD_TEST,
    replacement=_new_offset,
    where="streams/runtime/commits.py",
)
SHOULD_COMMIT = Patch(
    target="faust.transport.consumer:Consumer._should_commit",
    sha256="5ce941793947ad42b5c4298765d32f8fcbb8dd74b4385a50ab4b466fb651781c",
    why="it compares with Faust's record of commits, which keeps the offsets of failed commits too; "
    "for a tracked partition _new_offset has decided against what the broker accepted",
    shown_by=_GUARD_TEST,
    replacement=_should_commit,
    where="streams/runtime/commits.py",
)
COMMIT_OFFSETS = Patch(
    target="faust.transport.consumer:Consumer._commit_offsets",
    sha256="1a6979904118844111259d182ca1c6e92ccc16364ccbe55c58e59d6e254a7adb",
    why="only a commit the broker accepted, begun in the current assignment, may count as committed "
    "(a failed one left purchases[0] uncommitted for good in CI)",
    shown_by=_GUARD_TEST,
    replacement=_commit_offsets,
    where="streams/runtime/commits.py",
)
PENDING_ACKS = Patch(
    target="faust.transport.consumer:Consumer._filter_tps_with_pending_acks",
    sha256="f6f9239774234e7e230eee7c40c686421a66302be95e59c59a9109c2bba5fbd6",
    why="Faust looks for partitions to commit among those it saw acknowledged, and the intake acknowledges nothing to it",
    shown_by=_GUARD_TEST,
    replacement=_filter_tps_with_pending_acks,
    where="streams/runtime/commits.py",
)
SEEK = Patch(
    target="faust.transport.consumer:ThreadDelegateConsumer._seek",
    sha256="4f95c631420410a5fe6ecb1eff2f9010d7cfff6861fe00d41889bb31bd7df8b1",
    why="it seeks from the caller's thread while the consumer's thread reads aiokafka's fetched records, which "
    "are not thread-safe (the fetcher crashed with a KeyError after rewinds); the seek runs on the consumer's thread",
    shown_by="tests/integration/test_progress.py::test_a_seek_runs_on_the_consumer_thread",
    replacement=_seek,
    where="streams/runtime/commits.py",
)
PATCHES = [NEW_OFFSET, SHOULD_COMMIT, COMMIT_OFFSETS, PENDING_ACKS, SEEK]
