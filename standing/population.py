"""A simulated population, reproducible from a seed: for the demo, tests and benchmarks.

Friendships follow preferential attachment (Barabási–Albert), so degrees are
power-law like a real social graph: a few users with very many friends, most
with a handful. Activity is skewed the same way (Zipf-like), amounts are
log-normal, and most behaviour is ordinary. Everything is drawn from one
``random.Random(seed)``, so the same config always yields the same lines.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import random
import time
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Iterator

from streams.rules import Rules, load_rules


@dataclass(frozen=True)
class PopulationConfig:
    users: int = 1000
    mean_degree: float = 10.0
    #: total lines, the initial graph's adds, duplicates and invalid lines included
    events: int = 10_000
    seed: int = 0
    #: shares among the events after the initial graph
    purchase_share: float = 0.45
    post_share: float = 0.35
    friendship_share: float = 0.20
    #: among friendship events: remove an existing edge / re-add one with a new weight (the rest add new edges)
    remove_share: float = 0.25
    reweight_share: float = 0.15
    #: fraction of events sent again later (1 to 50 lines on) as an exact copy, same event_id
    duplicate_share: float = 0.0
    #: fraction of lines that are bad input, of every class the spec lists
    invalid_share: float = 0.0
    start_ts: int = 1_767_225_600_000
    #: emit the power-law friendship adds first (counted in `events`)
    initial_graph: bool = True


#: Categories and labels no rule mentions, so "unknown" is exercised too.
UNKNOWN_CATEGORIES = ("garden", "fashion")
UNKNOWN_LABELS = ("meme", "news")
#: Edge weights: mostly 1.0, with some variety.
WEIGHTS = (1.0, 1.0, 1.0, 1.0, 0.5, 1.5, 2.0, 3.0)
#: How often an event picks a category or label that costs points.
NEGATIVE_SHARE = 0.125
TS_STEP_MS = 10


def user_id(i: int) -> str:
    return f"u{i:06d}"


def power_law_edges(users: int, mean_degree: float, rng: random.Random) -> list[tuple[int, int]]:
    """Barabási–Albert: each new node links to about mean_degree/2 existing nodes picked by degree.

    A fractional half-degree is honoured on average (some nodes attach to
    floor(m) nodes, some to ceil(m)). Pairs are distinct, with no self loops.
    """
    m = max(mean_degree / 2.0, 1.0)
    low, high = math.floor(m), math.ceil(m)
    if users <= high:
        return [(a, b) for a in range(users) for b in range(a + 1, users)]
    edges: list[tuple[int, int]] = [(a, b) for a in range(high + 1) for b in range(a + 1, high + 1)]
    pool: list[int] = [node for edge in edges for node in edge]  # each node once per unit of degree
    for node in range(high + 1, users):
        links = high if rng.random() < m - low else low
        chosen: set[int] = set()
        while len(chosen) < links:
            chosen.add(pool[rng.randrange(len(pool))])
        for target in chosen:
            edges.append((node, target))
            pool.append(node)
            pool.append(target)
    rng.shuffle(edges)
    return edges


def _bad_line(rng: random.Random, i: int, ts: int) -> str | dict:
    """One bad input of a randomly chosen class (spec section 1)."""
    eid = f"bad{i}"
    kind = rng.randrange(8)
    if kind == 0:
        return '{"type": "purchase", "event_id": "' + eid  # not JSON
    if kind == 1:
        return {"type": "purchase", "event_id": eid, "ts": ts, "user_id": user_id(0), "category": "books", "amount": -5.0}
    if kind == 2:
        return {"type": "friendship", "event_id": eid, "ts": ts, "user_a": user_id(1), "user_b": user_id(1), "action": "add"}
    if kind == 3:
        return {"type": "friendship", "event_id": eid, "ts": ts, "user_a": user_id(1), "user_b": user_id(2), "action": "poke"}
    if kind == 4:
        return {"type": "friendship", "event_id": eid, "ts": ts, "user_a": user_id(1), "user_b": user_id(2), "action": "add", "weight": 0}
    if kind == 5:
        return {"type": "post", "event_id": "", "ts": ts, "user_id": user_id(3), "post_id": "p", "labels": []}
    if kind == 6:
        return {"type": "post", "event_id": eid, "ts": ts, "post_id": "p", "labels": []}  # no user_id
    return {"type": "review", "event_id": eid, "ts": ts, "user_id": user_id(4)}


def _split(table: dict[str, float], extra: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Names that earn points (plus the unknown extras) and names that cost points."""
    good = [name for name, value in sorted(table.items()) if value >= 0] + list(extra)
    bad = [name for name, value in sorted(table.items()) if value < 0]
    return good, bad or good


def generate_events(config: PopulationConfig, rules: Rules | None = None) -> Iterator[dict | str]:
    """The population's events in the spec's JSON form, lazily (a bad line may be a raw string)."""
    rules = rules or load_rules()
    rng = random.Random(config.seed)
    random_ = rng.random
    good_categories, bad_categories = _split(dict(rules.purchase_weights), UNKNOWN_CATEGORIES)
    good_labels, bad_labels = _split(dict(rules.post_labels), UNKNOWN_LABELS)
    label_counts = (0, 1, 1, 2, 3)

    # Activity skew: Zipf-like weights shuffled over users.
    activity = [1.0 / (rank + 1) ** 0.8 for rank in range(config.users)]
    rng.shuffle(activity)
    cumulative = list(accumulate(activity))
    total = cumulative[-1] if cumulative else 0.0
    last = config.users - 1

    def active_user() -> int:
        return min(bisect_left(cumulative, random_() * total), last)

    edges: dict[tuple[int, int], float] = {}  # current friendships (smaller, larger) -> weight
    edge_list: list[tuple[int, int]] = []  # the same pairs, for picking one at random
    produced = 0
    ts = config.start_ts
    seed = config.seed

    def friendship(a: int, b: int, action: str, weight: float | None = None) -> dict:
        event = {"type": "friendship", "event_id": f"e{seed}-{produced}", "ts": ts, "user_a": user_id(a), "user_b": user_id(b), "action": action}
        if weight is not None:
            event["weight"] = weight
        return event

    if config.initial_graph:
        for a, b in power_law_edges(config.users, config.mean_degree, rng):
            if produced >= config.events:
                return
            weight = rng.choice(WEIGHTS)
            pair = (a, b) if a < b else (b, a)
            edges[pair] = weight
            edge_list.append(pair)
            yield friendship(a, b, "add", weight)
            produced += 1
            ts += TS_STEP_MS

    purchase_cut = config.purchase_share
    post_cut = purchase_cut + config.post_share
    mix_total = post_cut + config.friendship_share
    duplicates: list[tuple[int, int, dict]] = []  # heap of (due line, order, event)
    while produced < config.events:
        ts += TS_STEP_MS
        if duplicates and duplicates[0][0] <= produced:
            yield heapq.heappop(duplicates)[2]
            produced += 1
            continue
        if config.invalid_share and random_() < config.invalid_share:
            yield _bad_line(rng, produced, ts)
            produced += 1
            continue
        roll = random_() * mix_total
        if roll < purchase_cut:
            event = {
                "type": "purchase",
                "event_id": f"e{seed}-{produced}",
                "ts": ts,
                "user_id": user_id(active_user()),
                "category": rng.choice(bad_categories if random_() < NEGATIVE_SHARE else good_categories),
                "amount": round(rng.lognormvariate(3.0, 1.0), 2),
            }
            if random_() < 0.5:
                event["merchant_id"] = f"m{rng.randrange(500)}"
        elif roll < post_cut:
            event = {
                "type": "post",
                "event_id": f"e{seed}-{produced}",
                "ts": ts,
                "user_id": user_id(active_user()),
                "post_id": f"p{seed}-{produced}",
                "labels": [rng.choice(bad_labels if random_() < NEGATIVE_SHARE else good_labels) for _ in range(rng.choice(label_counts))],
            }
        else:
            kind = random_()
            if edge_list and kind < config.remove_share:
                index = rng.randrange(len(edge_list))
                a, b = edge_list[index]
                edge_list[index] = edge_list[-1]
                edge_list.pop()
                del edges[(a, b)]
                # Either user may name the pair first: order must not matter.
                event = friendship(b, a, "remove") if random_() < 0.5 else friendship(a, b, "remove")
            elif edge_list and kind < config.remove_share + config.reweight_share:
                a, b = edge_list[rng.randrange(len(edge_list))]
                weight = rng.choice(WEIGHTS)
                edges[(a, b)] = weight
                event = friendship(b, a, "add", weight)
            else:
                a, b = active_user(), rng.randrange(config.users)
                if a == b:
                    continue
                pair = (a, b) if a < b else (b, a)
                if pair not in edges:
                    edge_list.append(pair)
                weight = rng.choice(WEIGHTS)
                edges[pair] = weight
                event = friendship(a, b, "add", weight)
        if config.duplicate_share and random_() < config.duplicate_share:
            heapq.heappush(duplicates, (produced + rng.randint(1, 50), produced, dict(event)))
        yield event
        produced += 1


def write_jsonl(path: Path, items: Iterable[dict | str], *, progress: Callable[[int], None] | None = None) -> int:
    """Write items as JSON Lines (strings as they are); ``progress(count)`` every 100,000 lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with path.open("w", encoding="utf-8") as out:
        for item in items:
            out.write((item if isinstance(item, str) else dumps(item)) + "\n")
            count += 1
            if progress is not None and count % 100_000 == 0:
                progress(count)
    if progress is not None and count % 100_000:
        progress(count)
    return count


class LiveSimulation:
    """An endless stream of the population's events at ``rate`` per second, for the demo.

    The initial graph goes out as fast as the consumer takes it; then events
    are paced in batches (one sleep per ~50 ms of events, not one per event).
    Timestamps are the wall clock. Invalid lines are skipped: the demo shows
    a healthy population. Event ids carry ``run_id``: a demo started again on
    the same data directory sends new events, not the previous run's ids
    again (which the worker would rightly ignore as duplicates).
    """

    #: If the consumer falls behind by more than this, pacing restarts from now
    #: instead of bursting to catch up.
    MAX_LAG_S = 1.0

    def __init__(self, config: PopulationConfig, rate: float, rules: Rules | None = None, run_id: str = "") -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate = {rate!r}: the simulation needs a finite rate > 0 events per second")
        self._config = config
        self._rate = rate
        self._rules = rules
        self._run_id = run_id

    async def __aiter__(self) -> AsyncIterator[dict]:
        batch = max(1, int(self._rate * 0.05))
        graph_done = not self._config.initial_graph
        started, sent = time.monotonic(), 0
        for item in generate_events(self._config, self._rules):
            if isinstance(item, str):
                continue
            if not graph_done and item.get("type") != "friendship":
                graph_done = True  # the graph is in: pace from here on
                started, sent = time.monotonic(), 0
            item["ts"] = int(time.time() * 1000)
            if self._run_id and item.get("event_id"):
                item["event_id"] = f"{self._run_id}:{item['event_id']}"
            yield item
            sent += 1
            if not graph_done:
                if sent % 500 == 0:
                    await asyncio.sleep(0)  # let the consumer's other tasks run
            elif sent % batch == 0:
                ahead = sent / self._rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
                elif ahead < -self.MAX_LAG_S:
                    started, sent = time.monotonic(), 0
                else:
                    await asyncio.sleep(0)
