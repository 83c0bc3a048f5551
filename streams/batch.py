"""One processing batch of one partition, as pure code (no Kafka, no Faust).

The Faust agents hand a batch of decoded records to ``UserBatch`` or
``PairBatch`` and get back the states to write and the messages to send.
Coalescing happens here: however many records reach a user in one batch, the
user is written once, decides once whether to publish, and sends at most one
estimate to each friend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from streams import scoring
from streams.friend_updates import UNKNOWN_ORIGIN, earliest_origin
from streams.rules import Rules
from streams.scoring import PairState, UserState


@dataclass(slots=True)
class EstimateOut:
    """An estimate for one receiver (becomes a FriendUpdate of kind ESTIMATE)."""

    receiver: str
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


class UserBatch:
    """Applies one batch of per-user records and decides what to publish."""

    def __init__(
        self,
        rules: Rules,
        load: Callable[[str], UserState | None],
        *,
        dedup_window_ms: int,
        dedup_min_ids: int,
    ) -> None:
        self._rules = rules
        self._load = load
        self._dedup_window_ms = dedup_window_ms
        self._dedup_min_ids = dedup_min_ids
        self._states: dict[str, UserState] = {}
        self._changed: dict[str, int] = {}  # user -> oldest origin_ts of what changed it
        self._direct: dict[str, int] = {}  # user -> oldest ts of their own events that changed it
        self._new_links: dict[str, list[str]] = {}
        self.counts = BatchCounts()

    def _state(self, user: str) -> UserState:
        state = self._states.get(user)
        if state is None:
            state = self._load(user) or UserState()
            self._states[user] = state
        return state

    def _mark(self, user: str, state: UserState, origin_ts: int, topic: str, offset: int) -> None:
        previous = self._changed.get(user)
        self._changed[user] = origin_ts if previous is None else earliest_origin(previous, origin_ts)
        if offset > state.source_offsets.get(topic, -1):
            state.source_offsets[topic] = offset

    def points(
        self,
        user: str,
        event_id: str,
        ts: int,
        contributions: Iterable[tuple[str, float]],
        topic: str,
        offset: int,
    ) -> bool:
        """An accepted purchase or post; False if it is a duplicate."""
        state = self._state(user)
        if not scoring.remember_event(state.recent_events, event_id, ts, self._dedup_window_ms, self._dedup_min_ids):
            self.counts.duplicates += 1
            return False
        scoring.apply_points(state, contributions)
        self.counts.accepted += 1
        self._mark(user, state, ts, topic, offset)
        self._mark_direct(user, ts)
        return True

    def _mark_direct(self, user: str, ts: int) -> None:
        if ts == UNKNOWN_ORIGIN:
            return  # a link re-sent after a crash: no event time to measure a latency from
        previous = self._direct.get(user)
        self._direct[user] = ts if previous is None else min(previous, ts)

    def link(self, user: str, friend: str, weight: float, link_version: int, origin_ts: int, topic: str, offset: int) -> None:
        state = self._state(user)
        outcome = scoring.apply_link(state, friend, weight, link_version)
        if outcome is None:
            self.counts.updates_stale += 1
            return
        if outcome == "new":
            self._new_links.setdefault(user, []).append(friend)
        self.counts.updates_applied += 1
        self._mark(user, state, origin_ts, topic, offset)
        self._mark_direct(user, origin_ts)  # a LINK carries the friendship event's time

    def estimate(self, user: str, sender: str, value: float, version: int, origin_ts: int, topic: str, offset: int) -> None:
        state = self._state(user)
        if scoring.apply_estimate(state, sender, value, version):
            self.counts.updates_applied += 1
            self._mark(user, state, origin_ts, topic, offset)
        else:
            self.counts.updates_stale += 1

    def finish(self, now_ms: int) -> UserBatchOutput:
        """Publish where the target moved, and tell new friends our estimate."""
        rules = self._rules
        estimates: list[EstimateOut] = []
        scores: list[ScoreOut] = []
        written: dict[str, UserState] = {}
        for user, origin_ts in self._changed.items():
            state = self._states[user]
            state.updated_ts = now_ms
            written[user] = state
            publish, value = scoring.should_publish(state, rules)
            if publish:
                scoring.publish(state, value, now_ms)
                receivers: Iterable[str] = state.current_friends()
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
                        direct_ts=self._direct.get(user),
                    )
                )
            else:
                # Not moved enough to publish, but a new friend must still
                # learn our current estimate once.
                receivers = self._new_links.get(user, ())
            for friend in receivers:
                estimates.append(EstimateOut(friend, user, state.published, state.version, origin_ts))
        return UserBatchOutput(written, estimates, scores, self.counts)


@dataclass(slots=True)
class PairBatchOutput:
    states: dict[str, PairState]
    links: list[LinkOut]
    counts: BatchCounts = field(default_factory=BatchCounts)


class PairBatch:
    """Applies friendship events of one pair-keyed partition, in order.

    Only the final state of each pair in the batch is sent to its two
    endpoints: links carry absolute weights with the pair's version, so the
    intermediate steps are not needed by anyone.
    """

    def __init__(
        self,
        load: Callable[[str], PairState | None],
        *,
        dedup_window_ms: int,
        dedup_min_ids: int,
    ) -> None:
        self._load = load
        self._dedup_window_ms = dedup_window_ms
        self._dedup_min_ids = dedup_min_ids
        self._states: dict[str, PairState] = {}
        self._changed: dict[str, int] = {}  # pair key -> oldest origin_ts
        self._written: set[str] = set()
        self.counts = BatchCounts()

    def friendship(self, key: str, user_a: str, user_b: str, event_id: str, ts: int, action: str, weight: float, offset: int) -> str:
        """Apply one friendship event; returns "accepted" or "duplicate"."""
        state = self._states.get(key)
        if state is None:
            loaded = self._load(key)
            state = loaded if loaded is not None else PairState(*sorted((user_a, user_b)))
            self._states[key] = state
        if not scoring.remember_event(state.recent_events, event_id, ts, self._dedup_window_ms, self._dedup_min_ids):
            self.counts.duplicates += 1
            return "duplicate"
        self.counts.accepted += 1
        self._written.add(key)
        state.source_offset = max(state.source_offset, offset)
        new_weight = weight if action == "add" else 0.0
        if new_weight != state.weight:
            state.weight = new_weight
            state.version += 1
            previous = self._changed.get(key)
            self._changed[key] = ts if previous is None else min(previous, ts)
        return "accepted"

    def finish(self) -> PairBatchOutput:
        links: list[LinkOut] = []
        for key, origin_ts in self._changed.items():
            state = self._states[key]
            links.append(LinkOut(state.user_a, state.user_b, state.weight, state.version, origin_ts))
            links.append(LinkOut(state.user_b, state.user_a, state.weight, state.version, origin_ts))
        states = {key: self._states[key] for key in self._written}
        return PairBatchOutput(states, links, self.counts)
