"""Explanations: reasons add up to the raw score and say who and what moved it."""

from __future__ import annotations

import pytest

from streams import scoring
from streams.explain import MAX_REASONS, band, explain, reasons, render_text
from streams.rules import load_rules
from streams.state import FriendEntry, UserState

RULES = load_rules()


def _state_at_fixed_point(own_by_rule: dict[str, float], friends: dict[str, tuple[float, float]]) -> UserState:
    state = UserState(own=sum(own_by_rule.values()), own_by_rule=dict(own_by_rule))
    for name, (weight, estimate) in friends.items():
        state.friends[name] = FriendEntry(weight=weight, estimate=estimate, has_estimate=True, version=1, link_version=1)
    scoring.publish(state, scoring.target(state, RULES.alpha), ts=1)
    return state


def test_contributions_add_up_to_the_raw_score():
    state = _state_at_fixed_point(
        {"purchase:groceries": 4.0, "post:spam": -5.0, "post:helpful": 2.0},
        {"ann": (1.0, 10.0), "bob": (3.0, -2.0)},
    )
    for detail in (False, True):
        total = sum(reason["contribution"] for reason in reasons(state, RULES, friend_detail=detail))
        assert total == pytest.approx(state.published)


def test_friendless_user_is_explained_by_rules_alone():
    state = _state_at_fixed_point({"purchase:groceries": 4.0, "post:spam": -5.0}, {})
    result = explain("u", state, RULES)
    assert result["network"] == 0.0 and result["raw"] == -1.0
    assert [r["code"] for r in result["reasons"]] == ["post:spam", "purchase:groceries"]
    assert result["reasons"][0]["contribution"] == -5.0


def test_top_reasons_are_the_largest_in_absolute_value_and_at_most_four():
    rules = {f"purchase:c{i}": float(i) * (-1) ** i for i in range(1, 8)}
    state = _state_at_fixed_point(rules, {"f": (1.0, 100.0)})
    result = explain("u", state, RULES, friend_detail=True)
    assert len(result["reasons"]) == MAX_REASONS
    sizes = [abs(r["contribution"]) for r in result["reasons"]]
    assert sizes == sorted(sizes, reverse=True)
    assert result["reasons"][0] == {
        "kind": "friend", "user_id": "f", "friend_raw": 100.0, "friend_score": RULES.display(100.0),
        "weight": 1.0, "contribution": pytest.approx(RULES.alpha * 100.0),
    }  # fmt: skip
    assert "friend f" in render_text(result)


def test_bands_cover_the_scale():
    assert band(RULES.display_min) == "poor"
    assert band(650) == "good"
    assert band(RULES.display_max) == "excellent"


def test_by_default_no_other_person_appears_the_network_is_one_reason():
    state = _state_at_fixed_point({"purchase:groceries": 4.0}, {"ann": (1.0, 10.0), "bob": (3.0, -2.0)})
    result = explain("me", state, RULES)
    text = repr(result) + render_text(result)
    assert "ann" not in text and "bob" not in text
    assert all(reason["kind"] in ("rule", "network") for reason in result["reasons"])
    [network] = [reason for reason in result["reasons"] if reason["kind"] == "network"]
    assert network["friends"] == 2
    assert network["contribution"] == pytest.approx(RULES.alpha * (1.0 * 10.0 + 3.0 * -2.0) / 4.0)
    for score in (RULES.display(10.0), RULES.display(-2.0)):
        assert f"{score:.0f}" not in render_text(result).split("on a scale")[1]
    assert "(2 friends)" in render_text(result) and "(1 friend)" in render_text(explain("x", _state_at_fixed_point({}, {"a": (1.0, 1.0)}), RULES))


def test_the_export_lists_the_users_own_data_and_no_friends_score():
    from streams.explain import export
    from streams.state import HeldEvent, UserExtra

    state = _state_at_fixed_point({"purchase:groceries": 4.0}, {"ann": (1.0, 10.0)})
    state.extra = UserExtra(
        held=[HeldEvent("p1", "purchase", 5, '["groceries",40.0]', 4.0), HeldEvent("p2", "purchase", 6, '["x",1.0]', 0.0, "r1", 7)],
        retractions={"p9": ("r2", 8)},
    )
    result = export("me", state, RULES)
    assert result["friendships"] == [{"user_id": "ann", "weight": 1.0}]
    assert [(e["event_id"], e["counts"], e.get("retracted_by")) for e in result["events"]] == [("p1", True, None), ("p2", False, "r1")]
    assert result["retractions_waiting"] == [{"retracts": "p9", "event_id": "r2", "ts": 8}]
    assert str(10.0) not in repr(result["friendships"]) and "friend_raw" not in repr(result)
