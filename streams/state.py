"""What the worker keeps: a user's state and a friendship pair's state.

Pure data (the maths that changes them is ``streams.scoring``); stored in the
worker's tables through ``streams.state_codec``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

#: Published scores kept per user for explanations, newest last.
HISTORY_LENGTH = 20


@dataclass(slots=True)
class FriendEntry:
    """What a user knows of one friend (or former friend: weight 0)."""

    weight: float = 0.0
    estimate: float = 0.0
    has_estimate: bool = False
    #: the friend's version of ``estimate``
    version: int = 0
    #: the pair version of the last link change applied
    link_version: int = 0
    #: event time of the friendship event that set ``weight`` (an erasure voids links up to its time)
    link_ts: int = 0


@dataclass(slots=True)
class UserState:
    own: float = 0.0
    own_by_rule: dict[str, float] = field(default_factory=dict)
    published: float = 0.0
    #: 0 = never published; every publish increments it
    version: int = 0
    friends: dict[str, FriendEntry] = field(default_factory=dict)
    #: de-duplication memory: event_id -> event time (ms)
    recent_events: dict[str, int] = field(default_factory=dict)
    #: recent published scores, oldest first: (ts, raw)
    history: list[tuple[int, float]] = field(default_factory=list)
    #: topic -> last offset of that topic applied to this state (crash recovery)
    source_offsets: dict[str, int] = field(default_factory=dict)
    updated_ts: int = 0
    #: False once an erasure left nothing naming the user (no score, 404) until an event names them again
    exists: bool = True
    #: the latest erasure's time: events naming the user up to it count nothing (-1: never)
    erased_ts: int = -1
    #: the stream time own, published and the friends' estimates are valid at (they decay from there)
    as_of: int = 0
    #: held purchases and posts and pending retractions: ``UserExtra``, or its bytes as
    #: stored until something needs it (friend updates, the hot path, never do)
    extra: "UserExtra | bytes" = b""

    def has_friends(self) -> bool:
        return any(entry.weight > 0 for entry in self.friends.values())

    def current_friends(self) -> Iterable[str]:
        return (friend for friend, entry in self.friends.items() if entry.weight > 0)


@dataclass(slots=True)
class HeldEvent:
    """A purchase or post a user state keeps: priced again on a rules change, listed by the export."""

    event_id: str
    #: the event type's name
    type: str
    ts: int
    #: what the rules need to price it (``EventType.pricing``) as compact JSON: kept as stored,
    #: since only a rules change or an expiry reads it (``pricing``), and states are decoded and
    #: encoded on every own event
    pricing_json: str
    #: its points under the rules in force (the sum of its contributions)
    points: float
    #: the retraction that made it count nothing, and that retraction's time
    retracted_by: str | None = None
    retracted_ts: int = -1

    @property
    def counts(self) -> bool:
        return self.retracted_by is None

    @property
    def pricing(self) -> tuple:
        return _tuples(json.loads(self.pricing_json))


def pricing_json(pricing: tuple) -> str:
    """The stored form of ``EventType.pricing`` (JSON arrays; read back as tuples)."""
    return json.dumps(pricing, separators=(",", ":"))


def _tuples(value):
    """JSON arrays back as tuples (pricing is a tuple, its labels a tuple too)."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


@dataclass(slots=True)
class UserExtra:
    """The part of a user state only own events, retractions, erasures and exports read."""

    held: list[HeldEvent] = field(default_factory=list)
    #: retractions of events not held: retracted event_id -> (retraction event_id, its ts)
    retractions: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: the latest time of the user's own events (an erasure before it leaves the user existing)
    named_ts: int = -1


@dataclass(slots=True)
class PairState:
    """A friendship as the pair's own partition sees it (order of events per pair)."""

    user_a: str
    user_b: str
    weight: float = 0.0
    version: int = 0
    recent_events: dict[str, int] = field(default_factory=dict)
    source_offset: int = -1
    #: event time of the friendship event that set ``weight`` (links carry it)
    weight_ts: int = 0
    #: the events that count, in the order applied: (ts, weight; 0 for a remove)
    events: list[tuple[int, float]] = field(default_factory=list)
