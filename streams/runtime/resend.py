"""After a crash: re-send what may not have left.

A state write and the records it causes are not atomic: a worker killed
between them leaves a state that already shows an input as applied (so its
redelivery is a duplicate) while the friend updates it caused never left.
Every state records the offsets of the records that changed it (also when
the change came from the batch as a whole: a rules change, an expiry as the
stream time passed); after a rebalance, states changed at or after the
group's committed offset re-send their current estimate, score, links and
erasure notices (receivers ignore what they already have) and re-write their
changelog record, and every partition re-sends its stream time (ticks only
move clocks forward). After a clean hand-over no state qualifies, unless
friend updates were still waiting (their records are read again too). What
each state or partition sends is decided in the core (``streams.batch``:
``resend_user``, ``resend_pair``, ``resend_partition``,
``resend_pair_partition``), where ``streams.local`` exercises it with random
kills between the states and their outputs.

Not to be confused with *recovery* (Faust rebuilding the tables from their
changelogs, ``streams.runtime.recovery``): the re-send runs once recovery is
over, on the recovered tables.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from streams import batch as core
from streams.events import PAIR
from aiokafka.errors import KafkaError

from streams.runtime import metrics
from streams.runtime.failures import BACKOFF_MAX_S, transient
from streams.runtime.output import Outgoing

if TYPE_CHECKING:
    from streams.runtime.agents import Scorer

log = logging.getLogger(__name__)

#: States a scan of a whole table reads between two chances for the agents to run.
SCAN_YIELD_EVERY = 2000
#: Users whose records are delivered together (right after their puts).
RESEND_CHUNK = 500
#: Longest wait between two scans while the scan fails for a reason that is not the broker's silence.
RESCAN_MAX_S = 30.0


class PartitionsMoved(Exception):
    """The assignment changed under the scan: the next rebalance's scan takes over."""


async def resend_uncommitted(scorer: "Scorer", hold: object, sleep=asyncio.sleep) -> int:
    """Re-send the outputs of the states changed by records not yet committed; returns how many.

    ``hold`` (``InputProgress.hold``, taken when the rebalance completed)
    keeps every commit at the offsets the assignment started from until the
    scan is done. While the broker fails it, it scans again, holding: the
    broker does not answer (a broker restart is what often caused the
    rebalance), or refuses what the scan sends (a topic's configuration,
    ACLs: said once at ERROR, scanned again every ``RESCAN_MAX_S`` at most,
    so that fixing the topic is enough). It stops when partitions move
    again: the next rebalance's scan takes over. Any other failure (a bug)
    keeps the hold, and a restart scans again.
    """
    progress = scorer.progress
    generation = progress.generation
    delay = 0.5
    said = False
    while True:
        try:
            committed = await progress.committed_offsets()
            # Where this assignment started reading, if lower (commits made before the hold was taken).
            for key, offset in progress.started_at().items():
                committed[key] = min(offset, committed.get(key, offset))
            resent = await _resend(scorer, committed, lambda: progress.generation == generation)
        except PartitionsMoved:
            resent = 0
        except Exception as error:
            if not isinstance(error, KafkaError):
                raise  # a bug: the hold stays (a hold of an older assignment holds nothing), said by the agents
            if transient(error):
                log.warning(
                    "re-sending the outputs of uncommitted records after a rebalance: the broker did not answer "
                    "(%r); scanning again in %.1f s", error, delay,
                )  # fmt: skip
                limit = BACKOFF_MAX_S
            else:
                if not said:
                    log.error(
                        "re-sending the outputs of uncommitted records after a rebalance: the broker refuses what "
                        "it sends (%s: %s); scanning again every %.0f s at most, and nothing past those records is "
                        "committed until it succeeds. Fix the topics' configuration (max.message.bytes, ACLs); a "
                        "restart does not help",
                        type(error).__name__, error, RESCAN_MAX_S, exc_info=True,
                    )  # fmt: skip
                    said = True
                limit = RESCAN_MAX_S
            await sleep(delay)
            delay = min(limit, delay * 2)
            if progress.generation == generation:
                continue
            resent = 0
        progress.release(hold)
        return resent


async def _resend(scorer: "Scorer", committed: dict[tuple[str, int], int], current) -> int:
    def still_current() -> None:
        if not current():
            raise PartitionsMoved()

    assigned = scorer.app.assignor.assigned_actives()
    user_topics = set(scorer.user_topic_names)
    pair_event_topics = scorer.catalog.topics(PAIR)
    user_partitions = sorted({tp.partition for tp in assigned if tp.topic in user_topics})
    pair_partitions = sorted({tp.partition for tp in assigned if tp.topic in set(scorer.pair_topic_names)})
    users, pairs, context = scorer.users, scorer.pairs, scorer.context
    outgoing: list[Outgoing] = []
    resent = 0

    def sends(records: list[core.Send]) -> None:
        outgoing.extend(Outgoing(*send) for send in records)

    for partition in user_partitions:
        still_current()
        sends(core.resend_partition(context, users, partition))
        _, rules, _ = core.partition_time(users, partition, context)
        candidates = []
        for scanned, (user, state) in enumerate(users.items(partition), 1):
            if core.uncommitted_user(state, partition, committed):
                candidates.append(user)
            if scanned % SCAN_YIELD_EVERY == 0:
                await asyncio.sleep(0)  # the agents go on meanwhile: this scan must not stall them
                still_current()
        for start in range(0, len(candidates), RESEND_CHUNK):
            still_current()
            for user in candidates[start : start + RESEND_CHUNK]:
                state = users.get(partition, user)  # fresh: agents may have moved on
                if state is None:
                    continue
                outgoing.append(users.put(partition, user, state, checked=False))
                sends(core.resend_user(context, user, state, rules))
                resent += 1
            # Delivered right after the puts, with no await between, so that
            # a newer state an agent writes meanwhile follows these in the
            # changelog instead of being overtaken by them.
            await scorer.output.deliver(outgoing)
            outgoing = []
    for partition in pair_partitions:
        still_current()
        sends(core.resend_pair_partition(context, pairs, partition))
        candidates = []
        for scanned, (key, pair) in enumerate(pairs.items(partition), 1):
            if core.uncommitted_pair(pair, partition, committed, pair_event_topics):
                candidates.append(key)
            if scanned % SCAN_YIELD_EVERY == 0:
                await asyncio.sleep(0)
                still_current()
        for start in range(0, len(candidates), RESEND_CHUNK):
            still_current()
            for key in candidates[start : start + RESEND_CHUNK]:
                pair = pairs.get(partition, key)  # fresh: the pair lane may have moved on
                if pair is None:
                    continue
                outgoing.append(pairs.put(partition, key, pair, checked=False))
                sends(core.resend_pair(context, pair))
                resent += 1
            # As for users: delivered right after the puts, so that a newer pair state follows these.
            await scorer.output.deliver(outgoing)
            outgoing = []
    if resent:
        # Expected after a kill, and after a hand-over while friend updates waited (their records stay
        # uncommitted): at-least-once doing its work, so INFO; the counter shows how often.
        log.info("after a rebalance: re-sent the outputs of %d states changed by uncommitted records", resent)
        metrics.STATES_RESENT.inc(resent)
    await scorer.output.deliver(outgoing)
    return resent
