"""A simulated population, reproducible from a seed: for the demo, tests and benchmarks.

Friendships follow preferential attachment (Barabási–Albert), so degrees are
power-law like a real social graph: a few users with very many friends, most
with a handful. Activity is skewed the same way.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Iterator

from streams.rules import Rules, load_rules


@dataclass(frozen=True)
class PopulationConfig:
    users: int = 1000
    mean_degree: float = 10.0
    #: total lines, the initial graph's adds included
    events: int = 10_000
    seed: int = 0
    #: shares among the events after the initial graph
    purchase_share: float = 0.45
    post_share: float = 0.35
    friendship_share: float = 0.20
    #: among friendship events: remove an existing edge / re-weight one (the rest add new edges)
    remove_share: float = 0.25
    reweight_share: float = 0.15
    #: fraction of events sent again later with the same event_id
    duplicate_share: float = 0.0
    #: fraction of lines that are bad input, of every class the spec lists
    invalid_share: float = 0.0
    start_ts: int = 1_767_225_600_000
    initial_graph: bool = True


def user_id(i: int) -> str:
    return f"u{i:06d}"


def power_law_edges(users: int, mean_degree: float, rng: random.Random) -> list[tuple[int, int]]:
    """Barabási–Albert: each new node links to m existing nodes picked by degree."""
    m = max(1, round(mean_degree / 2))
    if users <= m:
        return [(a, b) for a in range(users) for b in range(a + 1, users)]
    edges: list[tuple[int, int]] = [(a, b) for a in range(m + 1) for b in range(a + 1, m + 1)]
    targets_pool: list[int] = [node for edge in edges for node in edge]  # node repeated once per degree
    for node in range(m + 1, users):
        chosen: set[int] = set()
        while len(chosen) < m:
            chosen.add(targets_pool[rng.randrange(len(targets_pool))])
        for target in chosen:
            edges.append((node, target))
            targets_pool += [node, target]
    rng.shuffle(edges)
    return edges


def _bad_line(rng: random.Random, i: int, ts: int) -> str | dict:
    kind = rng.randrange(8)
    if kind == 0:
        return '{"type": "purchase", "event_id": ' + str(i)  # not JSON
    if kind == 1:
        return {"type": "purchase", "event_id": f"bad{i}", "ts": ts, "user_id": user_id(0), "category": "books", "amount": -5.0}
    if kind == 2:
        return {"type": "friendship", "event_id": f"bad{i}", "ts": ts, "user_a": user_id(1), "user_b": user_id(1), "action": "add"}
    if kind == 3:
        return {"type": "friendship", "event_id": f"bad{i}", "ts": ts, "user_a": user_id(1), "user_b": user_id(2), "action": "poke"}
    if kind == 4:
        return {"type": "friendship", "event_id": f"bad{i}", "ts": ts, "user_a": user_id(1), "user_b": user_id(2), "action": "add", "weight": 0}
    if kind == 5:
        return {"type": "post", "event_id": "", "ts": ts, "user_id": user_id(3), "post_id": "p", "labels": []}
    if kind == 6:
        return {"type": "post", "event_id": f"bad{i}", "ts": ts, "post_id": "p", "labels": []}  # no user_id
    return {"type": "review", "event_id": f"bad{i}", "ts": ts, "user_id": user_id(4)}


def generate_events(config: PopulationConfig, rules: Rules | None = None) -> Iterator[dict | str]:
    """The population's events in the spec's JSON form (a bad line may be a raw string)."""
    rules = rules or load_rules()
    rng = random.Random(config.seed)
    # Most behaviour is ordinary: categories and labels that cost points are
    # picked one time in eight.
    good_categories = [c for c, w in sorted(rules.purchase_weights.items()) if w >= 0] + ["garden", "fashion"]
    bad_categories = [c for c, w in sorted(rules.purchase_weights.items()) if w < 0] or good_categories
    good_labels = [l for l, p in sorted(rules.post_labels.items()) if p >= 0] + ["meme", "news"]
    bad_labels = [l for l, p in sorted(rules.post_labels.items()) if p < 0] or good_labels

    def category() -> str:
        return rng.choice(bad_categories if rng.random() < 0.125 else good_categories)

    def label() -> str:
        return rng.choice(bad_labels if rng.random() < 0.125 else good_labels)
    # Activity skew: a Zipf-like weight per user.
    activity = [1.0 / (rank + 1) ** 0.8 for rank in range(config.users)]
    rng.shuffle(activity)
    cumulative: list[float] = []
    total = 0.0
    for weight in activity:
        total += weight
        cumulative.append(total)

    def active_user() -> str:
        import bisect

        return user_id(bisect.bisect_left(cumulative, rng.random() * total))

    edges: dict[tuple[int, int], float] = {}
    edge_list: list[tuple[int, int]] = []
    produced = 0
    ts = config.start_ts

    def friendship(a: int, b: int, action: str, weight: float | None = None) -> dict:
        event = {"type": "friendship", "event_id": f"e{config.seed}-{produced}", "ts": ts, "user_a": user_id(a), "user_b": user_id(b), "action": action}
        if weight is not None:
            event["weight"] = weight
        return event

    def weight_choice() -> float:
        return rng.choice((1.0, 1.0, 1.0, 0.5, 2.0, 3.0))

    initial = power_law_edges(config.users, config.mean_degree, rng) if config.initial_graph else []
    pending_duplicates: list[tuple[int, dict]] = []
    for a, b in initial:
        if produced >= config.events:
            return
        weight = weight_choice()
        event = friendship(a, b, "add", weight)
        edges[(min(a, b), max(a, b))] = weight
        edge_list.append((min(a, b), max(a, b)))
        yield event
        produced += 1
        ts += 10
    while produced < config.events:
        ts += 10
        if pending_duplicates and pending_duplicates[0][0] <= produced:
            yield pending_duplicates.pop(0)[1]
            produced += 1
            continue
        if config.invalid_share and rng.random() < config.invalid_share:
            yield _bad_line(rng, produced, ts)
            produced += 1
            continue
        roll = rng.random() * (config.purchase_share + config.post_share + config.friendship_share)
        if roll < config.purchase_share:
            event = {
                "type": "purchase",
                "event_id": f"e{config.seed}-{produced}",
                "ts": ts,
                "user_id": active_user(),
                "category": category(),
                "amount": round(rng.lognormvariate(3.0, 1.0), 2),
            }
            if rng.random() < 0.5:
                event["merchant_id"] = f"m{rng.randrange(500)}"
        elif roll < config.purchase_share + config.post_share:
            event = {
                "type": "post",
                "event_id": f"e{config.seed}-{produced}",
                "ts": ts,
                "user_id": active_user(),
                "post_id": f"p{produced}",
                "labels": [label() for _ in range(rng.choice((0, 1, 1, 2, 3)))],
            }
        else:
            kind = rng.random()
            if edge_list and kind < config.remove_share:
                index = rng.randrange(len(edge_list))
                a, b = edge_list[index]
                edge_list[index] = edge_list[-1]
                edge_list.pop()
                edges.pop((a, b), None)
                event = friendship(b, a, "remove") if rng.random() < 0.5 else friendship(a, b, "remove")
            elif edge_list and kind < config.remove_share + config.reweight_share:
                a, b = edge_list[rng.randrange(len(edge_list))]
                weight = weight_choice()
                edges[(a, b)] = weight
                event = friendship(b, a, "add", weight)
            else:
                a = int(active_user()[1:])
                b = rng.randrange(config.users)
                if a == b:
                    continue
                pair = (min(a, b), max(a, b))
                weight = weight_choice()
                if pair not in edges:
                    edge_list.append(pair)
                edges[pair] = weight
                event = friendship(a, b, "add", weight)
        if config.duplicate_share and rng.random() < config.duplicate_share:
            pending_duplicates.append((produced + rng.randint(1, 50), dict(event)))
        yield event
        produced += 1


def write_jsonl(path: Path, items: Iterable[dict | str], *, progress: Callable[[int], None] | None = None) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w") as out:
        for item in items:
            out.write((item if isinstance(item, str) else json.dumps(item, separators=(",", ":"))) + "\n")
            count += 1
            if progress is not None and count % 100_000 == 0:
                progress(count)
    return count


class LiveSimulation:
    """An endless stream of the population's events at ``rate`` per second, for the demo."""

    def __init__(self, config: PopulationConfig, rate: float, rules: Rules | None = None) -> None:
        self._config = config
        self._rate = rate
        self._rules = rules

    async def __aiter__(self) -> AsyncIterator[dict]:
        started = time.monotonic()
        sent = 0
        initial_burst = True
        for item in generate_events(self._config, self._rules):
            if isinstance(item, str):
                continue
            item["ts"] = int(time.time() * 1000)
            yield item
            sent += 1
            if initial_burst and item.get("type") != "friendship":
                initial_burst = False  # the graph is in: pace from here on
                started, sent = time.monotonic(), 0
            if not initial_burst and sent % 50 == 0:
                ahead = sent / self._rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif sent % 500 == 0:
                await asyncio.sleep(0)
