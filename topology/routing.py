"""Keys and partitions: how a record finds the partition that owns its subject.

Producers publish with Kafka's default partitioner (murmur2 of the key, as
in Java and aiokafka); the worker computes the same function to send friend
updates straight to the partition of their receiver.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2

try:
    from topology import _routing as native
except ImportError:  # not built (no C compiler): the Python functions below
    native = None

#: Separates the two users of a pair key (ids may not contain control characters).
PAIR_SEPARATOR = "\x1f"


def pair_key(a: str, b: str) -> str:
    """The key of an unordered pair: the same whichever user is named first."""
    return PAIR_SEPARATOR.join((a, b) if a <= b else (b, a))


def pair_members(key: str) -> tuple[str, str]:
    a, b = key.split(PAIR_SEPARATOR)
    return a, b


#: key (str or bytes) -> positive murmur2 hash of its bytes, where the C
#: function is not built: ``lru_cache`` plus ``str.encode`` per call was 4%
#: of the worker's time.
_HASHES: dict[str | bytes, int] = {}
_HASHES_KEPT = 1 << 18


def _partition_for(key: str | bytes, partitions: int) -> int:
    hashed = _HASHES.get(key)
    if hashed is None:
        hashed = murmur2(key.encode() if isinstance(key, str) else key) & 0x7FFFFFFF
        if len(_HASHES) >= _HASHES_KEPT:
            _HASHES.clear()  # bounded: many distinct keys start it again rather than grow it
        _HASHES[key] = hashed
    return hashed % partitions


def _by_partition(keys: list[str], partitions: int) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for key in keys:
        partition = _partition_for(key, partitions)
        group = groups.get(partition)
        if group is None:
            groups[partition] = [key]
        else:
            group.append(key)
    return groups


#: The partition Kafka's default partitioner picks for this (non-null) key:
#: murmur2 of its bytes (a str's UTF-8). In C (topology/_routing.c) where built.
partition_for = native.partition_for if native is not None else _partition_for

#: ``{partition: keys}`` for a list of keys, each partition's keys in their
#: order, partitions in order of first appearance: where a sender's estimate
#: goes to each of its friends.
by_partition = native.by_partition if native is not None else _by_partition
