"""Keys and partitions: how a record finds the partition that owns its subject.

Producers publish with Kafka's default partitioner (murmur2 of the key, as
in Java and aiokafka); the worker computes the same function to send friend
updates straight to the partition of their receiver.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2

#: Separates the two users of a pair key (ids may not contain control characters).
PAIR_SEPARATOR = "\x1f"


def pair_key(a: str, b: str) -> str:
    """The key of an unordered pair: the same whichever user is named first."""
    return PAIR_SEPARATOR.join((a, b) if a <= b else (b, a))


def pair_members(key: str) -> tuple[str, str]:
    a, b = key.split(PAIR_SEPARATOR)
    return a, b


@lru_cache(maxsize=1 << 18)
def _hash(key: bytes) -> int:
    return murmur2(key) & 0x7FFFFFFF


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for this (non-null) key."""
    return _hash(key.encode() if isinstance(key, str) else key) % partitions
