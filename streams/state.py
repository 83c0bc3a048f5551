"""Bytes <-> state objects for the Faust tables (Avro, schemas/user_state.avsc).

The tables store raw bytes so that the changelog carries the same compact,
versioned Avro encoding as every other topic and stays readable by standard
tooling. A user's friends and score history are Avro ``bytes`` of packed
columns (version 2 of the schema): as a map and an array of records, encoding
and decoding states took a fifth of the worker's time, and 82 us per state
became 25 us. States written by version 1 are still read.
"""

from __future__ import annotations

import sys
from array import array

from schemas import codec
from streams.scoring import FriendEntry, PairState, UserState


def encode_user(state: UserState) -> bytes:
    friends = state.friends
    entries = friends.values()
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
                    _column("d", [entry.weight for entry in entries]),
                    _column("d", [entry.estimate for entry in entries]),
                    bytes([entry.has_estimate for entry in entries]),
                    _int_column([entry.version for entry in entries]),
                    _int_column([entry.link_version for entry in entries]),
                )
            ),
            "recent_events": state.recent_events,
            "history": [],  # version 1's array of records: see history_columns
            "history_columns": _column("q", [ts for ts, _ in state.history]) + _column("d", [raw for _, raw in state.history]),
            "source_offsets": state.source_offsets,
            "updated_ts": state.updated_ts,
        },
    )


def decode_user(data: bytes) -> UserState:
    _, record = codec.decode(data, "user_state")
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
        columns = _Columns(record["friend_columns"])
        n = len(ids)
        weights, estimates, has_estimate = columns.floats(n), columns.floats(n), columns.flags(n)
        versions, link_versions = columns.ints(n), columns.ints(n)
        columns.end()
        friends.update(zip(ids, map(FriendEntry, weights, estimates, has_estimate, versions, link_versions)))
    history = [(_millis(point["ts"]), point["raw"]) for point in record["history"]]
    if record["history_columns"]:
        columns = _Columns(record["history_columns"])
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
        updated_ts=_millis(record["updated_ts"]),
    )


# --- columns: arrays of numbers, little-endian (schemas/user_state.avsc) -----

_LITTLE = sys.byteorder == "little"
#: typecode -> item size; "I" is 4 bytes wherever this runs (checked at import)
_INT_CODES = {"B": 1, "H": 2, "I": 4, "q": 8}
assert all(array(code).itemsize == size for code, size in _INT_CODES.items())


def _column(code: str, values: list) -> bytes:
    column = array(code, values)
    if not _LITTLE:
        column.byteswap()
    return column.tobytes()


def _int_column(values: list[int]) -> bytes:
    """The narrowest of uint8 / uint16 / uint32 / int64 that holds every value, after its typecode."""
    low, high = (min(values), max(values)) if values else (0, 0)
    if low >= 0 and high < 1 << 32:
        code = "B" if high < 1 << 8 else "H" if high < 1 << 16 else "I"
    else:
        code = "q"
    return code.encode() + _column(code, values)


class _Columns:
    """Reads the columns of a packed field in order; ValueError if they do not fit it."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def _take(self, size: int) -> bytes:
        end = self._at + size
        if end > len(self._data):
            raise ValueError(f"packed column overruns its field ({end} > {len(self._data)} bytes)")
        chunk = self._data[self._at : end]
        self._at = end
        return chunk

    def _array(self, code: str, n: int) -> array:
        column = array(code)
        column.frombytes(self._take(n * column.itemsize))
        if not _LITTLE:
            column.byteswap()
        return column

    def floats(self, n: int) -> array:
        return self._array("d", n)

    def flags(self, n: int) -> list[bool]:
        return [flag == 1 for flag in self._take(n)]

    def ints(self, n: int, code: str | None = None) -> array:
        if code is None:
            code = self._take(1).decode("ascii", "replace")
            if code not in _INT_CODES:
                raise ValueError(f"unknown integer column typecode {code!r}")
        return self._array(code, n)

    def end(self) -> None:
        if self._at != len(self._data):
            raise ValueError(f"{len(self._data) - self._at} bytes left over after the packed columns")


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
