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

``install`` makes such a SyncGroup count as a failed one: the member asks to
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

from aiokafka.consumer import group_coordinator as _coordinator

log = logging.getLogger(__name__)

_original = _coordinator.CoordinatorGroupRebalance._send_sync_group_request
_original_routine = _coordinator.GroupCoordinator._coordination_routine
#: called (in the consumer's thread) with the exception that ended a coordination task
_membership_lost: Callable[[BaseException], None] | None = None


async def _sync_group_or_rejoin(self, request):
    assignment = await _original(self, request)
    if assignment is not None and len(assignment) == 0:
        log.warning(
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
        await _original_routine(self)
    except asyncio.CancelledError:
        raise
    except Exception as error:  # aiokafka has logged it; the task ends here for good
        if _membership_lost is not None:
            _membership_lost(error)
        raise


def install() -> None:
    """For every aiokafka consumer of this process created from now on: retry a join that assigned
    this member nothing, and report a coordination task that ended (``on_membership_lost``)."""
    _coordinator.CoordinatorGroupRebalance._send_sync_group_request = _sync_group_or_rejoin
    _coordinator.GroupCoordinator._coordination_routine = _coordination_routine_reporting_its_end


def on_membership_lost(callback: Callable[[BaseException], None] | None) -> None:
    """Call ``callback(error)`` when a consumer's group coordination ends with an error."""
    global _membership_lost
    _membership_lost = callback


def uninstall() -> None:
    _coordinator.CoordinatorGroupRebalance._send_sync_group_request = _original
    _coordinator.GroupCoordinator._coordination_routine = _original_routine
    on_membership_lost(None)
