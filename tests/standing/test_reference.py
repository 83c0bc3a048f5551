"""The batch reference: hand-computed cases and the fixed-point equation itself."""

from __future__ import annotations

import json
import random

import pytest

from standing.reference import compare, compute_reference, read_scores, reference_file, solve, write_scores
from streams.rules import load_rules

RULES = load_rules()
A = RULES.alpha
B = RULES.purchase_points("groceries", 100.0)  # 10 points
assert B == 10.0


def _lines(*events) -> list[str]:
    return [e if isinstance(e, str) else json.dumps(e) for e in events]


def purchase(eid, user, category="groceries", amount=100.0):
    return {"type": "purchase", "event_id": eid, "ts": 1, "user_id": user, "category": category, "amount": amount}


def post(eid, user, labels):
    return {"type": "post", "event_id": eid, "ts": 1, "user_id": user, "post_id": f"p{eid}", "labels": labels}


def friendship(eid, a, b, action="add", weight=None):
    event = {"type": "friendship", "event_id": eid, "ts": 1, "user_a": a, "user_b": b, "action": action}
    if weight is not None:
        event["weight"] = weight
    return event


def test_a_friendless_user_scores_their_own_part_exactly():
    result = compute_reference(_lines(purchase("1", "ann"), post("2", "ann", ["helpful", "spam", "meme"])), RULES)
    expected = B + RULES.post_points(["helpful", "spam"])
    assert result.raw == {"ann": expected}
    assert result.own == {"ann": expected}


def test_two_friends_closed_form():
    # s_a = (1-A) B + A s_b ; s_b = A s_a  =>  s_a = B / (1 + A), s_b = A s_a
    result = compute_reference(_lines(friendship("f", "ann", "bob", weight=2.5), purchase("1", "ann")), RULES)
    assert result.raw["ann"] == pytest.approx(B / (1 + A), abs=1e-12)
    assert result.raw["bob"] == pytest.approx(A * B / (1 + A), abs=1e-12)
    assert result.own == {"ann": B, "bob": 0.0}


def test_weights_shape_the_network_part():
    # ann has friends bob (weight 1) and cid (weight 3); only bob has points.
    # s_b = (1-A) B + A s_a ; s_c = A s_a ; s_a = A (s_b + 3 s_c) / 4
    #   =>  s_a = A B / (4 (1 + A))
    result = compute_reference(_lines(friendship("f1", "ann", "bob"), friendship("f2", "cid", "ann", weight=3.0), purchase("1", "bob")), RULES)
    s_a = A * B / (4 * (1 + A))
    assert result.raw["ann"] == pytest.approx(s_a, abs=1e-12)
    assert result.raw["bob"] == pytest.approx((1 - A) * B + A * s_a, abs=1e-12)
    assert result.raw["cid"] == pytest.approx(A * s_a, abs=1e-12)


def test_remove_and_re_add_from_either_side():
    base = [friendship("f1", "ann", "bob"), friendship("f2", "ann", "cid", weight=3.0), purchase("1", "bob")]
    removed = compute_reference(_lines(*base, friendship("f3", "cid", "ann", "remove")), RULES)
    assert removed.raw["cid"] == 0.0  # still a user, now friendless
    assert removed.raw["bob"] == pytest.approx(B / (1 + A), abs=1e-12)
    # Re-adding with weight 1 (named the other way round) makes ann's friends equal.
    readded = compute_reference(_lines(*base, friendship("f3", "cid", "ann", "remove"), friendship("f4", "cid", "ann", weight=1.0)), RULES)
    # s_a = A (s_b + s_c) / 2, s_b = (1-A) B + A s_a, s_c = A s_a  =>  s_a = A (1-A) B / (2 - 2 A^2)
    assert readded.raw["ann"] == pytest.approx(A * B / (2 * (1 + A)), abs=1e-12)
    reweighted = compute_reference(_lines(*base, friendship("f4", "cid", "ann", weight=1.0)), RULES)
    assert reweighted.raw == pytest.approx(readded.raw, abs=1e-12)


def test_duplicates_are_scoped_to_the_subject_and_change_nothing():
    lines = _lines(
        friendship("f1", "ann", "bob"),
        purchase("p1", "bob"),
        purchase("p1", "bob", amount=1000.0),  # same id, same user: a duplicate, whatever it says
        friendship("f1", "bob", "ann", "remove"),  # same id, same pair named the other way: a duplicate
        purchase("p1", "cid"),  # same id, another user: a different event
        friendship("f1", "ann", "cid", "add"),  # same id, another pair: a different event
    )
    result = compute_reference(lines, RULES)
    assert result.summary.as_dict() == {"accepted": 4, "duplicates": 2, "rejected": {}}
    assert result.own == {"ann": 0.0, "bob": B, "cid": B}
    assert set(result.raw) == {"ann", "bob", "cid"}


def test_rejected_lines_are_counted_by_reason_and_name_no_users():
    lines = [
        "oops",
        "",
        "   ",
        json.dumps(friendship("f", "dan", "eve", "remove")),  # accepted, but removes nothing: no users
        json.dumps(purchase("p", "ann", amount=-1)),
        json.dumps(friendship("g", "xavier", "xavier")),
        json.dumps(friendship("h", "yan", "zoe", weight=0)),
        json.dumps({"type": "review", "event_id": "r", "ts": 1, "user_id": "ann"}),
        b'{"type": "purchase", "event_id": "q", "ts": 1, "user_id": "ann", "category": "\xff", "amount": 1}\n',
    ]
    result = compute_reference(lines, RULES)
    assert result.raw == {}
    assert result.summary.as_dict() == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": {"bad_amount": 1, "bad_weight": 1, "invalid_json": 2, "self_friendship": 1, "unknown_type": 1},
    }


def test_an_empty_file_has_no_users(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    result = reference_file(path, RULES)
    assert result.raw == {} and result.summary.as_dict() == {"accepted": 0, "duplicates": 0, "rejected": {}}


def test_files_are_read_as_bytes_like_produce_does(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        json.dumps(purchase("1", "ann")).encode() + b"\r\n" + b"\n" + b'{"type": "post", "event_id": "\xc3", "ts": 1}\n' + json.dumps(purchase("2", "ann")).encode()
    )
    result = reference_file(path, RULES)
    assert result.raw == {"ann": 2 * B}
    assert result.summary.rejected == {"invalid_json": 1}


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.95])
def test_the_solution_satisfies_the_fixed_point_equation_on_a_random_graph(alpha):
    rng = random.Random(3)
    users = [f"u{i}" for i in range(2000)]
    own = {u: rng.uniform(-20, 20) for u in users}
    edges: dict[tuple[str, str], float] = {}
    for _ in range(6000):
        a, b = rng.sample(users[:1900], 2)  # the last 100 users stay friendless
        edges[(a, b) if a < b else (b, a)] = rng.choice((0.5, 1.0, 2.0))
    s = solve(own, edges, alpha)
    neighbours: dict[str, list[tuple[str, float]]] = {u: [] for u in users}
    for (a, b), w in edges.items():
        neighbours[a].append((b, w))
        neighbours[b].append((a, w))
    worst = 0.0
    for u in users:
        if neighbours[u]:
            total = sum(w for _, w in neighbours[u])
            expected = (1 - alpha) * own[u] + alpha * sum(w * s[v] for v, w in neighbours[u]) / total
        else:
            expected = own[u]
            assert s[u] == own[u]
        worst = max(worst, abs(s[u] - expected))
    assert worst < 1e-9
    assert set(s) == set(users)


def test_scores_round_trip_through_a_file_and_compare(tmp_path):
    raw = {"bob": -3.5, "ann": 1e-17, "cid": 1234.5678901234}
    path = tmp_path / "out" / "scores.jsonl"
    write_scores(path, raw, RULES)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["user_id"] for r in records] == ["ann", "bob", "cid"]
    assert records[1] == {"user_id": "bob", "raw": -3.5, "score": RULES.display(-3.5), "rules_version": RULES.version}
    assert read_scores(path) == raw

    same = compare(read_scores(path), raw)
    assert same.max_abs_diff == 0.0 and same.within(0.0) and same.compared == 3
    off = compare({"ann": 0.0, "bob": -3.0, "dan": 1.0}, raw)
    assert off.max_abs_diff == pytest.approx(0.5)
    assert off.worst_user == "bob" and (off.worst_actual, off.worst_expected) == (-3.0, -3.5)
    assert off.missing_actual == ["cid"] and off.missing_expected == ["dan"]
    assert not off.within(1.0)
    assert "bob" in str(off) and "cid" in str(off)
    assert compare({"ann": float("nan")}, {"ann": 0.0}).max_abs_diff == float("inf")


def test_a_broken_scores_file_names_the_line(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text('{"user_id": "ann", "raw": 1.0}\n{"user": "bob"}\n')
    with pytest.raises(ValueError, match="scores.jsonl:2"):
        read_scores(path)


def test_the_reference_command_gives_scores_at_a_later_time_and_refuses_an_earlier_one(tmp_path):
    import subprocess
    import sys

    rules_path = tmp_path / "rules.toml"
    rules_path.write_text("[time]\nhalf_life_days = 10\n[purchase.weights]\ngroceries = 0.1\n")
    rules = load_rules(rules_path)
    day = 24 * 3600 * 1000
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"type": "purchase", "event_id": "p", "ts": day, "user_id": "ann", "category": "groceries", "amount": 100.0}) + "\n")

    def reference(*extra):
        out = tmp_path / "out.jsonl"
        done = subprocess.run([sys.executable, "-m", "standing", "reference", str(events), "--rules", str(rules_path), "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        return done, out

    done, out = reference("--as-of", str(11 * day))
    assert done.returncode == 0, done.stderr
    assert read_scores(out) == pytest.approx({"ann": 5.0}) == compute_reference(events.read_text().splitlines(), rules, as_of=11 * day).raw
    done, _ = reference("--as-of", str(day - 1))
    assert done.returncode == 2 and "before the stream time" in done.stderr and "Traceback" not in done.stderr
