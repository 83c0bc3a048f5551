"""Messages of the friend-updates topic: every update one batch sends to one partition.

Version 2 of ``schemas/friend_update_batch.avsc`` packs the updates into
columns (``schemas/columns.py``); a busy batch sends tens of thousands of
them and, as an array of records, encoding and decoding them cost about
4 us per update. Messages written by version 1 are still read.
"""

from __future__ import annotations

from schemas import codec
from schemas.columns import Columns, column, int_column

#: Kinds of update: a friend's estimate; a friendship's weight; the stream time
#: another partition has reached (``value``: its time in ms; no receiver or sender).
ESTIMATE, LINK, TICK = 0, 1, 2

#: origin_ts of an update whose originating event time is not known: links
#: re-sent after a crash (a pair state keeps no event time)
UNKNOWN_ORIGIN = 0


def earliest_origin(a: int, b: int) -> int:
    """The older of two origin times, where an unknown one (0) is not older than a known one.

    A change that coalesces several updates is as old as the oldest event it
    reflects; an update re-sent after a crash must not make it look 56 years old.
    """
    if a == UNKNOWN_ORIGIN or b == UNKNOWN_ORIGIN:
        return a or b
    return a if a < b else b


class Outbox:
    """The updates for one receiving partition, in the order decided.

    An ESTIMATE's ``origin_ts`` is the time its value is valid at (the
    sender's ``as_of``: the receiver makes it decay from there); a LINK's is
    the time of the friendship event that set the weight.
    """

    __slots__ = ("kinds", "receivers", "senders", "values", "versions", "origin_ts")

    def __init__(self) -> None:
        self.kinds: list[int] = []
        self.receivers: list[str] = []
        self.senders: list[str] = []
        #: the estimate (ESTIMATE) or the friendship's weight (LINK)
        self.values: list[float] = []
        self.versions: list[int] = []
        self.origin_ts: list[int] = []

    def add(self, kind: int, receiver: str, sender: str, value: float, version: int, origin_ts: int) -> None:
        self.kinds.append(kind)
        self.receivers.append(receiver)
        self.senders.append(sender)
        self.values.append(value)
        self.versions.append(version)
        self.origin_ts.append(origin_ts)

    def add_many(self, kind: int, receivers: list[str], sender: str, value: float, version: int, origin_ts: int) -> None:
        """``add`` for each of ``receivers``, in order: one sender's update to several receivers."""
        n = len(receivers)
        self.kinds.extend([kind] * n)
        self.receivers.extend(receivers)
        self.senders.extend([sender] * n)
        self.values.extend([value] * n)
        self.versions.extend([version] * n)
        self.origin_ts.extend([origin_ts] * n)

    def __len__(self) -> int:
        return len(self.kinds)

    def encode(self, partition: int, start: int = 0, stop: int | None = None) -> bytes:
        """The message carrying updates ``start:stop``."""
        part = slice(start, stop)
        return codec.encode(
            "friend_update_batch",
            {
                "partition": partition,
                "updates": [],  # version 1's array of records
                "receivers": "\x00".join(self.receivers[part]),
                "senders": "\x00".join(self.senders[part]),
                "update_columns": b"".join(
                    (
                        bytes(self.kinds[part]),
                        column("d", self.values[part]),
                        int_column(self.versions[part]),
                        column("q", self.origin_ts[part]),
                    )
                ),
            },
        )


def decode_record(data: bytes) -> tuple[list[tuple[int, str, str, float, int, int]], dict | None]:
    """(updates, rescore) of a friend-updates record: a batch of updates, or a rules change (``rescore``)."""
    name, record = codec.decode(data, ("friend_update_batch", "rescore"))
    if name == "rescore":
        return [], record
    return _updates(record), None


def decode(data: bytes) -> list[tuple[int, str, str, float, int, int]]:
    """(kind, receiver, sender, value, version, origin_ts) of each update, in order.

    Raises ``codec.DecodeError`` for anything that is not such a message.
    """
    _, record = codec.decode(data, "friend_update_batch")
    return _updates(record)


def _updates(record: dict) -> list[tuple[int, str, str, float, int, int]]:
    updates = [
        (
            LINK if update["kind"] == "LINK" else ESTIMATE,
            update["receiver"],
            update["sender"],
            update["weight"] if update["kind"] == "LINK" else update["estimate"],
            update["version"],
            update["origin_ts"],  # an int: schemas/codec.py reads timestamps as ms
        )
        for update in record["updates"]
    ]
    if record["receivers"]:
        receivers = record["receivers"].split("\x00")
        senders = record["senders"].split("\x00")
        n = len(receivers)
        try:
            if len(senders) != n:
                raise ValueError(f"{n} receivers but {len(senders)} senders")
            columns = Columns(record["update_columns"])
            kinds = columns.octets(n)
            values, versions, origin_ts = columns.floats(n), columns.ints(n), columns.ints(n, "q")
            columns.end()
            if any(kind > TICK for kind in kinds):
                raise ValueError("an update kind other than 0 (ESTIMATE), 1 (LINK) or 2 (TICK)")
        except ValueError as error:
            raise codec.DecodeError("not_decodable", f"packed friend updates do not fit: {error}") from None
        updates += zip(kinds, receivers, senders, values, versions, origin_ts)
    return updates
