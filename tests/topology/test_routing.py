"""Routing picks the partition Kafka's default partitioner picks (murmur2), in C or in Python.

aiokafka's ``murmur2`` (a port of Java's ``Utils.murmur2``) is the reference:
the C partitioner (topology/_routing.c) must agree with it on any key, and
``by_partition`` must group keys as routing each key alone would.
"""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2
from hypothesis import given
from hypothesis import strategies as st

from topology import routing

native = routing.native

keys = st.text(max_size=40) | st.binary(max_size=40)
partition_counts = st.integers(1, 300)


def reference(key: str | bytes, partitions: int) -> int:
    return (murmur2(key.encode() if isinstance(key, str) else key) & 0x7FFFFFFF) % partitions


def test_the_c_partitioner_is_built_and_used():
    # Without it the worker runs about a tenth slower; here that fails, so CI sees it.
    assert native is not None, "topology._routing is not built: run `make install` (needs a C compiler)"
    assert routing.partition_for is native.partition_for
    assert routing.by_partition is native.by_partition


def test_known_values():
    # Java's Utils.murmur2 (the partitioner's hash) of these keys; tested against aiokafka too.
    assert [murmur2(key) for key in (b"", b"a", b"ab", b"abc", b"abcd", b"abcde")] == [
        native.murmur2(key) for key in (b"", b"a", b"ab", b"abc", b"abcd", b"abcde")
    ]
    assert routing.partition_for("u000001", 8) == reference("u000001", 8)


@given(keys, partition_counts)
def test_one_key_as_kafka_routes_it(key, partitions):
    assert native.murmur2(key) == murmur2(key.encode() if isinstance(key, str) else key)
    assert native.partition_for(key, partitions) == reference(key, partitions)
    assert routing._partition_for(key, partitions) == reference(key, partitions)


@given(st.lists(st.text(max_size=12), max_size=60), partition_counts)
def test_by_partition_groups_as_routing_each_key(keys, partitions):
    expected: dict[int, list[str]] = {}
    for key in keys:
        expected.setdefault(reference(key, partitions), []).append(key)
    for grouped in (native.by_partition(keys, partitions), routing._by_partition(keys, partitions)):
        assert grouped == expected
        assert list(grouped) == list(expected)  # partitions in order of first appearance


def test_what_cannot_be_routed_raises():
    lone_surrogate = "\ud800"
    with pytest.raises(UnicodeEncodeError):
        lone_surrogate.encode()
    with pytest.raises(UnicodeEncodeError):
        native.partition_for(lone_surrogate, 4)
    with pytest.raises(UnicodeEncodeError):
        native.by_partition(["a", lone_surrogate], 4)
    with pytest.raises(TypeError):
        native.partition_for(1, 4)
    with pytest.raises(ValueError):
        native.partition_for("a", 0)
    with pytest.raises(TypeError):
        native.by_partition(("a",), 4)
