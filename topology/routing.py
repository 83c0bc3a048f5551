"""Keys and partitions: how a record finds the partition that owns its subject.

Producers publish with Kafka's default partitioner (murmur2 of the key, as
in Java and aiokafka); the worker computes the same function to send friend
updates straight to the partition of their receiver.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2

#: Separates the two users of a pair key (ids may not contain control characters).
PAIR_SEPARATOR = "\x1f"


def pair_key(a: str, b: str) -> str:
    """The key of an unordered pair: the same whichever user is named first."""
    return PAIR_SEPARATOR.join((a, b) if a <= b else (b, a))


def pair_members(key: str) -> tuple[str, str]:
    a, b = key.split(PAIR_SEPARATOR)
    return a, b


#: key (str or bytes) -> positive murmur2 hash of its bytes. A plain dict:
#: the worker asks once per input record and once per friend update sent,
#: and ``lru_cache`` plus ``str.encode`` per call was 4% of its time.
_HASHES: dict[str | bytes, int] = {}
_HASHES_KEPT = 1 << 18


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for this (non-null) key."""
    hashed = _HASHES.get(key)
    if hashed is None:
        hashed = murmur2(key.encode() if isinstance(key, str) else key) & 0x7FFFFFFF
        if len(_HASHES) >= _HASHES_KEPT:
            _HASHES.clear()  # bounded: many distinct keys start it again rather than grow it
        _HASHES[key] = hashed
    return hashed % partitions
