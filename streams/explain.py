"""Why a score is what it is, and everything held about a person: what the API, `standing explain` and `standing export` give.

Pure: a user's state (made valid at the stream time first: ``scoring.rebase``)
and the rules in, a JSON-ready dict out, naming the rules version and the
time it is valid at. The raw score
splits into parts that add up:

    raw = sum_rules (1-alpha) * points(rule) + alpha * (weighted mean of the friends' scores)   (with friends)
    raw = sum_rules points(rule)                                                               (friendless)

(up to the epsilon the published estimate may lag its target; in
``lift_only`` the network part is what lifted the score, never negative), so
each reason carries a signed contribution in raw points, like the key factors
of a credit-bureau notice.

Nobody else is exposed (spec sections 5 and 9): the network is one reason,
how many friends and their combined contribution; no other person's id or
score appears, unless the operator turns friend-by-friend detail on
(``STANDING_EXPLAIN_FRIENDS=1``). The export lists the user's own
friendships by id and weight (they are the user's data too), never a
friend's score.
"""

from __future__ import annotations

from streams.events import CATALOG, Catalog
from streams.rules import Rules
from streams.scoring import network_part
from streams.state import UserState
from streams.state_codec import extra_of

MAX_REASONS = 4

#: Display-score bands, lowest first: (upper bound exclusive, name).
BANDS = ((500.0, "poor"), (600.0, "fair"), (700.0, "good"), (800.0, "very good"), (float("inf"), "excellent"))


def band(display_score: float) -> str:
    for upper, name in BANDS:
        if display_score < upper:
            return name
    return BANDS[-1][1]


def _friends_counted(state: UserState) -> list:
    return [(friend, entry) for friend, entry in state.friends.items() if entry.weight > 0 and entry.has_estimate]


def reasons(state: UserState, rules: Rules, *, friend_detail: bool = False) -> list[dict]:
    """Every rule, and the network (one reason, or friend by friend with ``friend_detail``), with signed contributions."""
    alpha = rules.alpha
    friends = _friends_counted(state)
    own_share = (1.0 - alpha) if friends else 1.0
    result = [
        {"kind": "rule", "code": code, "points": points, "contribution": own_share * points}
        for code, points in state.own_by_rule.items()
        if points
    ]
    if friends:
        total_weight = sum(entry.weight for _, entry in friends)
        shares = [(friend, entry, alpha * entry.weight / total_weight * entry.estimate) for friend, entry in friends]
        network = sum(share for _, _, share in shares)
        if rules.network_mode == "lift_only" and (1.0 - alpha) * state.own + network < state.own:
            # Friends would have pulled the score down: lift_only keeps it at the user's own part.
            result = [{**reason, "contribution": reason["points"]} for reason in result]
            shares = [(friend, entry, 0.0) for friend, entry, _ in shares]
            network = 0.0
        if friend_detail:
            for friend, entry, share in shares:
                result.append(
                    {
                        "kind": "friend",
                        "user_id": friend,
                        "friend_raw": entry.estimate,
                        "friend_score": rules.display(entry.estimate),
                        "weight": entry.weight,
                        "contribution": share,
                    }
                )
        else:
            result.append({"kind": "network", "friends": len(friends), "contribution": network})
    result.sort(key=lambda reason: abs(reason["contribution"]), reverse=True)
    return result


def explain(user_id: str, state: UserState, rules: Rules, *, friend_detail: bool = False) -> dict:
    raw = state.published
    score = rules.display(raw)
    all_reasons = reasons(state, rules, friend_detail=friend_detail)
    return {
        "user_id": user_id,
        "score": score,
        "band": band(score),
        "raw": raw,
        "own": state.own,
        "network": network_part(raw, state.own, rules.alpha, state.has_friends()),
        "version": state.version,
        "friends": sum(1 for _ in state.current_friends()),
        "reasons": all_reasons[:MAX_REASONS],
        "history": [{"ts": ts, "raw": value, "score": rules.display(value)} for ts, value in state.history],
        "updated_ts": state.updated_ts,
        "as_of": state.as_of,
        "rules_version": rules.version,
        "scale": {"min": rules.display_min, "max": rules.display_max, "alpha": rules.alpha, "epsilon": rules.epsilon},
    }


def export(user_id: str, state: UserState, rules: Rules, catalog: Catalog = CATALOG) -> dict:
    """Everything Standing holds about the user (spec section 9; GDPR Art. 15 and 20), and nothing about anyone else."""
    extra = extra_of(state)
    events = []
    for held in extra.held:
        entry = {
            "event_id": held.event_id,
            "type": held.type,
            "ts": held.ts,
            "points": held.points * rules.decay(state.as_of, held.ts) if held.counts else 0.0,
            "counts": held.counts and rules.counts_at(held.ts, state.as_of),
        }
        if held.retracted_by is not None:
            entry["retracted_by"] = held.retracted_by
        events.append(entry)
    return {
        "user_id": user_id,
        "rules_version": rules.version,
        "as_of": state.as_of,
        "score": explain(user_id, state, rules),
        "friendships": [
            {"user_id": friend, "weight": entry.weight} for friend, entry in sorted(state.friends.items()) if entry.weight > 0
        ],
        "history": [{"ts": ts, "raw": value, "score": rules.display(value)} for ts, value in state.history],
        "events": sorted(events, key=lambda event: (event["ts"], event["event_id"])),
        "retractions_waiting": [
            {"retracts": retracts, "event_id": by, "ts": ts} for retracts, (by, ts) in sorted(extra.retractions.items())
        ],
        "erased_before": state.erased_ts if state.erased_ts >= 0 else None,
    }


def render_text(explanation: dict) -> str:
    """The same explanation for a person (`standing explain`)."""
    lines = [
        f"{explanation['user_id']}: {explanation['score']:.0f} ({explanation['band']}) "
        f"on a scale of {explanation['scale']['min']:.0f}-{explanation['scale']['max']:.0f}",
        f"  raw {explanation['raw']:+.3f} = own behaviour {explanation['raw'] - explanation['network']:+.3f}"
        f" + friends {explanation['network']:+.3f}   ({_count(explanation['friends'], 'friend')})",
        "  what moved it most:",
    ]
    for reason in explanation["reasons"] or []:
        if reason["kind"] == "rule":
            lines.append(f"    {reason['contribution']:+8.3f}  {reason['code']} (points {reason['points']:+.2f})")
        elif reason["kind"] == "network":
            lines.append(f"    {reason['contribution']:+8.3f}  your friends' scores, together ({_count(reason['friends'], 'friend')})")
        else:
            lines.append(
                f"    {reason['contribution']:+8.3f}  friend {reason['user_id']} (score {reason['friend_score']:.0f}, weight {reason['weight']:g})"
            )
    if not explanation["reasons"]:
        lines.append("    nothing yet: no scored behaviour and no friends with a score")
    if explanation["history"]:
        trail = " -> ".join(f"{point['score']:.0f}" for point in explanation["history"][-8:])
        lines.append(f"  recent history: {trail}")
    return "\n".join(lines)


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"
