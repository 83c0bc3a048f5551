"""The batch reference: hand-computed cases and the fixed-point equation itself."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from standing.reference import compute_reference, solve
from streams.rules import load_rules

RULES = load_rules()
A = RULES.alpha


def _lines(*events) -> list[str]:
    return [e if isinstance(e, str) else json.dumps(e) for e in events]


def purchase(eid, user, category="groceries", amount=100.0):
    return {"type": "purchase", "event_id": eid, "ts": 1, "user_id": user, "category": category, "amount": amount}


def friendship(eid, a, b, action="add", weight=None):
    event = {"type": "friendship", "event_id": eid, "ts": 1, "user_a": a, "user_b": b, "action": action}
    if weight is not None:
        event["weight"] = weight
    return event


def test_friendless_user_scores_own_part_exactly():
    result = compute_reference(_lines(purchase("1", "ann")), RULES)
    assert result.raw == {"ann": RULES.purchase_points("groceries", 100.0)}


def test_two_friends_closed_form():
    # s_a = (1-A) b + A s_b ; s_b = A s_a  =>  s_a = (1-A) b / (1 - A^2)
    b = RULES.purchase_points("groceries", 100.0)
    result = compute_reference(_lines(friendship("f", "ann", "bob"), purchase("1", "ann")), RULES)
    assert result.raw["ann"] == pytest.approx((1 - A) * b / (1 - A * A))
    assert result.raw["bob"] == pytest.approx(A * result.raw["ann"])


def test_weights_removal_readd_and_duplicates():
    b = RULES.purchase_points("groceries", 100.0)
    lines = _lines(
        friendship("f1", "ann", "bob"),
        friendship("f2", "ann", "cid", weight=3.0),
        friendship("f3", "cid", "ann", "remove"),
        friendship("f4", "bob", "ann", weight=2.0),  # re-weight from the other side
        purchase("p1", "bob"),
        purchase("p1", "bob"),  # duplicate
        friendship("f1", "ann", "bob", "remove"),  # duplicate id of the same pair: changes nothing
    )
    result = compute_reference(lines, RULES)
    assert result.summary.as_dict() == {"accepted": 5, "duplicates": 2, "rejected": {}}
    assert result.raw["cid"] == 0.0
    assert result.raw["bob"] == pytest.approx((1 - A) * b / (1 - A * A))


def test_rejected_lines_are_counted_and_noop_removes_create_no_users():
    lines = _lines("oops", friendship("f", "dan", "eve", "remove"), purchase("p", "ann", amount=-1), friendship("g", "x", "x"))
    result = compute_reference(lines, RULES)
    assert result.raw == {}
    assert result.summary.as_dict() == {"accepted": 1, "duplicates": 0, "rejected": {"bad_amount": 1, "invalid_json": 1, "self_friendship": 1}}


def test_solution_satisfies_the_fixed_point_on_a_random_graph():
    rng = random.Random(3)
    users = [f"u{i}" for i in range(2000)]
    own = {u: rng.uniform(-20, 20) for u in users}
    edges = {}
    for _ in range(8000):
        a, b = rng.sample(users, 2)
        edges[tuple(sorted((a, b)))] = rng.choice((0.5, 1.0, 2.0))
    s = solve(own, edges, A)
    neighbours: dict[str, list[tuple[str, float]]] = {u: [] for u in users}
    for (a, b), w in edges.items():
        neighbours[a].append((b, w))
        neighbours[b].append((a, w))
    worst = 0.0
    for u in users:
        if neighbours[u]:
            total = sum(w for _, w in neighbours[u])
            expected = (1 - A) * own[u] + A * sum(w * s[v] for v, w in neighbours[u]) / total
        else:
            expected = own[u]
        worst = max(worst, abs(s[u] - expected))
    assert worst < 1e-9
    assert np.isfinite(list(s.values())).all()
