"""The stall watch: owned partitions with records waiting that the worker does not move.

Faust fetches only its "active" partitions, and around rebalances and table
recovery it can leave one out for good, or its consumer can drop records it
fetched before a seek (streams/runtime/commits.py). Every few seconds
(``streams.runtime.monitoring``) the watch looks at each owned partition's
committed offset, how far the worker processed it, and its lag: a partition
with records waiting where neither has moved for ``STALL_S`` is put back
into the fetch set if it fell out, and one found active that many checks in
a row is sought back to its committed offset. Each action is logged at
WARNING with what was found and counted
(``standing_stalled_partitions_resumed_total``); a check that finds nothing
to do says so at INFO (in a large backlog a partition can wait that long for
its turn).
"""

from __future__ import annotations

import logging

from aiokafka import TopicPartition

from streams.runtime import metrics
from topology import topics

log = logging.getLogger(__name__)

#: A partition with records waiting whose committed offset has not moved for
#: this long is checked for being left out of Faust's fetch set (see below).
STALL_S = 20.0
#: ... and one found active (not left out) that many checks in a row is sought
#: back to its committed offset.
SEEK_AFTER_CHECKS = 3


class StallWatch:
    """Per owned partition: the committed offset last seen moving, and checks in a row."""

    def __init__(self, scorer) -> None:
        self._scorer = scorer
        self._progress: dict[TopicPartition, tuple[tuple, float]] = {}  # tp -> ((committed, processed), since)
        self._checks: dict[TopicPartition, int] = {}  # tp -> stalled checks in a row with the partition active

    async def observe(self, tp: TopicPartition, done: int, lag: int, now: float) -> None:
        scorer = self._scorer
        app = scorer.app
        previous = self._progress.get(tp)
        # Processed but not committed yet is progress too: commits can trail a busy lane.
        mark = (done, scorer.progress.position(tp))
        if lag == 0 or previous is None or previous[0] != mark or _held_while_applied(scorer, tp):
            self._progress[tp] = (mark, now)
            self._checks.pop(tp, None)
        elif now - previous[1] >= STALL_S and scorer.ready and not getattr(app, "in_recovery", False):
            found = _resume_if_left_out(app, tp, lag, now - previous[1])
            self._checks[tp] = self._checks.get(tp, 0) + 1 if found == "active" else 0
            if self._checks[tp] >= SEEK_AFTER_CHECKS:  # a minute of an active partition not moving
                self._checks[tp] = 0
                await _seek_back(app, tp, done)
            self._progress[tp] = (mark, now)  # check (and log) at most once per STALL_S

    def forget_others(self, mine) -> None:
        """Partitions no longer owned are not watched."""
        for tp in list(self._progress):
            if tp not in mine:
                del self._progress[tp]


def _held_while_applied(scorer: Scorer, tp: TopicPartition) -> bool:
    """True if the worker holds ``tp``'s commit back itself: its friend updates were read and wait to be applied.

    A long propagation wave keeps a friend-updates commit still for minutes
    while every batch applies some of it; that partition is not stalled, and
    seeking it back would only fetch again what was read.
    """
    return tp.topic == topics.FRIEND_UPDATES and scorer.waiting_updates.held_from(tp.partition) is not None


async def _seek_back(app, tp: TopicPartition, committed: int) -> None:
    """Re-position a stalled partition's fetch at its committed offset.

    Faust's consumer drops every fetched record below its "read offset", and
    around a rebalance records fetched before its seek can push that offset
    past records it has not delivered (streams/runtime/commits.py). Usually a later
    record shows the jump and the agent seeks back at once; when nothing
    arrives after the dropped records, this is what notices. Seeking makes
    the consumer fetch from the commit again; what was processed since is
    left out by the progress guard.
    """
    consumer = app.consumer
    faust_tp = _assigned(consumer, tp)
    if faust_tp is None:
        return
    log.warning("%s[%d]: seeking the stalled partition back to its committed offset %d", tp.topic, tp.partition, committed)
    try:
        await consumer.seek(faust_tp, committed)
        metrics.PARTITIONS_RESUMED.inc()
    except Exception as error:  # a rebalance meanwhile: it will position the partition itself
        log.warning("could not seek %s[%d]: %r", tp.topic, tp.partition, error)


def _assigned(consumer, tp: TopicPartition):
    """Faust's own TP for ``tp`` if the consumer holds it, else None."""
    return next((c for c in consumer.assignment() if c.topic == tp.topic and c.partition == tp.partition), None)


def _resume_if_left_out(app, tp: TopicPartition, lag: int, stalled_s: float) -> str:
    """Put a stalled partition back into Faust's fetch set if it fell out of it.

    Faust fetches only its "active" partitions: it drops one when its stream
    buffer is under pressure or while it rebalances and recovers, and adds it
    back when the buffer drains or recovery ends; recovery also suspends the
    whole flow and resumes it at its end. Records of a partition we own
    waiting this long, with recovery over, mean one of these was not undone:
    undo it, say so, count it. Returns what was found: "gone" (no longer
    ours), "resumed", "flow resumed", or "active" (nothing left out: the
    caller may seek it back).
    """
    consumer = app.consumer
    faust_tp = _assigned(consumer, tp)
    if faust_tp is None:
        return "gone"
    active = consumer._get_active_partitions()
    paused = faust_tp in consumer._paused_partitions
    buffered = faust_tp in consumer._buffered_partitions
    if faust_tp in active and not paused:
        recovery = app.tables.recovery
        flow = {
            "consumer flow": consumer.flow_active,
            "flow control": app.flow_control.is_active(),
            "recovery completed": recovery.completed.is_set(),
            "in recovery": recovery.in_recovery,
        }
        log.info("%s[%d]: %d records waiting, no progress for %.0f s, partition active in the consumer; %s",
                 tp.topic, tp.partition, lag, stalled_s, flow)  # fmt: skip
        if recovery.completed.is_set() and not recovery.in_recovery and not (flow["consumer flow"] and flow["flow control"]):
            # Recovery is over but the flow it suspended was not resumed (it
            # returns early when the generation moved during the seek).
            log.warning("resuming the consumer flow that recovery left suspended")
            app.flow_control.resume()
            consumer.resume_flow()
            metrics.PARTITIONS_RESUMED.inc()
            return "flow resumed"
        return "active"
    log.warning("%s[%d]: %d records waiting, no progress for %.0f s, left out of the consumer's fetch set "
                "(paused=%s, buffer-full=%s); resuming it", tp.topic, tp.partition, lag, stalled_s, paused, buffered)  # fmt: skip
    consumer._buffered_partitions.discard(faust_tp)
    consumer.resume_partitions({faust_tp})
    metrics.PARTITIONS_RESUMED.inc()
    return "resumed"
