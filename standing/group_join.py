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
"""

from __future__ import annotations

import logging

from aiokafka.consumer import group_coordinator as _coordinator

log = logging.getLogger(__name__)

_original = _coordinator.CoordinatorGroupRebalance._send_sync_group_request


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


def install() -> None:
    """Retry, in every aiokafka consumer of this process, a group join that assigned this member nothing."""
    _coordinator.CoordinatorGroupRebalance._send_sync_group_request = _sync_group_or_rejoin


def uninstall() -> None:
    _coordinator.CoordinatorGroupRebalance._send_sync_group_request = _original
