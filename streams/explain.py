"""Why a score is what it is: the explanation the API and `standing explain` give.

Pure: a user's state and the rules in, a JSON-ready dict out. The raw score
splits exactly into parts that add up:

    raw = sum_rules (1-alpha) * points(rule) + sum_friends alpha * W[u,f] * p(f)   (with friends)
    raw = sum_rules points(rule)                                                   (friendless)

(up to the epsilon the published estimate may lag its target), so each reason
carries a signed contribution in raw points, like the key factors of a
credit-bureau notice.
"""

from __future__ import annotations

from streams.rules import Rules
from streams.scoring import network_part
from streams.state import UserState

MAX_REASONS = 4

#: Display-score bands, lowest first: (upper bound exclusive, name).
BANDS = ((500.0, "poor"), (600.0, "fair"), (700.0, "good"), (800.0, "very good"), (float("inf"), "excellent"))


def band(display_score: float) -> str:
    for upper, name in BANDS:
        if display_score < upper:
            return name
    return BANDS[-1][1]


def reasons(state: UserState, rules: Rules) -> list[dict]:
    """Every rule and friend with its signed contribution to the raw score."""
    alpha = rules.alpha
    friends = [(friend, entry) for friend, entry in state.friends.items() if entry.weight > 0 and entry.has_estimate]
    own_share = (1.0 - alpha) if friends else 1.0
    result = [
        {"kind": "rule", "code": code, "points": points, "contribution": own_share * points}
        for code, points in state.own_by_rule.items()
        if points
    ]
    total_weight = sum(entry.weight for _, entry in friends)
    for friend, entry in friends:
        share = entry.weight / total_weight
        result.append(
            {
                "kind": "friend",
                "user_id": friend,
                "friend_raw": entry.estimate,
                "friend_score": rules.display(entry.estimate),
                "weight": entry.weight,
                "contribution": alpha * share * entry.estimate,
            }
        )
    result.sort(key=lambda reason: abs(reason["contribution"]), reverse=True)
    return result


def explain(user_id: str, state: UserState, rules: Rules) -> dict:
    raw = state.published
    score = rules.display(raw)
    all_reasons = reasons(state, rules)
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
        "scale": {"min": rules.display_min, "max": rules.display_max, "alpha": rules.alpha, "epsilon": rules.epsilon},
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
