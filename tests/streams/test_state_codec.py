"""Table values: a user's state survives encoding exactly, in version 2 and from version 1."""

from __future__ import annotations

import io

import pytest
from fastavro import schemaless_writer

from schemas import codec
from streams import state_codec
from streams.state import FriendEntry, UserState


def _state(**changes) -> UserState:
    values = dict(
        own=12.5,
        own_by_rule={"purchase:books": 10.0, "post:quality": 2.5},
        published=-0.1,
        version=7,
        friends={
            "ann": FriendEntry(weight=1.0, estimate=20.0, has_estimate=True, version=3, link_version=1),
            "bob ü": FriendEntry(weight=2.5, link_version=2),  # linked, estimate on its way
            "cy": FriendEntry(weight=0.0, estimate=-99.125, has_estimate=True, version=300, link_version=4),  # former
        },
        recent_events={"e1": 1_700_000_000_000, "e2": 1_700_000_000_001},
        history=[(1_700_000_000_000, 1.5), (1_700_000_000_500, -0.1)],
        source_offsets={"purchases": 12, "friend-updates": 70_000},
        updated_ts=1_700_000_000_900,
    )
    values.update(changes)
    return UserState(**values)


@pytest.mark.parametrize(
    "state",
    [
        _state(),
        UserState(),
        _state(friends={"only": FriendEntry(weight=1.0)}, history=[]),
        # versions past each column width: uint8, uint16, uint32, int64
        _state(friends={f"f{i}": FriendEntry(weight=1.0, estimate=0.5, has_estimate=True, version=v, link_version=v)
                        for i, v in enumerate([255, 256, 65_536, 2**32, 2**40])}),  # fmt: skip
    ],
)
def test_a_state_comes_back_exactly(state):
    assert state_codec.decode_user(state_codec.encode_user(state)) == state


def test_a_state_written_by_version_1_is_read(tmp_path):
    state = _state()
    record = {
        "own": state.own, "own_by_rule": state.own_by_rule, "published": state.published, "version": state.version,
        "friends": {
            friend: {"weight": e.weight, "estimate": e.estimate, "has_estimate": e.has_estimate, "version": e.version,
                     "link_version": e.link_version}
            for friend, e in state.friends.items()
        },
        "recent_events": state.recent_events, "history": [{"ts": ts, "raw": raw} for ts, raw in state.history],
        "source_offsets": state.source_offsets, "updated_ts": state.updated_ts,
    }  # fmt: skip
    version_1 = 7
    name, schema = codec._BY_ID[version_1]
    assert name == "user_state"
    out = io.BytesIO()
    out.write(codec._HEADER.pack(codec.MAGIC, version_1))
    schemaless_writer(out, schema, record)
    assert state_codec.decode_user(out.getvalue()) == state
    assert codec.schema_id("user_state") != version_1  # and what is written now is version 2


def test_columns_that_do_not_fit_their_field_are_an_error_not_a_wrong_state():
    good = state_codec.encode_user(_state())
    _, record = codec.decode(good, "user_state")
    columns = record["friend_columns"]
    typecode_at = 17 * len(record["friend_ids"].split("\x00"))  # after weights, estimates, flags
    assert columns[typecode_at : typecode_at + 1] in (b"B", b"H", b"I", b"q")
    for columns in (columns[:-1], columns + b"\x00", columns[:typecode_at] + b"Z" + columns[typecode_at + 1 :]):
        broken = codec.encode("user_state", {**record, "friend_columns": columns})
        with pytest.raises(ValueError):
            state_codec.decode_user(broken)
