"""The pure scoring model: per-user state and how one user reacts to its inputs.

Nothing here knows about Kafka or Faust, so the maths is unit-testable (and
property-tested against the batch fixed point) without a broker. The model is
spec section 4: each user keeps its own part ``b``, its published estimate
``p`` with a version, and for every friend the link weight and the latest
estimate received. Its target is

    t = (1 - alpha) * b + alpha * sum_v w_v p_v / sum_v w_v

and it publishes ``p := t`` (to every friend) when ``|t - p| >= epsilon``.

Idempotence: estimates carry the sender's version and links carry the pair's
version; anything not newer than what is stored changes nothing, so
at-least-once delivery, duplicates and replays are harmless.
"""

from __future__ import annotations

from typing import Iterable

from streams.rules import Rules
from streams.state import HISTORY_LENGTH, FriendEntry, UserState


# --- the target and its parts ------------------------------------------------


#: A version's epoch (which rules made it) is its bits above these: every
#: rules change starts a new epoch, and versions only grow (spec section 8).
EPOCH_SHIFT = 32


def epoch_of(version: int) -> int:
    return version >> EPOCH_SHIFT


def network_mean(state: UserState, epoch: int = 0) -> float | None:
    """Weighted mean of the friends' estimates received so far, of this rules epoch (None: none yet).

    A friend whose first estimate has not arrived yet is left out rather than
    counted as 0: the estimate is on its way (every new link makes both sides
    send theirs), and leaving it out avoids publishing a dip that is undone a
    moment later. So is an estimate made under other rules: after a rules
    change every user publishes again, and its friends wait for that.
    """
    total_weight = 0.0
    weighted = 0.0
    for entry in state.friends.values():
        if entry.weight > 0 and entry.has_estimate and entry.version >> EPOCH_SHIFT == epoch:
            total_weight += entry.weight
            weighted += entry.weight * entry.estimate
    if total_weight <= 0:
        return None
    return weighted / total_weight


def target(state: UserState, alpha: float, lift_only: bool = False, epoch: int = 0) -> float:
    """(1 - alpha) b + alpha * (weighted mean of friends' estimates); with ``lift_only``, never below b (spec section 10)."""
    mean = network_mean(state, epoch)
    if mean is None:
        return state.own
    blended = (1.0 - alpha) * state.own + alpha * mean
    return state.own if lift_only and blended < state.own else blended


def network_part(raw: float, own: float, alpha: float, has_friends: bool) -> float:
    """The spec's ``network`` field: raw - (1 - alpha) * own for users with friends."""
    return raw - (1.0 - alpha) * own if has_friends else 0.0


# --- applying inputs -----------------------------------------------------------


def remember_event(state_events: dict[str, int], event_id: str, ts: int, window_ms: int, min_ids: int) -> bool:
    """Record ``event_id``; False if it was already there (a duplicate).

    The memory keeps every id younger than ``window_ms`` (event time, against
    the newest id seen) and at least the ``min_ids`` most recent ones. Pruning
    is looked at once the memory holds twice ``min_ids``; a subject that
    sends more than that within the window keeps them all, so the look starts
    with the cheap test of whether any id is out of the window at all (the
    sort on every event was 5% of the worker's time at 10k users / 100k events).
    """
    if event_id in state_events:
        return False
    state_events[event_id] = ts
    if len(state_events) > 2 * min_ids:
        times = state_events.values()
        newest = max(times)
        if min(times) >= newest - window_ms:
            return True  # every id is inside the window: all are kept
        by_age = sorted(state_events.items(), key=lambda item: item[1], reverse=True)
        keep = {
            eid: when for index, (eid, when) in enumerate(by_age) if index < min_ids or when >= newest - window_ms
        }
        state_events.clear()
        state_events.update(keep)
    return True


def apply_points(state: UserState, contributions: Iterable[tuple[str, float]]) -> None:
    """Add an accepted event's points to the own part, kept per reason code."""
    for reason, points in contributions:
        if points == 0:
            continue
        state.own += points
        state.own_by_rule[reason] = state.own_by_rule.get(reason, 0.0) + points


def apply_link(state: UserState, friend: str, weight: float, link_version: int) -> str | None:
    """Apply a link change from the pair's partition.

    Returns None when ignored (not newer than the last change of this pair),
    "new" when it makes a friend of someone who was not one, "changed"
    otherwise. A removal of a link never seen is kept as a weight-0 entry with
    its version, so an older add delivered late cannot resurrect it. A weight
    of ``VOIDED`` (-1) says the pair has no friendship event that counts (an
    erasure voided them): not a friend, and not a reason for the user to exist.
    """
    weight = weight if weight > 0 else (VOIDED if weight < 0 else 0.0)
    entry = state.friends.get(friend)
    if entry is None:
        state.friends[friend] = FriendEntry(weight=weight, link_version=link_version)
        return "new" if weight > 0 else "changed"
    if link_version <= entry.link_version:
        return None
    was_friend = entry.weight > 0
    entry.weight = weight
    entry.link_version = link_version
    return "new" if weight > 0 and not was_friend else "changed"


#: A link's weight when no friendship event of the pair counts any more (an erasure voided them all).
VOIDED = -1.0


def named(state: UserState, held_or_retractions: bool) -> bool:
    """Whether an event that counts names the user: their own events, or a friendship added (even if removed since)."""
    return held_or_retractions or any(entry.link_version > 0 and entry.weight >= 0 for entry in state.friends.values())


def rebase(state: UserState, stream_ms: int, rules: Rules) -> None:
    """Make the state's values valid at ``stream_ms``: everything decays by the same factor (spec section 7).

    Own part, published estimate and friends' estimates are all kept as of
    ``state.as_of``; the model is linear (and ``lift_only``'s max commutes with
    a positive factor), so moving them all together keeps every relation
    between them, and a quiet user needs no work while time passes.
    """
    if stream_ms <= state.as_of:
        return
    factor = rules.decay(stream_ms, state.as_of)
    state.as_of = stream_ms
    if factor == 1.0:
        return
    state.own *= factor
    state.published *= factor
    by_rule = state.own_by_rule
    for code in by_rule:
        by_rule[code] *= factor
    for entry in state.friends.values():
        entry.estimate *= factor


def apply_estimate(state: UserState, sender: str, estimate: float, version: int) -> bool:
    """Store a friend's estimate if it is newer than the one held; True if stored.

    An estimate from someone who is not (yet) a friend is kept with weight 0:
    the link may still be on its way from the pair's partition, and the
    sender will not send this estimate again.
    """
    entry = state.friends.get(sender)
    if entry is None:
        state.friends[sender] = FriendEntry(estimate=estimate, has_estimate=True, version=version)
        return True
    if entry.has_estimate and version <= entry.version:
        return False
    entry.estimate = estimate
    entry.has_estimate = True
    entry.version = version
    return True


def should_publish(state: UserState, rules: Rules, epoch: int = 0) -> tuple[bool, float]:
    """(publish?, target). A user publishes once on creation and once in each rules epoch, then on moves >= epsilon."""
    new_target = target(state, rules.alpha, rules.network_mode == "lift_only", epoch)
    if state.version == 0 or state.version >> EPOCH_SHIFT < epoch:
        return True, new_target
    return abs(new_target - state.published) >= rules.epsilon, new_target


def publish(state: UserState, value: float, ts: int, epoch: int = 0) -> None:
    """``value`` becomes the published score; the history keeps it with ``ts``, the event time it is valid at."""
    state.published = value
    state.version = max(state.version + 1, epoch << EPOCH_SHIFT)
    state.history.append((ts, value))
    if len(state.history) > HISTORY_LENGTH:
        del state.history[: len(state.history) - HISTORY_LENGTH]

