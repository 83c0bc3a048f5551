"""Standing's scoring model (spec sections 1-4) as a competent quixstreams user writes it.

Run as a process: ``python -m standing.peers.quix_model --broker HOST:PORT ...``.
It reads the bench's input topics from offset 0, keeps its state in RocksDB
(quixstreams' default, with changelog topics), writes every published raw
score to a compacted ``scores`` topic, and stops once nothing has been
consumed for ``--idle-timeout`` seconds (``Application.run(timeout=...)``).
Its last line on stdout is JSON: when it processed its first and last message
(wall clock) and how many it processed.

Two stages, one message at a time (quixstreams has no cross-key messaging, so
friend updates travel as Kafka messages keyed by the receiving user):

* ``friendships`` (keyed by the unordered pair): per pair, de-duplicate by
  event_id and keep the current weight; a change of the pair's weight (added,
  re-weighted, removed) becomes a *link* message to each of the two users.
* ``purchases`` + ``posts`` + the inbox topic (all keyed by user_id, so
  co-partitioned and merged with ``StreamingDataFrame.concat`` into one
  dataframe with one state store):
  per user, own part b (de-duplicated by event_id), the published estimate p
  and its version, one state entry per friend (weight, last estimate
  received, its version) and the running sums sum_v w p_v and sum_v w, so an
  estimate from a friend costs O(1) state reads however many friends the user
  has. When |t - p| >= epsilon the user publishes p := t to all friends (one
  inbox message each) and to ``scores``; on an added link it sends its
  current estimate to the new friend.

Tuning: ``consumer_poll_timeout`` is 0.01 s instead of quixstreams' 1.0 s.
A concatenation of topics makes quixstreams align them by timestamp, and it
feeds that buffer with ``consume(10000, timeout)``, which waits out the whole
timeout unless 10,000 records are ready; the model's friend updates arrive a
few at a time, so at 1.0 s it sits idle. (On 2,000 users / 20,000 events:
6.5k-7.4k messages/s at 0.01 s against 4.9k at 1.0 s.) ``--merge route``
instead re-produces own points into the inbox so the user stage reads one
topic without alignment; it was no faster (4.0k-4.2k messages/s) and, as
it processes in whatever order the fetches interleave, the friend updates
per event varied 3.6x between runs (25 to 91; concat: 25 to 55).

Coalescing: what a quixstreams user can do without leaving the per-message
model is done (a stale or replayed estimate is dropped by version; a
re-weight that does not change the weight sends nothing; the friend list is
read only when the user publishes). Batching several updates into one write
per user is not expressible in quixstreams' per-message API.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from schemas import codec
from streams import events as ev


def inbox_topic(group: str) -> str:
    """Link changes and friends' estimates, keyed by the receiving user."""
    return f"{group}-inbox"


def scores_topic(group: str) -> str:
    """Every published raw score, keyed by user_id (compacted): JSON {"user_id", "raw"}."""
    return f"{group}-scores"


class AvroEventDeserializer:
    """Confluent-framed Avro of an input topic -> a validated event as a small dict (None if rejected)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, value: bytes, ctx=None):
        try:
            _, record = codec.decode(value, self.kind)
            return ev.from_dict({"type": self.kind, **record})
        except (codec.DecodeError, ev.Rejected):
            return None


def build_app(*, broker: str, group: str, state_dir: str, partitions: int, rules, commit_interval: float = 5.0, on_message_processed=None,
              merge: str = "concat", poll_timeout: float = 0.01):
    from quixstreams import Application
    from quixstreams.models import TopicConfig
    from quixstreams.models.serializers import Deserializer

    class Events(Deserializer):  # quixstreams wants its own base class
        def __init__(self, kind: str) -> None:
            super().__init__()
            self._decode = AvroEventDeserializer(kind)

        def __call__(self, value: bytes, ctx=None):
            return self._decode(value)

    alpha, epsilon = rules.alpha, rules.epsilon
    keep = 1.0 - alpha

    app = Application(
        broker_address=broker,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        commit_interval=commit_interval,
        loglevel="WARNING",
        on_message_processed=on_message_processed,
        consumer_poll_timeout=poll_timeout,
        # noida-db answers a fetch with the partition's whole backlog
        consumer_extra_config={"receive.message.max.bytes": 1_000_000_000},
    )
    config = TopicConfig(num_partitions=partitions, replication_factor=1)
    topic = {name: app.topic(name, value_deserializer=Events(kind), key_deserializer="str", config=config)
             for name, kind in (("purchases", "purchase"), ("posts", "post"), ("friendships", "friendship"))}  # fmt: skip
    inbox = app.topic(inbox_topic(group), value_deserializer="json", key_deserializer="str", value_serializer="json", key_serializer="str", config=config)
    scores = app.topic(scores_topic(group), value_serializer="json", key_serializer="str",
                       config=TopicConfig(num_partitions=partitions, replication_factor=1, extra_config={"cleanup.policy": "compact"}))  # fmt: skip

    # --- stage 1: per pair ---------------------------------------------------------------
    def pair_step(event, state):
        if event is None:
            return []
        seen = "e:" + event.event_id
        if state.exists(seen):
            return []
        state.set(seen, 1)
        current = state.get("w")
        if event.action == "add":
            if current == event.weight:
                return []
            state.set("w", event.weight)
            weight = event.weight
        else:
            if current is None:
                return []  # removing what does not exist changes nothing
            state.delete("w")
            weight = 0.0
        return [{"to": event.user_a, "k": "link", "v": event.user_b, "w": weight},
                {"to": event.user_b, "k": "link", "v": event.user_a, "w": weight}]  # fmt: skip

    pairs = app.dataframe(topic["friendships"])
    pairs = pairs.apply(pair_step, stateful=True, expand=True)
    pairs.to_topic(inbox, key=lambda message: message["to"])

    # --- stage 2: per user -------------------------------------------------------------------
    def user_step(value, key, timestamp, headers, state):
        if value is None:
            return []
        me = state.get("me")  # [b, p, version, sum w*p_v, sum w, friends]
        fresh = me is None
        if fresh:
            me = [0.0, 0.0, 0, 0.0, 0.0, 0]
        b, p, version, total, weights, friends = me
        greet = None  # a new friend who gets our estimate even if we do not publish
        kind = value["k"]
        if kind == "est":
            entry = state.get("f:" + value["from"])
            if entry is None or value["ver"] <= entry[2]:
                return []  # not (or no longer) a friend, or a stale / replayed estimate
            total += entry[0] * (value["p"] - entry[1])
            entry[1], entry[2] = value["p"], value["ver"]
            state.set("f:" + value["from"], entry)
        elif kind == "link":  # weight w > 0 sets the friendship, 0 removes it
            friend, weight = value["v"], value["w"]
            entry = state.get("f:" + friend)
            if entry is not None:
                total -= entry[0] * entry[1]
                weights -= entry[0]
                friends -= 1
            listed = state.get("friends", [])
            if weight > 0:
                entry = [weight, entry[1], entry[2]] if entry is not None else [weight, 0.0, -1]
                state.set("f:" + friend, entry)
                total += weight * entry[1]
                weights += weight
                friends += 1
                if friend not in listed:
                    listed.append(friend)
                    state.set("friends", listed)
                greet = friend
            else:
                state.delete("f:" + friend)
                if friend in listed:
                    listed.remove(friend)
                    state.set("friends", listed)
            if friends == 0:
                total = weights = 0.0  # no drift left behind by the running sums
        else:  # own points of a purchase or post
            seen = "e:" + value["id"]
            if state.exists(seen):
                return []
            state.set(seen, 1)
            b += value["pts"]
        target = b if friends == 0 else keep * b + alpha * total / weights
        out = []
        if abs(target - p) >= epsilon:
            p = target
            version += 1
            message = {"k": "est", "from": key, "p": p, "ver": version}
            out = [{"to": friend, **message} for friend in state.get("friends", [])]
            out.append({"to": None, "user_id": key, "raw": p})
        else:
            if greet is not None:
                out.append({"to": greet, "k": "est", "from": key, "p": p, "ver": version})
            if fresh:
                out.append({"to": None, "user_id": key, "raw": p})
        state.set("me", [b, p, version, total, weights, friends])
        return out

    def own(event):
        if event is None:
            return None
        points = rules.purchase_points(event.category, event.amount) if isinstance(event, ev.Purchase) else rules.post_points(event.labels)
        return {"k": "own", "id": event.event_id, "pts": points}

    purchases = app.dataframe(topic["purchases"]).apply(own)
    posts = app.dataframe(topic["posts"]).apply(own)
    if merge == "concat":
        # the documented way to merge co-partitioned topics; quixstreams then
        # aligns them by timestamp, waiting on partitions whose idleness it does not know
        users = purchases.concat(posts).concat(app.dataframe(inbox))
    else:
        # own points enter the inbox too, so the user stage reads one topic
        purchases.filter(lambda message: message is not None).to_topic(inbox)
        posts.filter(lambda message: message is not None).to_topic(inbox)
        users = app.dataframe(inbox)
    users = users.apply(user_step, stateful=True, expand=True, metadata=True)
    users.filter(lambda message: message["to"] is not None).to_topic(inbox, key=lambda message: message["to"])
    users.filter(lambda message: message["to"] is None).apply(
        lambda message: {"user_id": message["user_id"], "raw": message["raw"]}
    ).to_topic(scores, key=lambda message: message["user_id"])
    return app


def main(argv: list[str] | None = None) -> int:
    from standing.peers.common import read_rules

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--group", default="peers-quix")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--rules", help="pickled Rules (standing.peers.common.write_rules); default rules if omitted")
    parser.add_argument("--idle-timeout", type=float, default=5.0, help="stop after this many seconds with nothing consumed")
    parser.add_argument("--commit-interval", type=float, default=5.0)
    parser.add_argument("--merge", choices=("concat", "route"), default="concat",
                        help="how purchases and posts reach the user stage: sdf.concat (default) or re-produced into the inbox topic")
    parser.add_argument("--poll-timeout", type=float, default=0.01, help="quixstreams' consumer_poll_timeout (its default is 1.0)")
    args = parser.parse_args(argv)
    if args.rules:
        rules = read_rules(args.rules)
    else:
        from streams.rules import load_rules

        rules = load_rules()
    progress = {"first": None, "last": None, "processed": 0}

    def processed(topic, partition, offset):
        now = time.time()
        if progress["first"] is None:
            progress["first"] = now
        progress["last"] = now
        progress["processed"] += 1

    app = build_app(broker=args.broker, group=args.group, state_dir=args.state_dir, partitions=args.partitions,
                    rules=rules, commit_interval=args.commit_interval, on_message_processed=processed,
                    merge=args.merge, poll_timeout=args.poll_timeout)  # fmt: skip
    started = time.time()
    app.run(timeout=args.idle_timeout, collect=False)
    print(json.dumps({"started": started, **progress}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
