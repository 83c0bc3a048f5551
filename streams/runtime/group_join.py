"""A group join that hands this member no assignment bytes is retried, not fatal.

When the group leader's SyncGroup leaves a member out (it computed the
assignment from a member list that did not yet, or no longer, hold it), the
coordinator answers that member's SyncGroup with no error and zero bytes of
assignment: Apache Kafka fills in ``b""`` for every member the leader left
out (kafkajs #550 is the same report for another client). aiokafka 0.14
decodes those bytes as a ``ConsumerProtocol`` assignment, which raises; the
exception ends its coordination task for good. The consumer then never
heartbeats or rejoins again, and the worker runs on owning nothing: seen
here when a second worker joined (``test_two_workers_share_a_replay_and_one_is_killed``
waited 300 s for a worker whose group membership had died).

``SYNC_GROUP`` makes such a SyncGroup count as a failed one: the member asks to
rejoin, and aiokafka joins again after its retry back-off, as it does for a
SyncGroup that answers "rebalance in progress". The next generation's
leader sees this member and assigns it partitions.

Any other exception that ends the coordination task leaves the same zombie,
so ``on_membership_lost`` registers what to do then: the worker crashes (exit
status 1) and whatever supervises it starts it again, rather than running on
silently with no partitions.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from streams.runtime.patches import Patch

log = logging.getLogger(__name__)

#: called (in the consumer's thread) with the exception that ended a coordination task
_membership_lost: Callable[[BaseException], None] | None = None


async def _sync_group_or_rejoin(self, request):
    assignment = await SYNC_GROUP.original(self, request)
    if assignment is not None and len(assignment) == 0:
        # Seen when a second worker joins: the member joins again and gets its share, nothing to do (INFO).
        log.info(
            "group %s: the coordinator gave this member no assignment in generation %s "
            "(the leader left it out); joining again",
            self.group_id,
            self._coordinator.generation,
        )
        self._coordinator.request_rejoin()
        return None
    return assignment


async def _coordination_routine_reporting_its_end(self):
    try:
        await COORDINATION_ROUTINE.original(self)
    except asyncio.CancelledError:
        raise
    except Exception as error:  # aiokafka has logged it; the task ends here for good
        if _membership_lost is not None:
            _membership_lost(error)
        raise


SYNC_GROUP = Patch(
    target="aiokafka.consumer.group_coordinator:CoordinatorGroupRebalance._send_sync_group_request",
    sha256="7429ca078ddf9bb7023fd095d118bd7459d1f39afe3cf7bfbf447280015a37a5",
    why="a SyncGroup answer with zero assignment bytes (the leader left this member out) raised while "
    "decoding and ended the consumer's coordination for good; it now counts as a failed join and is retried",
    shown_by="tests/integration/test_group_join.py",
    replacement=_sync_group_or_rejoin,
    where="streams/runtime/group_join.py",
)
COORDINATION_ROUTINE = Patch(
    target="aiokafka.consumer.group_coordinator:GroupCoordinator._coordination_routine",
    sha256="75273e127d4a4f5d0d59d76874ad83444defda57a365a89986e91841f39ad22e",
    why="any other error that ends the coordination task leaves a consumer owning nothing for good; "
    "it is reported (on_membership_lost) so that the worker crashes and is restarted",
    shown_by="tests/integration/test_group_join.py",
    replacement=_coordination_routine_reporting_its_end,
    where="streams/runtime/group_join.py",
)
PATCHES = [SYNC_GROUP, COORDINATION_ROUTINE]


def on_membership_lost(callback: Callable[[BaseException], None] | None) -> None:
    """Call ``callback(error)`` when a consumer's group coordination ends with an error."""
    global _membership_lost
    _membership_lost = callback
