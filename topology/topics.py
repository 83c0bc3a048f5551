"""The topics Standing keeps for itself, and the settings of every topic.

Input topics are named by their event types (``streams.events.CATALOG``);
``declared_topics`` takes them from there and adds the internal ones, so
creation (``streams.runtime.admin``), the worker and ``docker-compose.yml``'s
topic creator (``standing topics``) use one list and partition counts cannot
drift apart (Faust raises PartitionsMismatch when co-partitioned topics
disagree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from topology.settings import Settings

# Internal: link changes and friend estimates, batched per receiving partition.
FRIEND_UPDATES = "friend-updates"
# Internal: erasure notices for the pair lane (every pair partition gets each).
PAIR_UPDATES = "pair-updates"
# Internal: the stream time each user partition has reached (compacted; `standing dump` reads it).
STREAM_TIME = "stream-time"
# The rules in force and every version before them, by epoch (compacted; spec section 8).
RULES = "rules"
# Outputs.
SCORES = "scores"
DEAD_LETTERS = "dead-letters"

# Faust tables (their changelog topics are named "<app_id>-<table>-changelog").
USERS_TABLE = "users"
PAIRS_TABLE = "pairs"
TABLES = (USERS_TABLE, PAIRS_TABLE)

DAY_MS = 24 * 3600 * 1000


#: Largest record the worker writes (max.message.bytes of the topics that carry
#: big records, the producer's max.request.size). A user's state grows with
#: their friends: ~27 bytes each, so 100,000 friends is a 2.7 MB changelog
#: record, over Kafka's 1 MB default; 16 MiB holds about 600,000 friends.
MAX_RECORD_BYTES = 16 * 2**20
#: Largest value of one such record: the limit less room for a record batch's framing and the key.
MAX_VALUE_BYTES = MAX_RECORD_BYTES - 64 * 1024
_BIG_RECORDS = {"max.message.bytes": str(MAX_RECORD_BYTES)}
#: Largest input record (max.message.bytes of the input topics): Kafka's
#: default, said explicitly. ``dead-letters`` takes MAX_RECORD_BYTES, so the
#: dead letter of any input record fits with its provenance; an input topic
#: someone configured larger still gets dead letters, with the original cut
#: (streams/batch.py: dead_letter).
MAX_INPUT_RECORD_BYTES = 1048588
_INPUT_RECORDS = {"max.message.bytes": str(MAX_INPUT_RECORD_BYTES)}


def changelog_topic(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    #: "delete" or "compact"
    cleanup_policy: str = "delete"
    #: retention.ms; -1 keeps forever.
    retention_ms: int = 7 * DAY_MS
    doc: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def configs(self) -> dict[str, str]:
        configs = {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}
        configs.update(self.extra)
        return configs


def declared_topics(settings: Settings, input_topics: Iterable[str]) -> list[TopicSpec]:
    """Every topic, with its partitions and configs: the event types' ``input_topics`` and Standing's own."""
    n = settings.partitions
    return [
        *(
            TopicSpec(name, n, doc="input events (streams/events.py declares their type and key)", extra=_INPUT_RECORDS)
            for name in input_topics
        ),
        TopicSpec(
            FRIEND_UPDATES,
            n,
            retention_ms=DAY_MS,
            doc="internal: link changes and friends' estimates, one batch per receiving partition",
            extra=_BIG_RECORDS,
        ),
        TopicSpec(
            PAIR_UPDATES,
            n,
            retention_ms=DAY_MS,
            doc="internal: erasure notices, one per pair partition, read with the friendships",
        ),
        TopicSpec(SCORES, n, cleanup_policy="compact", retention_ms=-1, doc="latest score per user_id"),
        TopicSpec(STREAM_TIME, n, cleanup_policy="compact", retention_ms=-1, doc="internal: each user partition's stream time"),
        TopicSpec(RULES, 1, cleanup_policy="compact", retention_ms=-1, doc="the rules in force and before, by epoch (the audit trail)"),
        TopicSpec(DEAD_LETTERS, n, retention_ms=30 * DAY_MS, doc="rejected events with their reason", extra=_BIG_RECORDS),
        *(
            TopicSpec(
                changelog_topic(settings.app_id, table),
                n,
                cleanup_policy="compact",
                retention_ms=-1,
                doc=f"changelog of the {table} table (Faust recovery)",
                extra=_BIG_RECORDS,
            )
            for table in TABLES
        ),
    ]
