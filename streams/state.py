"""What the worker keeps: a user's state and a friendship pair's state.

Pure data (the maths that changes them is ``streams.scoring``); stored in the
worker's tables through ``streams.state_codec``.
"""

from __future__ import annotations

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

    def has_friends(self) -> bool:
        return any(entry.weight > 0 for entry in self.friends.values())

    def current_friends(self) -> Iterable[str]:
        return (friend for friend, entry in self.friends.items() if entry.weight > 0)


@dataclass(slots=True)
class PairState:
    """A friendship as the pair's own partition sees it (order of events per pair)."""

    user_a: str
    user_b: str
    weight: float = 0.0
    version: int = 0
    recent_events: dict[str, int] = field(default_factory=dict)
    source_offset: int = -1
