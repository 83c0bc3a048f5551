"""`standing reference`: the batch fixed point of a file of events (no broker).

The ground truth the streaming scorer is tested against, so it implements the
spec's semantics directly and shares nothing with the incremental algorithm
but the rules and the event validation:

    s = (1 - alpha) b + alpha W s   <=>   (I - alpha W) s = (1 - alpha) b

solved with scipy's sparse direct solver. ``I - alpha W`` is strictly
diagonally dominant (rows of W sum to 1, alpha < 1), so the solution is unique
and the solve well conditioned.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
from scipy.sparse import csr_matrix, identity
from scipy.sparse.linalg import spsolve

from streams import events as ev
from streams.rules import Rules


@dataclass
class ReferenceSummary:
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": dict(sorted(self.rejected.items()))}


@dataclass
class ReferenceResult:
    raw: dict[str, float]
    own: dict[str, float]
    summary: ReferenceSummary


def compute_reference(lines: Iterable[str], rules: Rules) -> ReferenceResult:
    summary = ReferenceSummary()
    seen: set[tuple[str, str]] = set()  # (subject, event_id)
    own: dict[str, float] = {}
    edges: dict[tuple[str, str], float] = {}  # (smaller id, larger id) -> weight
    for line in lines:
        if not line.strip():
            continue
        try:
            event = ev.from_json_line(line)
        except ev.Rejected as rejection:
            summary.rejected[rejection.reason] += 1
            continue
        identity_ = (ev.subject(event), event.event_id)
        if identity_ in seen:
            summary.duplicates += 1
            continue
        seen.add(identity_)
        summary.accepted += 1
        if isinstance(event, ev.Purchase):
            own[event.user_id] = own.get(event.user_id, 0.0) + rules.purchase_points(event.category, event.amount)
        elif isinstance(event, ev.Post):
            own[event.user_id] = own.get(event.user_id, 0.0) + rules.post_points(event.labels)
        else:
            pair = tuple(sorted((event.user_a, event.user_b)))
            if event.action == "add":
                edges[pair] = event.weight
                own.setdefault(event.user_a, 0.0)
                own.setdefault(event.user_b, 0.0)
            else:
                edges.pop(pair, None)
    return ReferenceResult(solve(own, edges, rules.alpha), own, summary)


def solve(own: Mapping[str, float], edges: Mapping[tuple[str, str], float], alpha: float) -> dict[str, float]:
    """The fixed point for own parts ``own`` and undirected weighted ``edges``."""
    users = sorted(own)
    index = {user: i for i, user in enumerate(users)}
    n = len(users)
    if n == 0:
        return {}
    rows: list[int] = []
    cols: list[int] = []
    weights: list[float] = []
    for (a, b), weight in edges.items():
        i, j = index[a], index[b]
        rows += [i, j]
        cols += [j, i]
        weights += [weight, weight]
    adjacency = csr_matrix((weights, (rows, cols)), shape=(n, n))
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    friendless = degree == 0
    scale = np.where(friendless, 0.0, 1.0 / np.where(friendless, 1.0, degree))
    w = csr_matrix(adjacency.multiply(scale[:, None]))
    w = w + csr_matrix((friendless.astype(float), (np.arange(n), np.arange(n))), shape=(n, n))
    b = np.array([own[user] for user in users])
    system = (identity(n, format="csc") - alpha * w).tocsc()
    s = spsolve(system, (1.0 - alpha) * b)
    s = np.atleast_1d(s)
    return {user: float(s[i]) for i, user in enumerate(users)}


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="surrogateescape") as file:
        yield from file


def reference_file(path: Path, rules: Rules) -> ReferenceResult:
    return compute_reference(_lines(path), rules)


def write_scores(path: Path, raw: Mapping[str, float], rules: Rules) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for user in sorted(raw):
            out.write(json.dumps({"user_id": user, "raw": raw[user], "score": rules.display(raw[user])}) + "\n")


def read_scores(path: Path) -> dict[str, float]:
    """user_id -> raw of a scores file (dump, replay or reference output)."""
    scores: dict[str, float] = {}
    with path.open() as file:
        for line in file:
            if line.strip():
                record = json.loads(line)
                scores[record["user_id"]] = record["raw"]
    return scores


@dataclass
class Comparison:
    max_abs_diff: float
    worst_user: str | None
    missing_actual: list[str]
    missing_expected: list[str]


def compare(actual: Mapping[str, float], expected: Mapping[str, float]) -> Comparison:
    worst_user, worst = None, 0.0
    for user, value in expected.items():
        if user in actual and abs(actual[user] - value) >= worst:
            worst_user, worst = user, abs(actual[user] - value)
    return Comparison(
        max_abs_diff=worst,
        worst_user=worst_user,
        missing_actual=sorted(set(expected) - set(actual)),
        missing_expected=sorted(set(actual) - set(expected)),
    )


__all__ = ["ReferenceResult", "ReferenceSummary", "compute_reference", "reference_file", "write_scores", "read_scores", "compare"]
