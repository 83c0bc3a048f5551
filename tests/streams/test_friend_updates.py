"""Friend-update messages: every update comes back exactly, from version 2 and from version 1."""

from __future__ import annotations

import io

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec
from streams import batch as core
from streams import friend_updates
from streams.friend_updates import ESTIMATE, LINK, Outbox
from streams.rules import load_rules
from topology.routing import partition_for

UPDATES = [
    (ESTIMATE, "bob", "ann", 1.5, 7, 1_700_000_000_000),
    (LINK, "bob ü", "cy", 2.0, 1, 1_700_000_000_001),
    (LINK, "dee", "ann", 0.0, 3, 5),  # a removal
    (ESTIMATE, "eve", "ann", -0.125, 2**40, 6),  # a version past uint32
]


def _outbox(updates) -> Outbox:
    outbox = Outbox()
    for update in updates:
        outbox.add(*update)
    return outbox


def test_updates_come_back_exactly_in_order():
    assert list(friend_updates.decode(_outbox(UPDATES).encode(3))) == UPDATES


def test_a_slice_of_the_outbox_is_one_message():
    outbox = _outbox(UPDATES)
    assert list(friend_updates.decode(outbox.encode(3, 1, 3))) == UPDATES[1:3]
    assert list(friend_updates.decode(Outbox().encode(3))) == []


def test_a_message_written_by_version_1_is_read():
    record = {
        "partition": 3,
        "updates": [
            {"kind": "ESTIMATE" if kind == ESTIMATE else "LINK", "receiver": receiver, "sender": sender,
             "estimate": value if kind == ESTIMATE else 0.0, "weight": value if kind == LINK else 0.0,
             "version": version, "origin_ts": origin_ts}
            for kind, receiver, sender, value, version, origin_ts in UPDATES
        ],
    }  # fmt: skip
    version_1 = 4
    name, schema = codec._BY_ID[version_1]
    assert name == "friend_update_batch" and codec.schema_id(name) != version_1
    out = io.BytesIO()
    out.write(codec._HEADER.pack(codec.MAGIC, version_1))
    schemaless_writer(out, schema, record)
    assert list(friend_updates.decode(out.getvalue())) == UPDATES


def test_packed_updates_that_do_not_fit_are_not_decodable():
    good = _outbox(UPDATES).encode(3)
    _, record = codec.decode(good, "friend_update_batch")
    broken = [
        {"update_columns": record["update_columns"][:-1]},
        {"update_columns": b"\x07" + record["update_columns"][1:]},  # a kind that does not exist
        {"senders": "ann"},  # fewer senders than receivers
    ]
    for change in broken:
        with pytest.raises(codec.DecodeError) as raised:
            friend_updates.decode(codec.encode("friend_update_batch", {**record, **change}))
        assert raised.value.reason == "not_decodable"


@settings(max_examples=200, deadline=None)
@given(
    estimates=st.lists(
        st.tuples(st.lists(st.sampled_from([f"r{i}" for i in range(30)]), max_size=40), st.sampled_from(["a", "b"]), st.floats(-9, 9), st.integers(0, 9)),
        max_size=8,
    ),
    partitions=st.integers(1, 5),
)
def test_an_estimate_for_many_receivers_is_sent_as_one_update_per_receiver_in_order(estimates, partitions):
    # the reference: each receiver's update added alone, in the order given
    context = core.Context(rules=load_rules(), partitions=partitions)
    expected: dict[int, Outbox] = {}
    for receivers, sender, value, version in estimates:
        for receiver in receivers:
            expected.setdefault(partition_for(receiver, partitions), Outbox()).add(ESTIMATE, receiver, sender, value, version, 5)
    outs = [core.EstimateOut(receivers, sender, value, version, 5) for receivers, sender, value, version in estimates]
    sent = {send.partition: send.value for send in core.friend_update_sends(context, outs, ())}
    assert sent == {partition: outbox.encode(partition) for partition, outbox in expected.items()}
