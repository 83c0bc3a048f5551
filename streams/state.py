"""Bytes <-> state objects for the Faust tables (Avro, schemas/user_state.avsc).

The tables store raw bytes so that the changelog carries the same compact,
versioned Avro encoding as every other topic and stays readable by standard
tooling.
"""

from __future__ import annotations

from schemas import codec
from streams.scoring import FriendEntry, PairState, UserState


def encode_user(state: UserState) -> bytes:
    return codec.encode(
        "user_state",
        {
            "own": state.own,
            "own_by_rule": state.own_by_rule,
            "published": state.published,
            "version": state.version,
            "friends": {
                friend: {
                    "weight": entry.weight,
                    "estimate": entry.estimate,
                    "has_estimate": entry.has_estimate,
                    "version": entry.version,
                    "link_version": entry.link_version,
                }
                for friend, entry in state.friends.items()
            },
            "recent_events": state.recent_events,
            "history": [{"ts": ts, "raw": raw} for ts, raw in state.history],
            "source_offsets": state.source_offsets,
            "updated_ts": state.updated_ts,
        },
    )


def decode_user(data: bytes) -> UserState:
    _, record = codec.decode(data, "user_state")
    return UserState(
        own=record["own"],
        own_by_rule=dict(record["own_by_rule"]),
        published=record["published"],
        version=record["version"],
        friends={
            friend: FriendEntry(
                weight=entry["weight"],
                estimate=entry["estimate"],
                has_estimate=entry["has_estimate"],
                version=entry["version"],
                link_version=entry["link_version"],
            )
            for friend, entry in record["friends"].items()
        },
        recent_events=dict(record["recent_events"]),
        history=[(point["ts"], point["raw"]) for point in record["history"]],
        source_offsets=dict(record["source_offsets"]),
        updated_ts=_millis(record["updated_ts"]),
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
    )


def _millis(value) -> int:
    """fastavro returns datetimes for timestamp-millis fields; we keep ints."""
    if isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)
