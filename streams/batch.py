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

import functools
import heapq
import logging
import struct
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, NamedTuple, Protocol, Sequence, TypeVar

from schemas import codec
from streams import events as ev
from streams import friend_updates, scoring
from streams.events import Catalog, Rejected
from streams.friend_updates import ESTIMATE, LINK, TICK, UNKNOWN_ORIGIN, earliest_origin
from streams.rules import Rules, rules_from_text
from streams.state import HISTORY_LENGTH, HeldEvent, PairState, UserState, pricing_json
from streams.state_codec import decode_user, encode_user, extra_of, native
from streams.waiting import Taken, WaitingUpdates
from topology import topics
from topology.routing import by_partition, partition_for

log = logging.getLogger(__name__)


@dataclass(slots=True)
class EstimateOut:
    """One sender's estimate for each of ``receivers`` (each becomes a FriendUpdate of kind ESTIMATE).

    One object per sender, not per receiver: a user who publishes tells every
    friend, and an object per friend was the largest cost of a celebrity's wave.
    """

    receivers: list[str]
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
    #: the lane that event came in by: USER (purchase, post, retraction) or PAIR
    #: (a friendship: through its pair's partition first, then a link)
    direct_lane: str | None = None
    #: the user was erased and nothing names them any more: a tombstone (no value) on ``scores``
    tombstone: bool = False
    #: the stream time raw, own and network are valid at (spec section 7)
    as_of: int = 0
    #: the version of the rules that made it (spec section 8)
    rules_version: str = ""


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
    #: users erased in this batch, with the erasure's time: every pair partition must learn it
    erased: dict[str, int] = field(default_factory=dict)


class UserBatch:
    """Applies one batch of per-user records and decides what to publish."""

    def __init__(
        self,
        rules: Rules,
        load: Callable[[str], UserState | None],
        *,
        dedup_window_ms: int,
        dedup_min_ids: int,
        catalog: Catalog = ev.CATALOG,
        epoch: int = 0,
        clock: int = 0,
        expiry: "PartitionExpiry | None" = None,
        load_raw: Callable[[str], bytes | None] | None = None,
    ) -> None:
        self._rules = rules
        self._load = load
        #: with it, users only friends' estimates reach are held as ``native.Receiver`` (``estimates``)
        self._load_raw = load_raw if native is not None else None
        self._native: dict = {}
        self._catalog = catalog
        #: the rules epoch this partition scores in: versions carry it, older estimates are left out
        self.epoch = epoch
        #: the partition's stream time: the largest event time it has seen (its own events, friends', ticks)
        self.clock = clock
        self._expiry = expiry
        self._dedup_window_ms = dedup_window_ms
        self._dedup_min_ids = dedup_min_ids
        self._states: dict[str, UserState] = {}
        self._changed: dict[str, int] = {}  # user -> oldest origin_ts of what changed it
        self._direct: dict[str, tuple[int, str]] = {}  # user -> (oldest ts of their own events that changed it, its lane)
        self._new_links: dict[str, list[str]] = {}
        #: users erased in this batch -> the erasure's time
        self._erased: dict[str, int] = {}
        #: users who got a voided link: they may no longer be named by anything
        self._voided: set[str] = set()
        #: users named again after nothing named them: they publish whatever their score
        self._revived: set[str] = set()
        #: topic -> the highest offset this batch read or applied for the partition: what a change
        #: made by the batch as a whole (an expiry as the stream time passes) records as its cause
        self._read: dict[str, int] = {}
        self.counts = BatchCounts()

    def _state(self, user: str) -> UserState:
        """The user's state, its values valid at the partition's stream time (``scoring.rebase``)."""
        state = self._states.get(user)
        if state is None:
            receiver = self._native.pop(user, None)
            if receiver is not None:  # estimates reached it first: from here on, the Python path
                state = decode_user(receiver.encode())
            else:
                state = self._load(user) or UserState(as_of=self.clock)
            self._states[user] = state
        if state.as_of < self.clock:
            scoring.rebase(state, self.clock, self._rules)
        return state

    def switch_rules(self, epoch: int, rules: Rules) -> None:
        """From here on this partition scores with ``rules`` (a rules change reached it)."""
        self.epoch = epoch
        self._rules = rules

    def read(self, topic: str, offset: int) -> None:
        """A record of this partition was read (or its waiting update applied) in this batch."""
        if offset > self._read.get(topic, -1):
            self._read[topic] = offset

    def advance(self, ts: int) -> None:
        """The partition's stream time reaches ``ts`` (an event's time, a friend's estimate's, a tick)."""
        if ts > self.clock:
            self.clock = ts

    def _mark(self, user: str, state: UserState, origin_ts: int, topic: str, offset: int) -> None:
        previous = self._changed.get(user)
        self._changed[user] = origin_ts if previous is None else earliest_origin(previous, origin_ts)
        if offset > state.source_offsets.get(topic, -1):
            state.source_offsets[topic] = offset

    def _remember(self, state: UserState, event) -> bool:
        """Record the event's id; False if it is a duplicate."""
        if scoring.remember_event(state.recent_events, event.event_id, event.ts, self._dedup_window_ms, self._dedup_min_ids):
            self.counts.accepted += 1
            return True
        self.counts.duplicates += 1
        return False

    def points(self, event_type, event, topic: str, offset: int) -> bool:
        """An accepted purchase or post (any POINTS event); False if it is a duplicate.

        It is held (priced again on a rules change, listed by the export); it
        counts unless a retraction of it came first, or an erasure of its
        user came after its time.
        """
        user = event.user_id
        self.advance(event.ts)
        state = self._state(user)
        if not self._remember(state, event):
            return False
        self._mark(user, state, event.ts, topic, offset)
        if event.ts <= state.erased_ts:
            return True  # forgotten: an erasure of this user is later than the event
        rules = self._rules
        extra = extra_of(state)
        extra.named_ts = max(extra.named_ts, event.ts)
        self._named(user, state)
        retracted_by, retracted_ts = extra.retractions.pop(event.event_id, (None, -1))
        if not rules.counts_at(event.ts, self.clock):
            return True  # older than the maximum age already: counts nothing, not kept
        pricing = event_type.pricing(event)
        contributions = event_type.price(pricing, rules)
        extra.held.append(
            HeldEvent(event.event_id, event_type.name, event.ts, pricing_json(pricing), sum(p for _, p in contributions), retracted_by, retracted_ts)
        )
        if retracted_by is None:
            factor = rules.decay(state.as_of, event.ts)
            scoring.apply_points(state, contributions if factor == 1.0 else [(code, p * factor) for code, p in contributions])
        if self._expiry is not None and rules.max_age_days:
            self._expiry.add(event.ts + rules.max_age_ms, user)
        self._mark_direct(user, event.ts)
        return True

    def retraction(self, event, topic: str, offset: int) -> bool:
        """A retraction: the user's purchase or post ``retracts`` counts nothing, whenever it arrives."""
        user = event.user_id
        state = self._state(user)
        if not self._remember(state, event):
            return False
        self._mark(user, state, event.ts, topic, offset)
        if event.ts <= state.erased_ts:
            return True
        extra = extra_of(state)
        self.advance(event.ts)
        held = next((h for h in extra.held if h.event_id == event.retracts), None)
        # Of several retractions of one event the latest is kept: an erasure voids
        # retractions up to its time, and the event counts again only if all are void.
        if held is None:
            # Not held: not arrived yet, another user's, a friendship's, or unknown.
            waiting = extra.retractions.get(event.retracts)
            if waiting is None or event.ts > waiting[1]:
                extra.retractions[event.retracts] = (event.event_id, event.ts)
        elif held.retracted_by is None:
            held.retracted_by, held.retracted_ts = event.event_id, event.ts
            recompute_own(state, self._catalog, self._rules, self.clock)
        elif event.ts > held.retracted_ts:
            held.retracted_by, held.retracted_ts = event.event_id, event.ts
        extra.named_ts = max(extra.named_ts, event.ts)
        self._named(user, state)
        self._mark_direct(user, event.ts)
        return True

    def erasure(self, event, topic: str, offset: int) -> bool:
        """Forget the user as of the erasure's time: what is left is what later events say."""
        user = event.user_id
        self.advance(event.ts)
        state = self._state(user)
        erased = event.ts
        if erased <= state.erased_ts:
            return self._remember(state, event)  # an older erasure than one applied: nothing more to forget
        self.counts.accepted += 1
        state.erased_ts = erased
        extra = extra_of(state)
        for held in extra.held:
            if held.ts <= erased and held.retracted_by is not None and held.retracted_ts > erased:
                # The event is forgotten, its later retraction is not: it still names the user.
                extra.retractions[held.event_id] = (held.retracted_by, held.retracted_ts)
        extra.held = [h for h in extra.held if h.ts > erased]
        for held in extra.held:
            if held.retracted_by is not None and held.retracted_ts <= erased:
                held.retracted_by, held.retracted_ts = None, -1  # its retraction is forgotten too
        extra.retractions = {k: v for k, v in extra.retractions.items() if v[1] > erased}
        recompute_own(state, self._catalog, self._rules, self.clock)
        state.history.clear()
        state.recent_events = {eid: ts for eid, ts in state.recent_events.items() if ts > erased}
        for entry in state.friends.values():
            if entry.link_ts <= erased:
                # The pair partitions void these links too, once they hear of the erasure.
                entry.weight, entry.estimate, entry.has_estimate = scoring.VOIDED, 0.0, False
        state.exists = scoring.named(state, extra.named_ts > erased)
        self._erased[user] = erased
        self._mark(user, state, erased, topic, offset)
        return True

    def _named(self, user: str, state: UserState) -> None:
        """An event that counts names the user: they exist (again, after an erasure left nothing: a new score)."""
        if not state.exists:
            state.exists = True
            self._revived.add(user)

    def _mark_direct(self, user: str, ts: int, lane: str = ev.USER) -> None:
        if ts == UNKNOWN_ORIGIN:
            return  # a link re-sent after a crash: no event time to measure a latency from
        previous = self._direct.get(user)
        if previous is None or ts < previous[0]:
            self._direct[user] = (ts, lane)

    def link(self, user: str, friend: str, weight: float, link_version: int, origin_ts: int, topic: str, offset: int) -> None:
        """A friendship's new weight from the pair's partition; ``origin_ts`` is the event time that set it."""
        self.read(topic, offset)
        self.advance(origin_ts)
        state = self._state(user)
        if origin_ts <= state.erased_ts:
            # An erasure of this user is later: the pair partition, told of it, sends the link that counts.
            self.counts.updates_stale += 1
            return
        known = state.friends.get(friend)
        previous_ts = known.link_ts if known is not None else None
        outcome = scoring.apply_link(state, friend, weight, link_version)
        if outcome is None:
            self.counts.updates_stale += 1
            return
        state.friends[friend].link_ts = origin_ts
        # A friendship re-timed (an erasure of the friend voided the event that set it, a later one
        # counts) may have been forgotten by the friend, with our estimate: it learns it again.
        if outcome == "new" or (weight > 0 and origin_ts != previous_ts):
            self._new_links.setdefault(user, []).append(friend)
        if weight >= 0:
            self._named(user, state)
        else:
            self._voided.add(user)  # was that link the last thing naming the user?
        self.counts.updates_applied += 1
        self._mark(user, state, origin_ts, topic, offset)
        self._mark_direct(user, origin_ts, ev.PAIR)  # a LINK carries the friendship event's time

    def estimate(self, user: str, sender: str, value: float, version: int, origin_ts: int, topic: str, offset: int) -> None:
        """A friend's estimate, valid at ``origin_ts`` (the sender's stream time): it decays from there."""
        self.read(topic, offset)
        self.advance(origin_ts)
        state = self._state(user)
        factor = self._rules.decay(state.as_of, origin_ts)
        if scoring.apply_estimate(state, sender, value if factor == 1.0 else value * factor, version):
            self.counts.updates_applied += 1
            self._mark(user, state, origin_ts, topic, offset)
        else:
            self.counts.updates_stale += 1

    def _receiver(self, user: str, updates: dict):
        """The user as a ``native.Receiver`` if the C path can take them (nothing else in this batch touched them)."""
        if self._load_raw is None or user in self._states:
            return None
        receiver = self._native.get(user)
        if receiver is None:
            raw = self._load_raw(user)
            if raw is None:  # a new user, as ``_state`` makes one: valid at the stream time the first update brings
                first_origin = next(iter(updates.values()))[2]
                raw = encode_user(UserState(as_of=max(self.clock, first_origin)))
            receiver = native.receive(raw)
            if receiver is not None:
                self._native[user] = receiver
        return receiver

    def _received(self, user: str, topic: str, clock: int, applied: int, stale: int, origin_ts: int | None, offset: int) -> None:
        """What ``_mark``, ``read`` and ``advance`` record for updates the C path applied."""
        self.clock = clock
        self.read(topic, offset)
        self.counts.updates_applied += applied
        self.counts.updates_stale += stale
        if origin_ts is not None:
            previous = self._changed.get(user)
            self._changed[user] = origin_ts if previous is None else earliest_origin(previous, origin_ts)

    def estimates(self, user: str, updates: dict[str, tuple[float, int, int, int]], topic: str) -> None:
        """A friend's estimate from each sender (value, version, origin_ts, offset), as ``estimate`` applies them one by one.

        A user nothing else in this batch has touched goes through the C path
        (``streams/_state_codec.c``, ``Receiver``): read, applied, decided on in
        ``finish`` and written without building a ``FriendEntry`` per friend;
        it gives what the Python path gives, byte for byte
        (tests/streams/test_native_receiver.py). Whatever else touches the
        user later in the batch takes it over (``_state``).
        """
        receiver = self._receiver(user, updates)
        done = receiver.estimates(updates, self.clock, self._rules.half_life_ms, topic) if receiver is not None else None
        if done is None:
            for sender, (value, version, origin_ts, offset) in updates.items():
                self.estimate(user, sender, value, version, origin_ts, topic, offset)
            return
        self._received(user, topic, *done)

    def links(self, user: str, updates: dict[str, tuple[float, int, int, int]], topic: str) -> None:
        """A friendship's new weight from each sender (weight, link version, origin_ts, offset), as ``link`` applies them.

        The C path as in ``estimates``; a voided link (weight -1) takes the Python path, which asks whether
        anything still names the user.
        """
        receiver = self._receiver(user, updates)
        done = receiver.links(updates, self.clock, self._rules.half_life_ms, topic) if receiver is not None else None
        if done is None:
            for sender, (weight, link_version, origin_ts, offset) in updates.items():
                self.link(user, sender, weight, link_version, origin_ts, topic, offset)
            return
        *received, direct_ts, revived, new_links = done
        self._received(user, topic, *received)
        if direct_ts is not None:
            self._mark_direct(user, direct_ts, ev.PAIR)
        if revived:
            self._revived.add(user)
        if new_links:
            self._new_links.setdefault(user, []).extend(new_links)

    def expire(self) -> None:
        """Purchases and posts whose maximum age the stream time passed leave their users' own parts."""
        if self._expiry is None or not self._rules.max_age_days:
            return
        rules = self._rules
        for user in self._expiry.due(self.clock):
            state = self._state(user)
            extra = extra_of(state)
            kept = [h for h in extra.held if rules.counts_at(h.ts, self.clock)]
            if len(kept) < len(extra.held):
                extra.held = kept
                recompute_own(state, self._catalog, rules, self.clock)
                self._changed.setdefault(user, self.clock)
                # Caused by what moved the stream time: a worker killed before this user's score left
                # finds the state in its re-send scan (read again, those records find nothing to expire).
                for topic, offset in self._read.items():
                    if offset > state.source_offsets.get(topic, -1):
                        state.source_offsets[topic] = offset
            if kept:
                # Also after a stale entry (its events erased or retracted): it hid the next one, which
                # ``add`` did not push while an earlier time was pending for the user.
                self._expiry.add(min(h.ts for h in kept) + rules.max_age_ms, user)

    def rescore(self, users: Iterable[tuple[str, UserState]], topic: str, offset: int) -> int:
        """Rules changed: every user's own part again from what they hold, under these rules; all publish anew.

        Every state records the rules change's offset like any input that
        changed it: a worker killed after these states were written but before
        their scores left finds them in its re-send scan (the redelivered
        change finds the partition already switched and rescores nothing).
        """
        rules = self._rules
        rescored = 0
        for user in list(self._native):
            self._state(user)
        stored_users = dict(users)
        everyone = {**stored_users, **self._states}  # what this batch holds is newer; some are new
        for user in everyone:
            state = self._states.get(user)
            if state is None:
                state = self._states[user] = stored_users[user]
            scoring.rebase(state, self.clock, rules)
            extra = extra_of(state)
            extra.held = [h for h in extra.held if rules.counts_at(h.ts, self.clock)]  # a shorter maximum age forgets
            for held in extra.held:
                event_type = self._catalog.by_name.get(held.type)
                if event_type is not None:
                    held.points = sum(p for _, p in event_type.price(held.pricing, rules))
            recompute_own(state, self._catalog, rules, self.clock)
            if self._expiry is not None and rules.max_age_days and extra.held:
                self._expiry.add(min(h.ts for h in extra.held) + rules.max_age_ms, user)
            self._changed.setdefault(user, self.clock)
            if offset > state.source_offsets.get(topic, -1):
                state.source_offsets[topic] = offset
            rescored += 1
        return rescored

    def finish(self, now_ms: int) -> UserBatchOutput:
        """Publish where the target moved, and tell new friends our estimate."""
        rules = self._rules
        epoch = self.epoch
        version = rules.version
        estimates: list[EstimateOut] = []
        scores: list[ScoreOut] = []
        written: dict[str, UserState] = {}
        withdrawn = set(self._erased)  # users whose score goes if nothing names them any more
        lift_only = rules.network_mode == "lift_only"
        for user, origin_ts in self._changed.items():
            receiver = self._native.get(user)
            if receiver is not None:  # as below, for a user only estimates and links reached (``estimates``, ``links``)
                decided = receiver.finish(
                    self.clock, now_ms, rules.half_life_ms, rules.alpha, rules.epsilon, lift_only, epoch, HISTORY_LENGTH,
                    user in self._revived,
                )  # fmt: skip
                written[user] = Raw(receiver.encode())
                if decided is None:
                    continue  # nothing names this user (yet): no score
                publish, value, own, has_friends, state_version, as_of, published, receivers = decided
                if publish:
                    scores.append(
                        ScoreOut(
                            user_id=user,
                            raw=value,
                            score=rules.display(value),
                            own=own,
                            network=scoring.network_part(value, own, rules.alpha, has_friends),
                            version=state_version,
                            ts=now_ms,
                            origin_ts=origin_ts,
                            direct_ts=direct[0] if (direct := self._direct.get(user)) else None,
                            direct_lane=direct[1] if direct else None,
                            as_of=as_of,
                            rules_version=version,
                        )
                    )
                else:
                    receivers = self._new_links.get(user, [])
                if receivers:
                    estimates.append(EstimateOut(receivers, user, published, state_version, as_of))
                continue
            state = self._states[user]
            scoring.rebase(state, self.clock, rules)
            state.updated_ts = now_ms
            written[user] = state
            if user in self._voided and state.exists:
                extra = extra_of(state)
                if not scoring.named(state, extra.named_ts > state.erased_ts):
                    state.exists = False
                    withdrawn.add(user)
            if not state.exists:
                if user in withdrawn and state.version > 0:  # it had a score: withdrawn
                    scores.append(ScoreOut(user, 0.0, 0.0, 0.0, 0.0, state.version, now_ms, origin_ts, tombstone=True))
                continue  # nothing names this user (yet): no score
            publish, value = scoring.should_publish(state, rules, epoch)
            if publish or user in self._erased or user in self._revived:
                # History in event time, like everything a score says: a replay stamps the same points.
                scoring.publish(state, value, state.as_of, epoch)
                receivers = list(state.current_friends())
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
                        direct_ts=direct[0] if (direct := self._direct.get(user)) else None,
                        direct_lane=direct[1] if direct else None,
                        as_of=state.as_of,
                        rules_version=version,
                    )
                )
            else:
                # Not moved enough to publish, but a new friend must still
                # learn our current estimate once.
                receivers = self._new_links.get(user, [])
            if receivers:
                # An estimate carries the time its value is valid at: the receiver makes it decay from there.
                estimates.append(EstimateOut(receivers, user, state.published, state.version, state.as_of))
        return UserBatchOutput(written, estimates, scores, self.counts, dict(self._erased))


def recompute_own(state: UserState, catalog: Catalog, rules: Rules, clock: int) -> None:
    """The own part at ``state.as_of`` from the held events that count (after a retraction, an erasure,
    an expiry or a rules change)."""
    state.own = 0.0
    state.own_by_rule = {}
    for held in extra_of(state).held:
        if held.retracted_by is None and rules.counts_at(held.ts, clock):
            event_type = catalog.by_name.get(held.type)
            if event_type is not None:
                factor = rules.decay(state.as_of, held.ts)
                scoring.apply_points(state, [(code, p * factor) for code, p in event_type.price(held.pricing, rules)])


class PartitionExpiry:
    """When a user partition's held events reach their maximum age: (time, user) in a heap.

    Built from the partition's states the first time it is needed after an
    assignment (``build``), then kept as events arrive. An entry may be stale
    (the event was retracted, erased, already expired): processing it then
    finds nothing to expire.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._next: dict[str, int] = {}
        self.built = False

    def build(self, users: Iterable[tuple[str, UserState]], max_age_ms: float) -> None:
        self._heap.clear()
        self._next.clear()
        for user, state in users:
            held = extra_of(state).held
            if held:
                self.add(min(h.ts for h in held) + max_age_ms, user)
        self.built = True

    def add(self, at: float, user: str) -> None:
        at = int(at)
        if at < self._next.get(user, at + 1):
            self._next[user] = at
            heapq.heappush(self._heap, (at, user))

    def due(self, clock: int) -> list[str]:
        users = []
        while self._heap and self._heap[0][0] <= clock:
            at, user = heapq.heappop(self._heap)
            if self._next.get(user) == at:
                del self._next[user]
                users.append(user)
        return users


class Expiry:
    """The expiry heaps of a worker's user partitions (kept in memory across batches, like ``WaitingUpdates``)."""

    def __init__(self) -> None:
        self.partitions: dict[int, PartitionExpiry] = {}

    def of(self, partition: int) -> PartitionExpiry:
        found = self.partitions.get(partition)
        if found is None:
            found = self.partitions[partition] = PartitionExpiry()
        return found

    def clear(self) -> None:
        """Partitions moved: rebuilt from the tables when next needed."""
        self.partitions.clear()


@dataclass(slots=True)
class PairBatchOutput:
    states: dict[str, PairState]
    links: list[LinkOut]
    counts: BatchCounts = field(default_factory=BatchCounts)
    #: erasure markers to write: user -> the latest erasure's time
    markers: dict[str, int] = field(default_factory=dict)


#: Keys of the pairs table that are not pairs: an erased user's marker ("\x00erased\x00" + user id).
#: Ids cannot contain control characters, so no pair key starts with NUL.
ERASED_PREFIX = "\x00erased\x00"


class PairBatch:
    """Applies friendship events of one pair-keyed partition, in order.

    Only the final state of each pair in the batch is sent to its two
    endpoints: links carry absolute weights with the pair's version, so the
    intermediate steps are not needed by anyone. A friendship event with a
    time at or before an erasure of either user counts nothing; an erasure
    heard of later (a notice on ``pair-updates``) voids the events it covers
    and the pair's weight is recomputed from those that remain.
    """

    def __init__(
        self,
        load: Callable[[str], PairState | None],
        *,
        dedup_window_ms: int,
        dedup_min_ids: int,
        erased_at: Callable[[str], int] = lambda user: -1,
        scan: Callable[[], Iterable[tuple[str, PairState]]] = lambda: (),
    ) -> None:
        self._load = load
        self._erased_at = erased_at
        self._scan = scan
        self._dedup_window_ms = dedup_window_ms
        self._dedup_min_ids = dedup_min_ids
        self._states: dict[str, PairState] = {}
        self._changed: dict[str, int] = {}  # pair key -> oldest origin_ts
        self._written: set[str] = set()
        self._markers: dict[str, int] = {}
        self.counts = BatchCounts()

    def _erased(self, user: str) -> int:
        known = self._markers.get(user)
        return known if known is not None else self._erased_at(user)

    def _state(self, key: str, user_a: str, user_b: str) -> PairState:
        state = self._states.get(key)
        if state is None:
            loaded = self._load(key)
            state = loaded if loaded is not None else PairState(*sorted((user_a, user_b)))
            self._states[key] = state
        return state

    def friendship(self, key: str, user_a: str, user_b: str, event_id: str, ts: int, action: str, weight: float, offset: int) -> str:
        """Apply one friendship event; returns "accepted" or "duplicate"."""
        state = self._state(key, user_a, user_b)
        if not scoring.remember_event(state.recent_events, event_id, ts, self._dedup_window_ms, self._dedup_min_ids):
            self.counts.duplicates += 1
            return "duplicate"
        self.counts.accepted += 1
        self._written.add(key)
        state.source_offset = max(state.source_offset, offset)
        if ts <= max(self._erased(user_a), self._erased(user_b)):
            return "accepted"  # forgotten: an erasure of one of them is later than the event
        new_weight = weight if action == "add" else 0.0
        state.events.append((ts, new_weight))
        self._set(key, state, new_weight, ts, ts)
        return "accepted"

    def _set(self, key: str, state: PairState, weight: float, weight_ts: int, origin_ts: int, force: bool = False) -> None:
        """The pair's weight is now ``weight``, set by an event of time ``weight_ts``: both users hear of a change.

        ``force``: they hear of it even if the weight stays (no add of the pair counts any more: VOIDED).
        """
        # The time matters even for a weight of 0 once a link was sent: a receiver ignores a link no later
        # than its erasure, so a link re-timed past an erasure (the event that set it was voided) goes again.
        if force or weight != state.weight or (weight_ts != state.weight_ts and (weight > 0 or state.version > 0)):
            state.weight = weight
            state.weight_ts = weight_ts
            state.version += 1
            previous = self._changed.get(key)
            self._changed[key] = origin_ts if previous is None else min(previous, origin_ts)
        else:
            state.weight_ts = weight_ts
        self._written.add(key)

    def erased(self, user: str, erased_ts: int) -> None:
        """A notice: ``user`` was erased at ``erased_ts``; void the friendship events it covers on this partition.

        The user's pairs with nothing (left) to void send their links again:
        this notice may be one read again after a kill that wrote what it
        voided (pairs first, the marker last, or all of them) and sent none of
        the links (receivers ignore what they already have).
        """
        if erased_ts > self._erased(user):
            self._markers[user] = erased_ts
        candidates = dict(self._scan())
        candidates.update(self._states)  # what this batch changed, or created, is newer than what is stored
        for key, state in candidates.items():
            if user != state.user_a and user != state.user_b:
                continue
            self._states[key] = state
            # Ids of the events it voids go too (a copy read again is void by its time, the marker says so).
            forgotten = {event_id: ts for event_id, ts in state.recent_events.items() if ts > erased_ts}
            if len(forgotten) < len(state.recent_events):
                state.recent_events = forgotten
                self._written.add(key)
            remaining = [(ts, weight) for ts, weight in state.events if ts > erased_ts]
            if remaining == state.events:
                if state.version:
                    self._changed.setdefault(key, erased_ts)
                continue
            was_named = any(w > 0 for _, w in state.events)
            state.events = remaining
            weight, weight_ts = remaining[-1][1] if remaining else 0.0, remaining[-1][0] if remaining else erased_ts
            self._set(key, state, weight, weight_ts, erased_ts, force=was_named and not any(w > 0 for _, w in remaining))

    def finish(self) -> PairBatchOutput:
        links: list[LinkOut] = []
        for key in self._changed:
            links.extend(links_of(self._states[key]))
        states = {key: self._states[key] for key in self._written}
        return PairBatchOutput(states, links, self.counts, dict(self._markers))


def links_of(pair: PairState) -> tuple[LinkOut, LinkOut]:
    """The friendship as both its users learn it.

    A link carries the time of the event that set the weight (the receiver
    voids it if an erasure is later), and VOIDED when no add of the pair
    counts: not a reason for either user to exist.
    """
    weight = pair.weight if pair.weight > 0 or any(w > 0 for _, w in pair.events) else scoring.VOIDED
    return (
        LinkOut(pair.user_a, pair.user_b, weight, pair.version, pair.weight_ts),
        LinkOut(pair.user_b, pair.user_a, weight, pair.version, pair.weight_ts),
    )


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

    def load_raw(self, partition: int, key: str) -> bytes | None: ...

    def items(self, partition: int) -> Iterable[tuple[str, T]]: ...

    def has_key_with_prefix(self, partition: int, prefix: str) -> bool: ...


class Send(NamedTuple):
    """A record to send: ``partition`` None lets the producer's partitioner place it by key; ``value`` None is a tombstone."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None


#: Names of the counts a batch returns: (name, label) -> n (the runtime adds them to its metrics).
EVENTS_IN, ACCEPTED, DUPLICATE, REJECTED, REROUTED = "events_in", "accepted", "duplicate", "rejected", "rerouted"
UPDATES_RECEIVED, UPDATES_SENT, UPDATE_MESSAGES_SENT = "updates_received", "updates_sent", "update_messages_sent"
#: users rescored after a rules change
RESCORED = "rescored"

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
    #: the epoch of ``rules`` (0 for the first rules; every change adds one): partitions
    #: that never saw a rules change score with these
    epoch: int = 0
    #: users only friends' estimates and links reach go through the C path (``UserBatch.estimates``,
    #: ``links``) when it is built; False: the Python path, its reference, for every user
    native_receivers: bool = True


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


#: Keys of the users table that are not users (ids cannot start with NUL): a partition's
#: stream time, and the rules it scores with (after a rules change).
CLOCK_KEY, RULES_KEY = "\x00clock", "\x00rules"


def partition_time(users: Store[UserState], partition: int, context: Context) -> tuple[int, Rules, int]:
    """(stream time, rules, epoch) of a user partition, as its last batch left them (the API explains with these)."""
    epoch, rules = _rules_at(users.load_raw(partition, RULES_KEY), context)
    return max(0, _marker(users.load_raw(partition, CLOCK_KEY))), rules, epoch


def _rules_at(raw: bytes | None, context: Context) -> tuple[int, Rules]:
    """(epoch, rules) a user partition scores with: what a rules change left in it, else the context's."""
    if raw is None:
        return context.epoch, context.rules
    epoch = _MARKER.unpack_from(raw)[0]
    return epoch, _parsed_rules(raw[_MARKER.size :].decode("utf-8"))


@functools.lru_cache(maxsize=16)
def _parsed_rules(text: str) -> Rules:
    return rules_from_text(text, source="rules topic")


def score_users(
    records: Sequence[Record],
    users: Store[UserState],
    context: Context,
    waiting: WaitingUpdates,
    propagation: PropagationSlice | ApplyAll,
    now_ms: int,
    expiry: Expiry | None = None,
) -> BatchResult:
    """One batch of the user lane: users' own events first, then a slice of the waiting friend updates.

    Friend-update records are only read here (into ``waiting``); what they
    carry is applied by this and later batches, within the slice of time left
    after the users' own events, so those are never queued behind a
    propagation wave (streams/waiting.py). Ticks (other partitions' stream
    times) and rules changes (``rescore``) in them take effect at once.
    """
    started = time.perf_counter()
    catalog = context.catalog
    result = BatchResult()
    counts = result.counts
    sends = result.sends
    expiry = expiry if expiry is not None else Expiry()
    user_batches: dict[int, UserBatch] = {}
    initial: dict[int, tuple[int, int]] = {}  # partition -> (stream time, epoch) before this batch
    first: dict[int, tuple[int, Rules]] = {}  # partitions with no rules kept yet -> the (epoch, rules) they start with
    own_advanced: set[int] = set()  # partitions whose own events moved their stream time: the others hear of it

    def user_batch_of(partition: int) -> UserBatch:
        user_batch = user_batches.get(partition)
        if user_batch is None:
            clock = max(0, _marker(users.load_raw(partition, CLOCK_KEY)))
            kept = users.load_raw(partition, RULES_KEY)
            epoch, rules = _rules_at(kept, context)
            # -1: nothing kept yet; the partition's first batch keeps the rules it scores with, so a
            # worker started later under newer rules still knows these states were made under these.
            initial[partition] = (clock, epoch if kept is not None else -1)
            if kept is None:
                first[partition] = (epoch, rules)
            partition_expiry = expiry.of(partition)
            if rules.max_age_days and not partition_expiry.built:
                partition_expiry.build(users.items(partition), rules.max_age_ms)
            user_batch = user_batches[partition] = UserBatch(
                rules,
                lambda user, p=partition: users.load(p, user),
                load_raw=(lambda user, p=partition: users.load_raw(p, user)) if context.native_receivers else None,
                dedup_window_ms=context.dedup_window_ms,
                dedup_min_ids=context.dedup_min_ids,
                catalog=catalog,
                epoch=epoch,
                clock=clock,
                expiry=partition_expiry,
            )
        return user_batch

    for partition, batch in _by_partition(records).items():
        own = []
        latest = -1  # the latest event time this partition learns of in this batch
        rescore, rescore_offset = None, -1
        for record in batch:
            topic = record.topic
            if topic == topics.FRIEND_UPDATES:
                tick, control = _keep_friend_updates(record, waiting, context, sends, counts, now_ms)
                latest = max(latest, tick)
                if control is not None and (rescore is None or control["epoch"] > rescore["epoch"]):
                    rescore, rescore_offset = control, record.offset
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
            own.append((event_type, event, record))
        _advance(result.advance, batch)
        if not own and latest < 0 and rescore is None:
            continue
        user_batch = user_batch_of(partition)
        for (topic, _), next_offset in _next_offsets(batch).items():
            user_batch.read(topic, next_offset - 1)
        if rescore is not None and rescore["epoch"] > user_batch.epoch:
            user_batch.switch_rules(rescore["epoch"], _parsed_rules(rescore["rules"]))
            if user_batch._rules.max_age_days:
                expiry.of(partition).build(users.items(partition), user_batch._rules.max_age_ms)
        # The stream time first: every value in this batch is made valid at it, so none grows (2^(t/half-life)).
        own_latest = max((event.ts for _, event, _ in own), default=-1)
        if own_latest > user_batch.clock:
            own_advanced.add(partition)
        user_batch.advance(max(latest, own_latest))
        for event_type, event, record in own:
            effect = event_type.effect
            if effect == ev.POINTS:
                accepted = user_batch.points(event_type, event, record.topic, record.offset)
            elif effect == ev.RETRACTION:
                accepted = user_batch.retraction(event, record.topic, record.offset)
            elif effect == ev.ERASURE:
                accepted = user_batch.erasure(event, record.topic, record.offset)
            else:
                raise ValueError(f"the user lane has no effect {effect!r} (event type {event_type.name!r})")
            counts[ACCEPTED if accepted else DUPLICATE, event_type.name] += 1
        if rescore is not None and user_batch.epoch == rescore["epoch"] and initial[partition][1] < user_batch.epoch:
            counts[RESCORED, ""] += user_batch.rescore(users.items(partition), topics.FRIEND_UPDATES, rescore_offset)
    for record in waiting.unqueue(context.waiting_limit):
        _read_friend_updates(record, waiting, sends, counts, now_ms, kinds=(ESTIMATE,))
    own_events = bool(user_batches) or waiting.links_waiting()
    out_of_time = propagation.deadline(own_events, time.perf_counter() - started)

    def apply(partition: int, kind: int, receiver: str, updates) -> None:
        user_batch = user_batch_of(partition)
        if kind == LINK:
            user_batch.links(receiver, updates, topics.FRIEND_UPDATES)
        else:
            user_batch.estimates(receiver, updates, topics.FRIEND_UPDATES)

    result.taken = waiting.take(apply, out_of_time, chunk=propagation.chunk)
    finishing = time.perf_counter()
    ticks: list[tuple[int, int]] = []
    for partition, user_batch in user_batches.items():
        user_batch.expire()
        output = user_batch.finish(now_ms)
        clock, epoch = initial[partition]
        if partition in first:
            # Before the states: a kill that lands any of them lands the rules they were made under too
            # (else a worker restarted under newer rules would take them for states of those).
            epoch, first_rules = first[partition]
            result.writes.append((partition, RULES_KEY, Raw(_MARKER.pack(epoch) + first_rules.text.encode("utf-8"))))
        result.writes.extend((partition, user, state) for user, state in output.states.items())
        result.changed += len(output.states)
        if user_batch.clock > clock:
            result.writes.append((partition, CLOCK_KEY, Raw(_MARKER.pack(user_batch.clock))))
            sends.append(stream_time_send(partition, user_batch.clock, user_batch._rules))
            if partition in own_advanced:
                ticks += [(other, user_batch.clock) for other in range(context.partitions) if other != partition]
        if user_batch.epoch > epoch:  # a rules change: after the states it rescored (read again, it rescores)
            text = user_batch._rules.text.encode("utf-8")
            result.writes.append((partition, RULES_KEY, Raw(_MARKER.pack(user_batch.epoch) + text)))
            sends.append(stream_time_send(partition, user_batch.clock, user_batch._rules))
        counts[UPDATES_RECEIVED, "applied"] += output.counts.updates_applied
        counts[UPDATES_RECEIVED, "stale"] += output.counts.updates_stale
        sends.extend(friend_update_sends(context, output.estimates, (), counts))
        sends.extend(score_sends(output.scores))
        result.scores.extend(score for score in output.scores if not score.tombstone)
        for user, erased_ts in output.erased.items():
            sends.extend(pair_notice_sends(context, user, erased_ts))
    if ticks:
        sends.extend(friend_update_sends(context, (), (), counts, ticks=ticks))
    result.finish_seconds = time.perf_counter() - finishing
    return result


def stream_time_send(partition: int, stream_time: int, rules: Rules) -> Send:
    """A user partition's stream time, on the compacted ``stream-time`` topic (what `standing dump` reads)."""
    value = codec.encode(
        "stream_time",
        {"partition": partition, "stream_time": stream_time, "rules_version": rules.version, "half_life_days": rules.half_life_days},
    )
    return Send(topics.STREAM_TIME, f"users-{partition}".encode(), value, None)


def route_friendships(records: Sequence[Record], pairs: Store[PairState], context: Context, now_ms: int) -> BatchResult:
    """One batch of the pair lane: friendship events applied in order per pair, links sent to both users.

    Erasure notices (``pair-updates``) void the friendship events of the
    erased user up to the erasure's time; the pair's weight is recomputed
    from the events that remain. ``pairs`` also keeps the erased users'
    markers (raw values under ``ERASED_PREFIX``) and lists its pairs.
    """
    catalog = context.catalog
    result = BatchResult()
    counts = result.counts
    sends = result.sends
    for partition, batch in _by_partition(records).items():
        latest = -1  # the latest time of a friendship event in this batch
        pair_batch = PairBatch(
            lambda key, p=partition: pairs.load(p, key),
            dedup_window_ms=context.dedup_window_ms,
            dedup_min_ids=context.dedup_min_ids,
            erased_at=_erasure_markers(pairs, partition),
            scan=lambda p=partition: pairs.items(p),
        )
        for record in batch:
            if record.topic == topics.PAIR_UPDATES:
                notice = _decode_notice(record, sends, counts, now_ms)
                if notice is not None:
                    pair_batch.erased(notice["user_id"], notice["erased_ts"])
                continue
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
            # A duplicate's time counts too: read again after a kill that wrote the pair and not the clock.
            latest = max(latest, event.ts)
            counts[ACCEPTED if outcome == "accepted" else DUPLICATE, event_type.name] += 1
        output = pair_batch.finish()
        result.writes.extend((partition, key, pair) for key, pair in output.states.items())
        result.writes.extend((partition, ERASED_PREFIX + user, Raw(_MARKER.pack(ts))) for user, ts in output.markers.items())
        result.changed += len(output.states)
        # Friendship events count for the stream time: every user partition hears of a later one.
        ticks = ()
        if latest > _marker(pairs.load_raw(partition, CLOCK_KEY)):
            result.writes.append((partition, CLOCK_KEY, Raw(_MARKER.pack(latest))))
            ticks = [(user_partition, latest) for user_partition in range(context.partitions)]
        sends.extend(friend_update_sends(context, (), output.links, counts, ticks=ticks))
        _advance(result.advance, batch)
    return result


# --- records to send -------------------------------------------------------------------


def friend_update_sends(
    context: Context,
    estimates: Iterable[EstimateOut],
    links: Iterable[LinkOut],
    counts: Counter | None = None,
    *,
    ticks: Iterable[tuple[int, int]] = (),
) -> list[Send]:
    """One message per receiving partition, carrying all of its updates (a celebrity's: several).

    ``ticks``: (partition, stream time) that partition must hear of; a tick
    goes first in its message, so the estimates after it never run ahead of it.
    """
    partitions = context.partitions
    outboxes: dict[int, friend_updates.Outbox] = defaultdict(friend_updates.Outbox)
    for partition, stream_time in ticks:
        outboxes[partition].add(TICK, "*", "*", float(stream_time), 0, stream_time)  # no receiver: the partition
    for out in estimates:
        # Each partition's receivers in the order given, whole runs at a time (Outbox.add_many).
        receivers = out.receivers
        if len(receivers) == 1:
            receiver = receivers[0]
            outboxes[partition_for(receiver, partitions)].add(ESTIMATE, receiver, out.sender, out.estimate, out.version, out.origin_ts)
            continue
        for partition, group in by_partition(receivers, partitions).items():
            outboxes[partition].add_many(ESTIMATE, group, out.sender, out.estimate, out.version, out.origin_ts)
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
        tick_count = sum(1 for _ in ticks) if isinstance(ticks, (list, tuple)) else 0
        counts[UPDATES_SENT, "link"] += link_count
        counts[UPDATES_SENT, "estimate"] += total - link_count - tick_count
        counts[UPDATE_MESSAGES_SENT, ""] += len(sent)
    return sent


def pair_notice_sends(context: Context, user: str, erased_ts: int) -> list[Send]:
    """An erasure, told to every pair partition (any of them may hold a friendship of the user)."""
    value = codec.encode("pair_notice", {"user_id": user, "erased_ts": erased_ts})
    return [Send(topics.PAIR_UPDATES, user.encode(), value, partition) for partition in range(context.partitions)]


class Raw(NamedTuple):
    """A value written to a table as it is: a marker (an erased user's, a partition's stream time or rules), or a
    user state the C path encoded (``UserBatch.estimates``)."""

    value: bytes


_MARKER = struct.Struct(">q")


def _marker(raw: bytes | None) -> int:
    return -1 if raw is None else _MARKER.unpack(raw)[0]


def _erasure_markers(pairs: Store[PairState], partition: int) -> Callable[[str], int]:
    """When a user of this pair partition was erased (-1: never).

    Erasures are rare: a partition that holds no marker at all (one seek)
    answers -1 without two table reads per friendship event.
    """
    if not pairs.has_key_with_prefix(partition, ERASED_PREFIX):
        return lambda user: -1
    return lambda user: _marker(pairs.load_raw(partition, ERASED_PREFIX + user))


def _decode_notice(record: Record, sends: list[Send], counts: Counter, now_ms: int) -> dict | None:
    try:
        return codec.decode(record.value, "pair_notice")[1]
    except codec.DecodeError as error:
        _reject_internal("erasure notice", record, error, sends, counts, now_ms)
        return None


def _reject_internal(what: str, record: Record, error: codec.DecodeError, sends: list[Send], counts: Counter, now_ms: int) -> None:
    """An undecodable record on a topic only Standing's workers write: a bug or a foreign writer. Kept
    (dead letter), said once in the log, and the partition goes on."""
    log.error(
        "undecodable %s at %s[%d]@%d (%s); kept on the dead-letter topic. Only Standing's workers "
        "should write this topic: look for another writer", what, record.topic, record.partition, record.offset, error.detail,
    )  # fmt: skip
    counts[REJECTED, error.reason] += 1
    sends.append(dead_letter(record, error.reason, error.detail, now_ms))


def score_sends(scores: Iterable[ScoreOut]) -> list[Send]:
    """Records of the compacted ``scores`` topic, keyed by user_id; an erased user's is a tombstone."""
    encode = codec.encode
    return [
        Send(topics.SCORES, score.user_id.encode(), None, None)
        if score.tombstone
        else Send(
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
                    "as_of": score.as_of,
                    "rules_version": score.rules_version,
                },
            ),
            None,
        )
        for score in scores
    ]


def score_of(user: str, state: UserState, rules: Rules) -> ScoreOut:
    """The score record of a stored state as it stands (re-sent after a crash); a tombstone for an erased user."""
    if not state.exists:
        return ScoreOut(user, 0.0, 0.0, 0.0, 0.0, state.version, state.updated_ts, state.updated_ts, tombstone=True)
    return ScoreOut(
        as_of=state.as_of,
        rules_version=rules.version,
        user_id=user,
        raw=state.published,
        score=rules.display(state.published),
        own=state.own,
        network=scoring.network_part(state.published, state.own, rules.alpha, state.has_friends()),
        version=state.version,
        ts=state.updated_ts,
        origin_ts=state.updated_ts,
    )


# --- after a crash ------------------------------------------------------------------------


def uncommitted_user(state: UserState, partition: int, committed: Mapping[tuple[str, int], int]) -> bool:
    """Whether a record not yet committed changed this state (its outputs may never have left)."""
    return any(offset >= committed.get((topic, partition), 0) for topic, offset in state.source_offsets.items())


def resend_user(context: Context, user: str, state: UserState, rules: Rules) -> list[Send]:
    """What a stored user state causes, as it stands: its estimate to every friend, its score, its erasure notices.

    Receivers ignore what they already have (versions), so sending it again is harmless.
    """
    sent: list[Send] = []
    if state.version > 0:  # it published
        estimates = [EstimateOut(list(state.current_friends()), user, state.published, state.version, state.as_of)]
        sent += friend_update_sends(context, estimates, ())
        sent += score_sends([score_of(user, state, rules)])
    if state.erased_ts >= 0:  # even one that never published: its friendships are voided by the notices
        sent += pair_notice_sends(context, user, state.erased_ts)  # the pair partitions may not have heard
    return sent


def resend_partition(context: Context, users: Store[UserState], partition: int) -> list[Send]:
    """A user partition's stream time, again: on ``stream-time`` and as ticks to the other partitions.

    A worker killed after the partition's clock was written and before these
    left would otherwise leave `standing dump` and the other partitions
    behind (the records that moved it, read again, move nothing). Ticks only
    ever move a clock forward, so hearing one twice changes nothing.
    """
    clock, rules, _ = partition_time(users, partition, context)
    if clock <= 0:
        return []
    ticks = [(other, clock) for other in range(context.partitions) if other != partition]
    return [stream_time_send(partition, clock, rules), *friend_update_sends(context, (), (), ticks=ticks)]


def resend_pair_partition(context: Context, pairs: Store[PairState], partition: int) -> list[Send]:
    """The latest friendship event time a pair partition saw, again, as ticks to every user partition
    (as ``resend_partition``: read again, the friendship events are duplicates and tick nothing)."""
    clock = _marker(pairs.load_raw(partition, CLOCK_KEY))
    if clock <= 0:
        return []
    return friend_update_sends(context, (), (), ticks=[(user_partition, clock) for user_partition in range(context.partitions)])


def uncommitted_pair(pair: PairState, partition: int, committed: Mapping[tuple[str, int], int], event_topics: Iterable[str]) -> bool:
    """Whether a friendship event not yet committed changed this pair (``event_topics``: the friendship events'
    topics, which alone set ``source_offset``; what erasure notices change is sent again when they are re-read)."""
    return pair.source_offset >= min(committed.get((topic, partition), 0) for topic in event_topics)


def resend_pair(context: Context, pair: PairState) -> list[Send]:
    """The links a stored friendship causes, to both its users (ignored where already applied)."""
    if not pair.version:
        return []
    return friend_update_sends(context, (), links_of(pair))


#: Largest dead letter written: the topic's limit, less room for the record's framing.
DEAD_LETTER_MAX_BYTES = topics.MAX_VALUE_BYTES


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
) -> tuple[int, dict | None]:
    """Read a friend-updates record into ``waiting``, or keep it unread while too many wait.

    A record kept unread still has its links read now: they are users' own
    friendship events, applied every batch (its estimates are read when the
    record's turn comes). Returns the latest tick it carries (-1 if none) and
    the rules change it is, if it is one.
    """
    if not (waiting.queued_records or waiting.waiting >= context.waiting_limit):
        return _read_friend_updates(record, waiting, sends, counts, now_ms)
    tick, control = _read_friend_updates(record, waiting, sends, counts, now_ms, kinds=(LINK,))
    if control is None and tick != -2:
        waiting.queue(record.partition, record.offset, record)  # its estimates: once fewer wait
    return max(tick, -1), control


def _read_friend_updates(
    record: Record, waiting: WaitingUpdates, sends: list[Send], counts: Counter, now_ms: int, kinds=(ESTIMATE, LINK)
) -> tuple[int, dict | None]:
    """Add the record's updates of ``kinds``; (latest tick, rules change) it carries; (-2, None) and a dead letter if not decodable."""
    try:
        updates, control = friend_updates.decode_record(record.value)
    except codec.DecodeError as error:
        _reject_internal("friend update", record, error, sends, counts, now_ms)
        return -2, None
    if control is not None:
        return -1, control
    tick = -1
    if any(update[0] == TICK for update in updates):
        tick = max(update[5] for update in updates if update[0] == TICK)
        updates = [update for update in updates if update[0] != TICK]
    if len(kinds) == 1:
        updates = [update for update in updates if update[0] == kinds[0]]
    coalesced = waiting.add(record.partition, record.offset, updates)
    if coalesced:
        counts[UPDATES_RECEIVED, "coalesced"] += coalesced
    return tick, None


def _by_partition(records: Iterable[Record]) -> dict[int, list[Record]]:
    """Split a batch by partition, keeping each partition's order."""
    grouped: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        grouped[record.partition].append(record)
    return grouped


def _next_offsets(records: list[Record]) -> dict[tuple[str, int], int]:
    advance: dict[tuple[str, int], int] = {}
    _advance(advance, records)
    return advance


def _advance(advance: dict, records: list[Record]) -> None:
    for record in records:
        slot = (record.topic, record.partition)
        if record.offset + 1 > advance.get(slot, -1):
            advance[slot] = record.offset + 1
