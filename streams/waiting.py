"""Friend updates read from Kafka but not applied yet, coalesced latest-wins.

Why: a user's own event should be scored within milliseconds, but one event
sets off a wave of friend updates (tens to a hundred per event under live
traffic, spec section 4), and a batch that applied all of them before its
users' own events kept those events waiting for seconds. So the agent applies
users' own events first, every batch, and gives propagation a bounded slice
of each batch; what does not fit waits here.

Waiting costs little and saves work: updates are versioned and only the
newest per (receiver, kind, sender) matters, so a newer update replaces the
one waiting (and the older one is never applied), and a receiver's waiting
updates are applied together with one read and one write of its state.

Memory: above a limit of waiting updates, further records are kept unread
(``queue``; their bytes are about ten times smaller than their decoded
updates) and read as the waiting ones are applied (``unqueue``).

Offsets: a friend-updates record may be committed only when it is not kept
unread and none of its updates is still waiting or being applied.
``held_from(partition)`` is the lowest offset that may not;
``streams.runtime.commits.InputProgress`` never commits past it, so a worker that
crashes reads the held records again (receivers ignore what they already
have). Partitions that move (a rebalance) are dropped with
``clear()``: their new owner reads from the committed offset.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Callable, Iterable, Iterator

from streams.friend_updates import ESTIMATE, LINK

#: (value, version, origin_ts, offset) of one waiting update
Waiting = tuple[float, int, int, int]
#: receiver -> sender -> the newest update of one kind from that sender
Receivers = dict[str, dict[str, Waiting]]


class Taken:
    """Updates handed to a batch; ``WaitingUpdates.release`` them once it is delivered."""

    __slots__ = ("generation", "offsets", "updates", "receivers")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        #: partition -> offset -> updates of that record in this batch
        self.offsets: dict[int, Counter] = {}
        self.updates = 0
        self.receivers = 0


class WaitingUpdates:
    """Per user partition and kind: receivers in arrival order, each with its newest waiting updates.

    Links (a friendship added, re-weighted or removed) are a user's own
    event reaching its two users: every batch applies all of them. Estimates
    (propagation) are applied within the time a batch gives them.
    """

    def __init__(self) -> None:
        #: kind -> partition -> receivers
        self._lanes: dict[int, dict[int, Receivers]] = {LINK: {}, ESTIMATE: {}}
        #: partition -> offset -> updates of that record still waiting or being applied
        self._held: dict[int, dict[int, int]] = {}
        self._generation = 0
        self._next_partition = 0
        #: updates waiting now (the gauge ``standing_friend_updates_waiting``)
        self.waiting = 0
        #: partition -> (offset, record) of records kept unread while too many updates wait
        self._queued: dict[int, deque] = {}
        self.queued_records = 0
        #: (partition, offset) of records read from the queue this batch: held until it is delivered
        self._pinned: list[tuple[int, int]] = []

    def add(self, partition: int, offset: int, updates: Iterable[tuple[int, str, str, float, int, int]]) -> int:
        """Keep one record's updates; returns how many replaced or were older than one waiting."""
        lanes = (self._lanes[ESTIMATE].setdefault(partition, {}), self._lanes[LINK].setdefault(partition, {}))
        held = self._held.setdefault(partition, {})
        kept = superseded = added = 0
        for kind, receiver, sender, value, version, origin_ts in updates:
            receivers = lanes[kind]
            waiting = receivers.get(receiver)
            if waiting is None:
                receivers[receiver] = {sender: (value, version, origin_ts, offset)}
                kept += 1
                added += 1
                continue
            old = waiting.get(sender)
            if old is None:
                waiting[sender] = (value, version, origin_ts, offset)
                kept += 1
                added += 1
            elif version > old[1]:
                # The newer one replaces it, with its own time: an estimate's is the time its
                # value is valid at, a link's the time of the friendship event that set the weight.
                waiting[sender] = (value, version, origin_ts, offset)
                superseded += 1
                if old[3] != offset:
                    self._unhold(held, old[3], 1)
                    kept += 1
            else:
                superseded += 1  # not newer than what waits: applying it would change nothing
        if kept:
            held[offset] = held.get(offset, 0) + kept
        self.waiting += added
        return superseded

    def queue(self, partition: int, offset: int, record: Any) -> None:
        """Keep a record unread (its bytes are ~10x smaller than its decoded updates) until ``unqueue``."""
        self._queued.setdefault(partition, deque()).append((offset, record))
        self.queued_records += 1

    def unqueue(self, limit: int) -> Iterator[Any]:
        """Queued records, oldest first and partitions in turn, while fewer than ``limit`` updates wait.

        Each is held until the batch reading it is delivered (``take`` hands
        it to that batch's ``Taken``), so a commit never passes it before.
        """
        while self.queued_records and self.waiting < limit:
            for partition, records in self._queued.items():
                if records and self.waiting < limit:
                    offset, record = records.popleft()
                    self.queued_records -= 1
                    held = self._held.setdefault(partition, {})
                    held[offset] = held.get(offset, 0) + 1
                    self._pinned.append((partition, offset))
                    yield record

    @staticmethod
    def _unhold(held: dict[int, int], offset: int, n: int) -> None:
        left = held.get(offset, 0) - n
        if left > 0:
            held[offset] = left
        else:
            held.pop(offset, None)

    def __bool__(self) -> bool:
        return self.waiting > 0 or self.queued_records > 0

    def links_waiting(self) -> bool:
        """True if a link (a user's own friendship event) waits: the next batch must not be slow."""
        return any(self._lanes[LINK].values())

    def held_from(self, partition: int) -> int | None:
        """The lowest offset with an update not yet applied and delivered; None if there is none."""
        held = self._held.get(partition)
        lowest = min(held) if held else None
        queued = self._queued.get(partition)
        if queued and (lowest is None or queued[0][0] < lowest):
            lowest = queued[0][0]
        return lowest

    def take(
        self,
        apply: Callable[[int, int, str, dict[str, Waiting]], None],
        out_of_time: Callable[[Taken], bool],
        *,
        chunk: int = 64,
    ) -> Taken:
        """Hand receivers to ``apply(partition, kind, receiver, updates)``, oldest first.

        Every waiting link first; then estimates until ``out_of_time(taken)``, at
        least one chunk. Partitions take turns in chunks of ``chunk``
        receivers, so one busy partition does not starve the others.
        """
        taken = Taken(self._generation)
        for partition, offset in self._pinned:
            taken.offsets.setdefault(partition, Counter())[offset] += 1
        self._pinned.clear()
        for partition, receivers in self._lanes[LINK].items():
            while receivers:
                receiver = next(iter(receivers))
                self._hand_over(taken, apply, partition, LINK, receiver, receivers.pop(receiver))
        lane = self._lanes[ESTIMATE]
        partitions = [p for p in sorted(lane) if lane[p]]
        # Start where the last batch stopped.
        start = next((i for i, p in enumerate(partitions) if p >= self._next_partition), 0)
        order = partitions[start:] + partitions[:start]
        while order:
            remaining = []
            for partition in order:
                receivers = lane[partition]
                for _ in range(min(chunk, len(receivers))):
                    receiver = next(iter(receivers))
                    self._hand_over(taken, apply, partition, ESTIMATE, receiver, receivers.pop(receiver))
                if receivers:
                    remaining.append(partition)
                if out_of_time(taken):
                    self._next_partition = partition + 1
                    return taken
            order = remaining
        self._next_partition = 0
        return taken

    def _hand_over(self, taken: Taken, apply, partition: int, kind: int, receiver: str, waiting: dict[str, Waiting]) -> None:
        apply(partition, kind, receiver, waiting)
        offsets = taken.offsets.get(partition)
        if offsets is None:
            offsets = taken.offsets[partition] = Counter()
        for update in waiting.values():
            offsets[update[3]] += 1
        taken.updates += len(waiting)
        taken.receivers += 1
        self.waiting -= len(waiting)

    def release(self, taken: Taken) -> None:
        """The batch that applied ``taken`` is delivered: its records need not be read again."""
        if taken.generation != self._generation:
            return  # partitions moved meanwhile; everything held was dropped
        for partition, offsets in taken.offsets.items():
            held = self._held.get(partition)
            if held is None:
                continue
            for offset, n in offsets.items():
                self._unhold(held, offset, n)

    def clear(self) -> None:
        """Partitions moved: drop everything; the new owners read from the committed offsets."""
        for lane in self._lanes.values():
            lane.clear()
        self._held.clear()
        self._queued.clear()
        self.queued_records = 0
        self._pinned.clear()
        self._generation += 1
        self._next_partition = 0
        self.waiting = 0

