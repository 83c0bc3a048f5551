"""Bytes <-> state objects for the Faust tables (Avro, schemas/user_state.avsc).

The tables store raw bytes so that the changelog carries the same compact,
versioned Avro encoding as every other topic and stays readable by standard
tooling. A user's friends and score history are Avro ``bytes`` of packed
columns (version 2 of the schema): as a map and an array of records, encoding
and decoding states took a fifth of the worker's time, and 82 us per state
became 34 us. States written by version 1 are still read.

``encode_user`` and ``decode_user`` go through ``streams/_state_codec.c``,
which writes the same bytes in C (about 45 us per read-modify-write of a
typical state became about 6 us); whatever it does not handle exactly (older
versions, bad bytes, unexpected types) it hands back to the Python codec here,
``encode_user_py`` and ``decode_user_py``, which stays the reference.

The same module holds ``Receiver``, the C path of friends' estimates and
links (``streams.batch.UserBatch.estimates`` and ``links``): a state read
from its bytes into arrays, updated and written back without building Python
objects per friend.
"""

from __future__ import annotations

import logging

from schemas import codec
from schemas.columns import Columns, column, int_column
from streams.state import FriendEntry, HeldEvent, PairState, UserExtra, UserState

log = logging.getLogger(__name__)

try:
    from streams import _state_codec as native
except ImportError as error:  # not built (big-endian host, or no C compiler at install)
    native = None
    log.warning("streams._state_codec is not built (%s): user states use the slower Python codec; "
                "reinstall with a C compiler (`make install`) to build it", error)
else:
    native.configure(UserState, FriendEntry, codec.schema_id("user_state"))


#: The first user_state id whose friend columns carry link_ts (version 3).
_LINK_TS_SINCE = 14


def encode_user(state: UserState) -> bytes:
    if isinstance(state.extra, UserExtra):
        state.extra = encode_extra(state.extra)
    if native is not None:
        data = native.encode_user(state)
        if data is not None:
            return data
    return encode_user_py(state)


def decode_user(data: bytes) -> UserState:
    if native is not None:
        state = native.decode_user(data)
        if state is not None:
            return state
    return decode_user_py(data)


def extra_of(state: UserState) -> UserExtra:
    """The held events and pending retractions of ``state``, decoded once (the state keeps them decoded)."""
    extra = state.extra
    if isinstance(extra, UserExtra):
        return extra
    decoded = decode_extra(extra)
    state.extra = decoded
    return decoded


def encode_extra(extra: UserExtra) -> bytes:
    if not extra.held and not extra.retractions and extra.named_ts < 0:
        return b""
    return codec.encode(
        "user_extra",
        {
            "held": [
                {
                    "event_id": e.event_id,
                    "type": e.type,
                    "ts": e.ts,
                    "pricing": e.pricing_json,
                    "points": e.points,
                    "retracted_by": e.retracted_by,
                    "retracted_ts": e.retracted_ts,
                }
                for e in extra.held
            ],
            "retractions": [{"retracts": k, "by": by, "ts": ts} for k, (by, ts) in extra.retractions.items()],
            "named_ts": extra.named_ts,
        },
    )


def decode_extra(data: bytes) -> UserExtra:
    if not data:
        return UserExtra()
    _, record = codec.decode(bytes(data), "user_extra")
    return UserExtra(
        held=[
            HeldEvent(e["event_id"], e["type"], e["ts"], e["pricing"], e["points"], e["retracted_by"], e["retracted_ts"])
            for e in record["held"]
        ],
        retractions={r["retracts"]: (r["by"], r["ts"]) for r in record["retractions"]},
        named_ts=record["named_ts"],
    )



def encode_user_py(state: UserState) -> bytes:
    friends = state.friends
    entries = friends.values()
    extra = state.extra if isinstance(state.extra, (bytes, bytearray)) else encode_extra(state.extra)
    return codec.encode(
        "user_state",
        {
            "own": state.own,
            "own_by_rule": state.own_by_rule,
            "published": state.published,
            "version": state.version,
            "friends": {},  # version 1's map of records: see friend_ids / friend_columns
            "friend_ids": "\x00".join(friends),
            "friend_columns": b"".join(
                (
                    column("d", [entry.weight for entry in entries]),
                    column("d", [entry.estimate for entry in entries]),
                    bytes([entry.has_estimate for entry in entries]),
                    int_column([entry.version for entry in entries]),
                    int_column([entry.link_version for entry in entries]),
                    int_column([entry.link_ts for entry in entries]),
                )
            ),
            "recent_events": state.recent_events,
            "history": [],  # version 1's array of records: see history_columns
            "history_columns": column("q", [ts for ts, _ in state.history]) + column("d", [raw for _, raw in state.history]),
            "source_offsets": state.source_offsets,
            "updated_ts": state.updated_ts,
            "exists": state.exists,
            "erased_ts": state.erased_ts,
            "as_of": state.as_of,
            "extra": bytes(extra),
        },
    )


def decode_user_py(data: bytes) -> UserState:
    _, schema, record = codec.decode_with_id(data, "user_state")
    friends = {
        friend: FriendEntry(
            weight=entry["weight"],
            estimate=entry["estimate"],
            has_estimate=entry["has_estimate"],
            version=entry["version"],
            link_version=entry["link_version"],
        )
        for friend, entry in record["friends"].items()
    }
    if record["friend_ids"]:
        ids = record["friend_ids"].split("\x00")
        columns = Columns(record["friend_columns"])
        n = len(ids)
        weights, estimates, has_estimate = columns.floats(n), columns.floats(n), columns.flags(n)
        versions, link_versions = columns.ints(n), columns.ints(n)
        link_ts = columns.ints(n) if schema >= _LINK_TS_SINCE else [0] * n
        columns.end()
        friends.update(zip(ids, map(FriendEntry, weights, estimates, has_estimate, versions, link_versions, link_ts)))
    history = [(point["ts"], point["raw"]) for point in record["history"]]
    if record["history_columns"]:
        columns = Columns(record["history_columns"])
        n = len(record["history_columns"]) // 16
        history += zip(columns.ints(n, "q"), columns.floats(n))
        columns.end()
    return UserState(
        own=record["own"],
        own_by_rule=dict(record["own_by_rule"]),
        published=record["published"],
        version=record["version"],
        friends=friends,
        recent_events=dict(record["recent_events"]),
        history=history,
        source_offsets=dict(record["source_offsets"]),
        updated_ts=record["updated_ts"],
        exists=record["exists"],
        erased_ts=record["erased_ts"],
        as_of=record["as_of"],
        # Avro's default for bytes is a string of code points: an older record reads as "".
        extra=record["extra"].encode("latin-1") if isinstance(record["extra"], str) else record["extra"],
    )


def encode_pair(state: PairState) -> bytes:
    return codec.encode(
        "pair_state",
        {
            "user_a": state.user_a,
            "user_b": state.user_b,
            "weight": state.weight,
            "version": state.version,
            "recent_events": state.recent_events,
            "source_offset": state.source_offset,
            "weight_ts": state.weight_ts,
            "events": [{"ts": ts, "weight": weight} for ts, weight in state.events],
        },
    )


def decode_pair(data: bytes) -> PairState:
    _, record = codec.decode(data, "pair_state")
    return PairState(
        user_a=record["user_a"],
        user_b=record["user_b"],
        weight=record["weight"],
        version=record["version"],
        recent_events=dict(record["recent_events"]),
        source_offset=record["source_offset"],
        weight_ts=record["weight_ts"],
        events=[(event["ts"], event["weight"]) for event in record["events"]],
    )
