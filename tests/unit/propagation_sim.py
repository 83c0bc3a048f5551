"""A simulator of the distributed algorithm, for property tests (no broker).

It runs the same pure batch code the Faust agents run (``streams.batch``)
over in-memory partitions: each partition is a FIFO queue like a Kafka
partition, partitions are served in random order with random batch sizes,
and messages are randomly delivered twice (at-least-once redelivery).
With ``waiting=True`` friend updates are kept in ``PendingUpdates`` as the
worker keeps them, and each user batch applies a random number of the
waiting receivers (every waiting link, as the worker does).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from streams import events as ev
from streams.friend_updates import ESTIMATE, LINK
from streams.waiting import PendingUpdates
from streams.batch import PairBatch, UserBatch
from streams.rules import Rules
from streams.scoring import PairState, UserState, contributions
from topology.routing import pair_key, partition_for

WINDOW_MS = 24 * 3600 * 1000


@dataclass
class SimResult:
    published: dict[str, float]
    states: dict[str, UserState]
    input_events: int
    friend_updates: int
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


def simulate(
    lines: list[str],
    rules: Rules,
    *,
    seed: int,
    partitions: int = 3,
    duplicate_p: float = 0.02,
    max_batch: int = 8,
    waiting: bool = False,
) -> SimResult:
    rng = random.Random(seed)
    pending = PendingUpdates()
    pair_queues = [deque() for _ in range(partitions)]
    user_queues = [deque() for _ in range(partitions)]
    users: list[dict[str, UserState]] = [{} for _ in range(partitions)]
    pairs: list[dict[str, PairState]] = [{} for _ in range(partitions)]
    result = SimResult({}, {}, 0, 0)

    def enqueue(queue: deque, item) -> None:
        queue.append(item)
        if rng.random() < duplicate_p:
            # redelivered later, somewhere after the original
            position = rng.randint(len(queue) - 1, len(queue))
            queue.insert(position, item)

    # Producers publish in file order; each topic partition keeps that order.
    for line in lines:
        try:
            event = ev.from_json_line(line)
        except ev.Rejected as rejection:
            result.rejected[rejection.reason] = result.rejected.get(rejection.reason, 0) + 1
            continue
        result.input_events += 1
        if isinstance(event, ev.Friendship):
            key = pair_key(event.user_a, event.user_b)
            enqueue(pair_queues[partition_for(key, partitions)], ("friendship", key, event))
        else:
            enqueue(user_queues[partition_for(event.user_id, partitions)], ("points", event.user_id, event))

    offsets = [0] * partitions
    while any(pair_queues) or any(user_queues) or pending:
        candidates = [("pair", p) for p in range(partitions) if pair_queues[p]] + [
            ("user", p) for p in range(partitions) if user_queues[p] or pending
        ]
        kind, p = rng.choice(candidates)
        queue = pair_queues[p] if kind == "pair" else user_queues[p]
        batch = [queue.popleft() for _ in range(min(len(queue), rng.randint(1, max_batch)))]
        if kind == "pair":
            pair_batch = PairBatch(pairs[p].get, dedup_window_ms=WINDOW_MS, dedup_min_ids=64)
            for _, key, event in batch:
                offsets[p] += 1
                pair_batch.friendship(key, event.user_a, event.user_b, event.event_id, event.ts, event.action, event.weight, offsets[p])
            out = pair_batch.finish()
            pairs[p].update(out.states)
            result.accepted += out.counts.accepted
            result.duplicates += out.counts.duplicates
            for link in out.links:
                enqueue(user_queues[partition_for(link.receiver, partitions)], ("link", link.receiver, link))
        else:
            user_batches: dict[int, UserBatch] = {}

            def user_batch_of(partition: int) -> UserBatch:
                if partition not in user_batches:
                    user_batches[partition] = UserBatch(rules, users[partition].get, dedup_window_ms=WINDOW_MS, dedup_min_ids=64)
                return user_batches[partition]

            user_batch = user_batch_of(p)
            for item in batch:
                kind_, user, payload = item
                offsets[p] += 1
                if kind_ == "points":
                    user_batch.points(user, payload.event_id, payload.ts, contributions(payload, rules), "inputs", offsets[p])
                elif waiting:
                    update_kind, value = (LINK, payload.weight) if kind_ == "link" else (ESTIMATE, payload.estimate)
                    pending.add(p, offsets[p], [(update_kind, user, payload.sender, value, payload.version, payload.origin_ts)])
                elif kind_ == "link":
                    user_batch.link(user, payload.sender, payload.weight, payload.version, payload.origin_ts, "updates", offsets[p])
                else:
                    user_batch.estimate(user, payload.sender, payload.estimate, payload.version, payload.origin_ts, "updates", offsets[p])
            if waiting:

                def apply(partition, kind, receiver, updates) -> None:
                    apply_one = user_batch_of(partition).link if kind == LINK else user_batch_of(partition).estimate
                    for sender, (value, version, origin_ts, offset) in updates.items():
                        apply_one(receiver, sender, value, version, origin_ts, "updates", offset)

                receivers = rng.randint(0, 4)
                pending.release(pending.take(apply, lambda taken: taken.receivers >= receivers, chunk=1))
            for partition, user_batch in user_batches.items():
                out = user_batch.finish(now_ms=0)
                users[partition].update(out.states)
                result.accepted += out.counts.accepted
                result.duplicates += out.counts.duplicates
                for estimate in out.estimates:
                    result.friend_updates += 1
                    enqueue(user_queues[partition_for(estimate.receiver, partitions)], ("estimate", estimate.receiver, estimate))

    for partition_users in users:
        for user, state in partition_users.items():
            result.states[user] = state
            result.published[user] = state.published
    return result
