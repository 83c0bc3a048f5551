"""Standing's own Prometheus metrics (``standing_*``, base units: seconds, bytes).

Faust's built-in monitor reports milliseconds and has no lag gauge, so the
worker defines what operators need here and serves it with prometheus-client.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

from streams import batch
from streams.events import CATALOG, PAIR, USER
from topology import topics

disable_created_metrics()  # the *_created series only add noise to dashboards

EVENTS_IN = Counter("standing_events_in_total", "Records consumed from the input topics.", ["topic"])
EVENTS_ACCEPTED = Counter("standing_events_accepted_total", "Input events applied to state.", ["type"])
EVENTS_DUPLICATE = Counter(
    "standing_events_duplicate_total", "Input events recognised as duplicates by event_id (changed nothing).", ["type"]
)
EVENTS_REJECTED = Counter(
    "standing_events_rejected_total", "Input records the worker rejected to the dead-letter topic.", ["reason"]
)
DEAD_LETTERS = Counter(
    "standing_dead_letters_total",
    "Records on the dead-letter topic, whoever rejected them (the producer's edge or a worker).",
    ["reason", "source"],
)
INPUT_RECORDS_REROUTED = Counter(
    "standing_input_records_rerouted_total",
    "Input records found on a partition that does not own their subject (a producer partitioning with another "
    "hash than Kafka's default murmur2, e.g. librdkafka's CRC32) and sent to the partition that does.",
    ["topic"],
)
FRIEND_UPDATES_SENT = Counter(
    "standing_friend_updates_sent_total", "Friend updates (estimates and link changes) sent.", ["kind"]
)
FRIEND_UPDATE_MESSAGES_SENT = Counter(
    "standing_friend_update_messages_sent_total", "Kafka messages carrying friend updates (one per receiving partition per batch)."
)
FRIEND_UPDATES_RECEIVED = Counter(
    "standing_friend_updates_received_total",
    "Friend updates received, by outcome: applied, stale (not newer than what the receiver holds), "
    "coalesced (replaced by a newer one while waiting, never applied).",
    ["outcome"],
)
FRIEND_UPDATES_WAITING = Gauge(
    "standing_friend_updates_waiting",
    "Friend updates read but not applied yet (streams/waiting.py): the propagation backlog held in memory.",
)
STATES_RESENT = Counter(
    "standing_states_resent_total",
    "States whose outputs were sent again after a rebalance because records that changed them were not committed "
    "(streams/runtime/resend.py): after a kill, or a hand-over while friend updates waited. Receivers ignore what they have.",
)
SCORES_PUBLISHED = Counter("standing_scores_published_total", "Score records published to the scores topic.")
BATCHES = Counter("standing_batches_total", "Batches processed, by agent.", ["agent"])
BATCH_SECONDS = Histogram(
    "standing_batch_duration_seconds",
    "Time to process one batch, by agent.",
    ["agent"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
EVENT_TO_SCORE_SECONDS = Histogram(
    "standing_event_to_score_seconds",
    "Latency from an accepted event's time to its own user's score being published, i.e. acknowledged by the broker "
    "(purchase and post: that user; friendship: both users), by the lane the event came in by: user (purchases, "
    "posts, retractions) or pair (friendships, which reach their users through the pair's partition, one hop more). "
    "Friends reached later through propagation are not observed here: their change has many causes.",
    ["lane"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
#: lane -> its series (a score's latency is observed per own event: no label lookup each time)
EVENT_TO_SCORE_BY_LANE = {lane: EVENT_TO_SCORE_SECONDS.labels(lane) for lane in (USER, PAIR)}

# --- gauges refreshed by streams.runtime.monitoring every few seconds ------------------
CONSUMER_LAG = Gauge(
    "standing_consumer_lag_records",
    "Records on a partition this worker owns not yet committed by its group (end offset - committed offset).",
    ["topic", "partition"],
)
TABLE_KEYS = Gauge("standing_table_keys", "Keys held in a state table on this worker: users, or friendship pairs (exact count, refreshed every 15 s, less often on tables so big that counting would take over 1% of the worker's time).", ["table"])
TABLE_BYTES = Gauge("standing_table_bytes", "Bytes on disk of a state table on this worker.", ["table"])
ASSIGNED_PARTITIONS = Gauge("standing_assigned_partitions", "Partitions of the input topics this worker owns.", ["topic"])
MEMBERS_EVICTED = Counter(
    "standing_group_members_evicted_total",
    "Dead consumer-group members this worker removed (brokers that never expire them; streams/runtime/embedded_broker.py).",
)
PARTITIONS_RESUMED = Counter(
    "standing_stalled_partitions_resumed_total",
    "Stalled owned partitions the worker restarted after recovery: put back into Faust's fetch set, "
    "flow resumed, or sought back to the committed offset (streams/runtime/monitoring.py).",
)
INPUT_RECORDS_SKIPPED = Counter(
    "standing_input_records_skipped_total",
    "Input records Faust's consumer skipped (a race around rebalances) that the worker noticed "
    "before committing past them and read again (streams/runtime/commits.py).",
    ["topic"],
)
for _topic in (*CATALOG.topics(), topics.FRIEND_UPDATES):
    INPUT_RECORDS_SKIPPED.labels(_topic)  # at 0 from the start, so rates and alerts have a series
for _topic in CATALOG.topics():
    INPUT_RECORDS_REROUTED.labels(_topic)
CHANGELOG_RECORDS_RESTORED = Counter(
    "standing_changelog_records_restored_total",
    "Changelog records written into this worker's tables while recovering them (streams/runtime/recovery.py).",
    ["table"],
)
LANE_HELD = Gauge(
    "standing_lane_held",
    "1 while the agent holds records the broker refuses (a topic's configuration or ACLs: fix the topic), by agent.",
    ["agent"],
)
BATCH_FAILURES = Counter(
    "standing_batch_failures_total",
    "Batches (or single records) whose processing failed and was retried, by agent (streams/runtime/failures.py).",
    ["agent"],
)
for _agent in ("score_users", "route_friendships"):
    BATCH_FAILURES.labels(_agent)
USERS_RESCORED = Counter(
    "standing_users_rescored_total",
    "Users rescored after a rules change reached their partition (spec section 8).",
)
REBALANCES = Counter("standing_rebalances_total", "Rebalances this worker went through (partition assignments).")
READY = Gauge("standing_ready", "1 when the worker holds recovered partitions and is processing, else 0.")


#: The counters of a batch's counts (``streams.batch``'s names).
_BATCH_COUNTERS = {
    batch.EVENTS_IN: EVENTS_IN,
    batch.ACCEPTED: EVENTS_ACCEPTED,
    batch.DUPLICATE: EVENTS_DUPLICATE,
    batch.REJECTED: EVENTS_REJECTED,
    batch.REROUTED: INPUT_RECORDS_REROUTED,
    batch.UPDATES_RECEIVED: FRIEND_UPDATES_RECEIVED,
    batch.UPDATES_SENT: FRIEND_UPDATES_SENT,
}


def add_counts(counts) -> None:
    """Add a batch's counts, ``{(name, label): n}``, once per batch.

    ``labels()`` plus ``inc()`` per record was 3% of the worker's time.
    """
    for (name, label), n in counts.items():
        if not n:
            continue
        if name == batch.UPDATE_MESSAGES_SENT:
            FRIEND_UPDATE_MESSAGES_SENT.inc(n)
        elif name == batch.RESCORED:
            USERS_RESCORED.inc(n)
        else:
            _BATCH_COUNTERS[name].labels(label).inc(n)


def publish_identity(group_instance_id: str) -> None:
    """Who answers on this metrics port: the process token of its Kafka client id (streams/runtime/embedded_broker.py)."""
    from streams.runtime.embedded_broker import IDENTITY_METRIC, PROCESS_TOKEN

    Info(IDENTITY_METRIC.removesuffix("_info"), "This worker process: its Kafka client id token and group.instance.id.").info(
        {"token": PROCESS_TOKEN, "group_instance_id": group_instance_id}
    )
