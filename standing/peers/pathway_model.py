"""Standing's scoring model (spec sections 1-4) as a competent Pathway user writes it.

Run as a process: ``python -m standing.peers.pathway_model --broker HOST:PORT --total N ...``.
It reads the bench's three input topics with ``pw.io.kafka.read`` (raw bytes,
Confluent-framed Avro decoded by a UDF), and keeps, incrementally:

* own parts b(u): purchases and posts de-duplicated by (user, event_id), summed;
* the friendship graph: per unordered pair, de-duplicated by event_id, the
  event latest in produced order (its Kafka offset: a pair's events share one
  partition) decides whether the pair is a friendship and with what weight;
* the scores: ``pw.iterate`` of the model's own update rule, starting from b:
  every user's target t(u) = (1 - alpha) b(u) + alpha sum_v W[u,v] s(v) (or b
  with no friends) replaces s(u) when |t(u) - s(u)| >= epsilon, until nothing
  changes. At that point every |t - s| < epsilon, which is the spec's stopping
  condition, so the same bound epsilon / (1 - alpha) holds.

Pathway 0.33's ``pw.reducers.sum`` over floats does not follow updates (a
group's old sum stays after its rows change; integer sums do), and inside
``pw.iterate`` that silently stops the iteration after one step. Every sum
here is therefore over integers: points, weights and friends' contributions
in fixed point (``SCALE`` units per 1.0), converted back to floats after the sum.

Stops itself once it has read ``--total`` input records and the scores of
that point in time are complete: writes them as JSON {user: raw} to
``--out``, and prints one JSON line with the wall-clock time it was done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

#: fixed-point units per 1.0 for every summed quantity (own points, weights, contributions)
SCALE = 10**9


def _decode(kind: str):
    from schemas import codec
    from streams import events as ev

    def decode(data: bytes):
        try:
            _, record = codec.decode(data, kind)
            return ev.from_dict({"type": kind, **record})
        except (codec.DecodeError, ev.Rejected):
            return None

    return decode


def build(*, broker: str, group: str, rules, max_backlog_size: int | None, autocommit_ms: int = 1500):
    """The dataflow; returns (count of input records read, scores table with columns user, s)."""
    import pathway as pw

    alpha, epsilon = rules.alpha, rules.epsilon
    settings = {
        "bootstrap.servers": broker,
        "auto.offset.reset": "earliest",
        # noida-db answers a fetch with a partition's whole backlog
        "receive.message.max.bytes": "1000000000",
    }

    def read(topic: str):
        # One reader per topic (pw.io.kafka.read takes one topic). autogenerate_key:
        # otherwise the message key (user_id, pair) becomes the row id and a user's
        # second purchase replaces the first.
        return pw.io.kafka.read(
            {**settings, "group.id": f"{group}-{topic}"}, topic=topic, format="raw", autogenerate_key=True,
            with_metadata=True, autocommit_duration_ms=autocommit_ms, max_backlog_size=max_backlog_size, name=f"{group}-{topic}",
        )  # fmt: skip

    purchase, post, friendship = _decode("purchase"), _decode("post"), _decode("friendship")

    @pw.udf(deterministic=True)
    def own_of_purchase(data: bytes) -> tuple[str, str, int] | None:
        event = purchase(data)
        if event is None:
            return None
        return event.user_id, event.event_id, round(rules.purchase_points(event.category, event.amount) * SCALE)

    @pw.udf(deterministic=True)
    def own_of_post(data: bytes) -> tuple[str, str, int] | None:
        event = post(data)
        if event is None:
            return None
        return event.user_id, event.event_id, round(rules.post_points(event.labels) * SCALE)

    @pw.udf(deterministic=True)
    def friendship_of(data: bytes) -> tuple[str, str, str, str, bool, int] | None:
        event = friendship(data)
        if event is None:
            return None
        a, b = (event.user_a, event.user_b) if event.user_a <= event.user_b else (event.user_b, event.user_a)
        return a + "\x1f" + b, event.event_id, a, b, event.action == "add", round(event.weight * SCALE)

    purchases, posts, friendships = read("purchases"), read("posts"), read("friendships")
    read_count = pw.Table.concat_reindex(
        purchases.select(one=1), posts.select(one=1), friendships.select(one=1)
    ).reduce(n=pw.reducers.count())

    # --- own parts ---------------------------------------------------------------------------
    owns = pw.Table.concat_reindex(purchases.select(e=own_of_purchase(pw.this.data)), posts.select(e=own_of_post(pw.this.data)))
    owns = owns.filter(pw.this.e.is_not_none()).select(
        user=pw.unwrap(pw.this.e)[0], event_id=pw.unwrap(pw.this.e)[1], points=pw.unwrap(pw.this.e)[2]
    )
    # a duplicate is an exact copy under the same id: keep one
    owns = owns.groupby(pw.this.user, pw.this.event_id).reduce(pw.this.user, points=pw.reducers.any(pw.this.points))
    own = owns.groupby(pw.this.user).reduce(pw.this.user, b=pw.reducers.sum(pw.this.points))

    # --- the graph -------------------------------------------------------------------------------
    pairs = friendships.select(e=friendship_of(pw.this.data), offset=pw.this._metadata["offset"].as_int())
    pairs = pairs.filter(pw.this.e.is_not_none()).select(
        pair=pw.unwrap(pw.this.e)[0], event_id=pw.unwrap(pw.this.e)[1], a=pw.unwrap(pw.this.e)[2],
        b=pw.unwrap(pw.this.e)[3], add=pw.unwrap(pw.this.e)[4], w=pw.unwrap(pw.this.e)[5], offset=pw.unwrap(pw.this.offset),
    )  # fmt: skip
    # de-duplicated: an event counts at its first position
    pairs = pairs.groupby(pw.this.pair, pw.this.event_id).reduce(
        pw.this.pair, a=pw.reducers.any(pw.this.a), b=pw.reducers.any(pw.this.b), add=pw.reducers.any(pw.this.add),
        w=pw.reducers.any(pw.this.w), offset=pw.reducers.min(pw.this.offset),
    )  # fmt: skip
    latest = pairs.groupby(pw.this.pair).reduce(row=pw.reducers.argmax(pw.this.offset))
    edges = pairs.ix(latest.row).filter(pw.this.add)
    directed = pw.Table.concat_reindex(
        edges.select(u=pw.this.a, v=pw.this.b, w=pw.this.w), edges.select(u=pw.this.b, v=pw.this.a, w=pw.this.w)
    )
    degree = directed.groupby(pw.this.u).reduce(user=pw.this.u, d=pw.reducers.sum(pw.this.w))

    # --- users: anyone with an own event, or named by an accepted add --------------------------------
    added = pairs.filter(pw.this.add)
    users = pw.Table.concat_reindex(
        owns.select(pw.this.user), added.select(user=pw.this.a), added.select(user=pw.this.b)
    ).groupby(pw.this.user).reduce(pw.this.user)
    users = (
        users.join_left(own, users.user == own.user, id=users.id)
        .select(users.user, b=pw.coalesce(own.b, 0))
        .join_left(degree, pw.left.user == degree.user, id=pw.left.id)
        .select(pw.left.user, b=pw.left.b / SCALE, d=pw.coalesce(degree.d, 0))
    )
    directed = directed.select(pw.this.u, pw.this.v, share=pw.this.w / degree.ix_ref(pw.this.u).d)

    # --- the fixed point ---------------------------------------------------------------------------
    def step(scores: pw.Table, directed: pw.Table) -> pw.Table:
        contributions = directed.select(
            pw.this.u, c=pw.cast(int, pw.this.share * scores.ix_ref(pw.this.v).s * SCALE)
        )
        network = contributions.groupby(pw.this.u).reduce(user=pw.this.u, c=pw.reducers.sum(pw.this.c))
        # a left join, not ix_ref(..., optional=True): that raised KeyError on
        # ids present in the universe once a bounded backlog made updates incremental
        joined = scores.join_left(network, scores.user == network.user, id=scores.id).select(
            scores.user, scores.b, scores.d, scores.s, c=pw.coalesce(network.c, 0)
        )
        target = pw.if_else(joined.d == 0, joined.b, (1.0 - alpha) * joined.b + alpha * joined.c / SCALE)
        moved = (target - joined.s >= epsilon) | (joined.s - target >= epsilon)
        return joined.select(joined.user, joined.b, joined.d, s=pw.if_else(moved, target, joined.s))

    start = users.select(pw.this.user, pw.this.b, pw.this.d, s=pw.this.b)
    scores = pw.iterate(step, scores=start, directed=directed)
    return read_count, scores.select(pw.this.user, pw.this.s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--group", default="peers-pathway")
    parser.add_argument("--rules", help="pickled Rules (standing.peers.common.write_rules); default rules if omitted")
    parser.add_argument("--total", type=int, required=True, help="input records to read before it is done")
    parser.add_argument("--max-backlog-size", type=int, help="pw.io.kafka.read's max_backlog_size (default: none)")
    parser.add_argument("--autocommit-ms", type=int, default=1500, help="pw.io.kafka.read's autocommit_duration_ms")
    parser.add_argument("--threads", type=int, default=1, help="Pathway worker threads (PATHWAY_THREADS)")
    parser.add_argument("--out", required=True, help="where the scores go, as JSON {user_id: raw}")
    args = parser.parse_args(argv)
    os.environ.setdefault("PATHWAY_THREADS", str(args.threads))
    import pathway as pw

    from standing.peers.common import read_rules

    if args.rules:
        rules = read_rules(args.rules)
    else:
        from streams.rules import load_rules

        rules = load_rules()
    started = time.time()
    read_count, scores = build(broker=args.broker, group=args.group, rules=rules, max_backlog_size=args.max_backlog_size,
                               autocommit_ms=args.autocommit_ms)  # fmt: skip
    lock = threading.Lock()
    current: dict[str, float] = {}
    progress = {"n": 0, "n_time": None, "scores_closed": None, "minibatches": 0}

    def finish_if_done() -> None:
        n_time, closed = progress["n_time"], progress["scores_closed"]
        if progress["n"] >= args.total and n_time is not None and closed is not None and closed >= n_time:
            done = time.time()
            with open(args.out, "w") as out:
                json.dump(current, out)
            print(json.dumps({"started": started, "done": done, "records": progress["n"], "minibatches": progress["minibatches"],
                              "users": len(current)}), flush=True)  # fmt: skip
            os._exit(0)  # a streaming pw.run never returns by itself

    def on_count(key, row, time, is_addition):
        if is_addition:
            with lock:
                progress["n"], progress["n_time"] = row["n"], time

    def on_count_time_end(time):
        with lock:
            finish_if_done()

    def on_score(key, row, time, is_addition):
        with lock:
            if is_addition:
                current[row["user"]] = row["s"]

    def on_scores_time_end(time):
        with lock:
            progress["scores_closed"] = time
            progress["minibatches"] += 1
            finish_if_done()

    pw.io.subscribe(read_count, on_change=on_count, on_time_end=on_count_time_end)
    pw.io.subscribe(scores, on_change=on_score, on_time_end=on_scores_time_end)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    return 1  # not reached unless the stream ends


if __name__ == "__main__":
    sys.exit(main())
