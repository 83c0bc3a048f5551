"""Where an event enters: the three input events and the rules they must follow.

Every input — a JSON line given to `standing produce`, or Avro bytes read from
a topic by the worker — passes through ``validate`` here, so the producer's
edge and the worker reject exactly the same things with the same reason codes
(spec section 1). A rejected input raises ``Rejected(reason, detail)``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from schemas import codec
from topology import topics
from topology.routing import pair_key

MAX_ID_LENGTH = 256
#: Avro's long is signed 64-bit; a larger ts could be validated but never encoded.
MAX_TIMESTAMP = 2**63 - 1

#: Every reason code a rejection can carry (metric labels, replay summaries).
REASONS = (
    "invalid_json",
    "not_decodable",
    "unknown_schema_id",
    "wrong_schema",
    "unknown_type",
    "missing_field",
    "bad_field_type",
    "empty_id",
    "id_too_long",
    "bad_id",
    "bad_timestamp",
    "bad_amount",
    "self_friendship",
    "unknown_action",
    "bad_weight",
    "wrong_key",
)


class Rejected(Exception):
    """An input that breaks the rules: ``reason`` is a code from REASONS (a metric
    label), ``detail`` names the field and says what to do about it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Purchase:
    event_id: str
    ts: int
    user_id: str
    category: str
    amount: float
    merchant_id: str | None = None


@dataclass(frozen=True, slots=True)
class Post:
    event_id: str
    ts: int
    user_id: str
    post_id: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Friendship:
    event_id: str
    ts: int
    user_a: str
    user_b: str
    action: str
    weight: float = 1.0


Event = Purchase | Post | Friendship

_SCHEMA_OF_TYPE = {"purchase": "purchase", "post": "post", "friendship": "friendship"}
_TYPE_OF_TOPIC = {topics.PURCHASES: "purchase", topics.POSTS: "post", topics.FRIENDSHIPS: "friendship"}
_TOPIC_OF_CLASS = {Purchase: topics.PURCHASES, Post: topics.POSTS, Friendship: topics.FRIENDSHIPS}


# --- field checks ------------------------------------------------------------------

# C0 and C1 control characters are what an id may not contain (the pair key's
# separator is one of them). Lone surrogates (from JSON "\ud800" escapes) are
# not text at all: they cannot be encoded as UTF-8, so they are refused too.
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHOWN_CHARS = 60


def _shown(value: object) -> str:
    """repr of a bad value, cut short: details go to stderr and the dead-letter topic."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


def _field(obj: dict, name: str, kind: str):
    value = obj.get(name)
    if value is None:
        raise Rejected("missing_field", f"a {kind} needs the field {name!r}; add it")
    return value


def _id(obj: dict, name: str, kind: str) -> str:
    value = _field(obj, name, kind)
    if value.__class__ is not str:
        raise Rejected("bad_field_type", f"{name} is {_shown(value)}; ids must be strings (quote it)")
    if not value:
        raise Rejected("empty_id", f"{name} is empty; every id must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise Rejected("id_too_long", f"{name} has {len(value)} characters; ids have at most {MAX_ID_LENGTH}")
    clean = value.isprintable() if value.isascii() else _CONTROL_OR_SURROGATE.search(value) is None
    if not clean:
        raise Rejected(
            "bad_id", f"{name} is {_shown(value)}; ids may not contain control characters or lone surrogates"
        )
    return value


def _optional_id(obj: dict, name: str, kind: str) -> str | None:
    return None if obj.get(name) is None else _id(obj, name, kind)


def _text(value: object, name: str) -> str:
    """A string that can be encoded (any content, but valid Unicode)."""
    if value.__class__ is not str:
        raise Rejected("bad_field_type", f"{name} is {_shown(value)}; it must be a string")
    if not value.isascii() and _SURROGATE.search(value) is not None:
        raise Rejected("bad_field_type", f"{name} is {_shown(value)}; it contains a lone surrogate, send valid UTF-8 text")
    return value


def _timestamp(obj: dict, kind: str) -> int:
    value = _field(obj, "ts", kind)
    if value.__class__ is not int or not 0 <= value <= MAX_TIMESTAMP:
        raise Rejected(
            "bad_timestamp",
            f"ts is {_shown(value)}; it must be a whole number of milliseconds since the Unix epoch, >= 0",
        )
    return value


def _number(obj: dict, name: str, kind: str, reason: str, rule: str) -> float:
    """A finite float from an int or float (booleans are not numbers)."""
    value = _field(obj, name, kind)
    cls = value.__class__
    if cls is float:
        number = value
    elif cls is int:
        try:
            number = float(value)
        except OverflowError:
            raise Rejected(reason, f"{name} is a {len(str(value))}-digit number; {rule}") from None
    else:
        raise Rejected(reason, f"{name} is {_shown(value)}; {rule}")
    if not math.isfinite(number):
        raise Rejected(reason, f"{name} is {number!r}; {rule}")
    return number


# --- validation -------------------------------------------------------------------------


_AMOUNT_RULE = "purchases need a finite amount >= 0"
_WEIGHT_RULE = "a friendship weight must be a finite number > 0 (omit it for 1.0)"


def validate(event_type: str, obj: dict) -> Event:
    """An Event from a dict of fields (JSON or Avro), or Rejected.

    Fields are checked in schema order, so the first problem of a record is
    the one reported.
    """
    if event_type == "purchase":
        event_id = _id(obj, "event_id", "purchase")
        ts = _timestamp(obj, "purchase")
        user_id = _id(obj, "user_id", "purchase")
        category = _text(_field(obj, "category", "purchase"), "category")
        amount = _number(obj, "amount", "purchase", "bad_amount", _AMOUNT_RULE)
        if amount < 0:
            raise Rejected("bad_amount", f"amount is {amount!r}; {_AMOUNT_RULE}")
        return Purchase(event_id, ts, user_id, category, amount, _optional_id(obj, "merchant_id", "purchase"))
    if event_type == "post":
        event_id = _id(obj, "event_id", "post")
        ts = _timestamp(obj, "post")
        user_id = _id(obj, "user_id", "post")
        post_id = _id(obj, "post_id", "post")
        labels = obj.get("labels")
        if labels is None:
            return Post(event_id, ts, user_id, post_id, ())
        if labels.__class__ is not list and labels.__class__ is not tuple:
            raise Rejected("bad_field_type", f"labels is {_shown(labels)}; it must be a list of strings (it may be empty)")
        for label in labels:
            _text(label, "a label")
        return Post(event_id, ts, user_id, post_id, tuple(labels))
    if event_type == "friendship":
        event_id = _id(obj, "event_id", "friendship")
        ts = _timestamp(obj, "friendship")
        user_a = _id(obj, "user_a", "friendship")
        user_b = _id(obj, "user_b", "friendship")
        if user_a == user_b:
            raise Rejected(
                "self_friendship", f"user_a and user_b are both {_shown(user_a)}; a friendship needs two distinct users"
            )
        action = _field(obj, "action", "friendship")
        if action != "add" and action != "remove":
            reason = "unknown_action" if action.__class__ is str else "bad_field_type"
            raise Rejected(reason, f"action is {_shown(action)}; it must be 'add' or 'remove'")
        if obj.get("weight") is None:
            return Friendship(event_id, ts, user_a, user_b, action, 1.0)
        weight = _number(obj, "weight", "friendship", "bad_weight", _WEIGHT_RULE)
        if weight <= 0:
            raise Rejected("bad_weight", f"weight is {weight!r}; {_WEIGHT_RULE}")
        return Friendship(event_id, ts, user_a, user_b, action, weight)
    raise Rejected("unknown_type", f"type is {_shown(event_type)}; it must be 'purchase', 'post' or 'friendship'")


def from_dict(obj: dict) -> Event:
    """The JSON Lines form: the fields plus ``"type"``."""
    if not isinstance(obj, dict):
        raise Rejected("invalid_json", f"a line must hold a JSON object, not {type(obj).__name__}")
    event_type = obj.get("type")
    if event_type is None:
        raise Rejected("missing_field", "every event needs a 'type': 'purchase', 'post' or 'friendship'")
    if not isinstance(event_type, str):
        raise Rejected("unknown_type", f"type is {_shown(event_type)}; it must be 'purchase', 'post' or 'friendship'")
    return validate(event_type, obj)


def from_json_line(line: str) -> Event:
    """One line of a JSON Lines file (the format of produce, replay and reference)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as error:  # ValueError also covers ints past Python's digit limit
        raise Rejected("invalid_json", f"not valid JSON ({_cut(str(error))}); each line must be one JSON object") from None
    return from_dict(obj)


def _cut(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."


def from_record(schema_name: str, record: dict) -> Event:
    """An Avro-decoded record of schema ``purchase``, ``post`` or ``friendship``."""
    return validate(schema_name, record)


def from_bytes(topic: str, data: bytes) -> Event:
    """Decode a record read from an input topic and validate it."""
    event_type = _TYPE_OF_TOPIC.get(topic)
    if event_type is None:
        raise Rejected("unknown_type", f"topic {topic!r} is not an input topic")
    try:
        _, record = codec.decode(data, _SCHEMA_OF_TYPE[event_type])
    except codec.DecodeError as error:
        raise Rejected(error.reason, error.detail) from None
    return validate(event_type, record)


def to_json_dict(event: Event) -> dict:
    """The JSON Lines form, with ``"type"`` (what ``from_dict`` reads)."""
    name, record = to_record(event)
    return {"type": name, **record}


def to_record(event: Event) -> tuple[str, dict]:
    """(schema name, Avro record) of an event."""
    if isinstance(event, Purchase):
        return "purchase", {
            "event_id": event.event_id,
            "ts": event.ts,
            "user_id": event.user_id,
            "category": event.category,
            "amount": event.amount,
            "merchant_id": event.merchant_id,
        }
    if isinstance(event, Post):
        return "post", {
            "event_id": event.event_id,
            "ts": event.ts,
            "user_id": event.user_id,
            "post_id": event.post_id,
            "labels": list(event.labels),
        }
    return "friendship", {
        "event_id": event.event_id,
        "ts": event.ts,
        "user_a": event.user_a,
        "user_b": event.user_b,
        "action": event.action,
        "weight": event.weight,
    }


def to_bytes(event: Event) -> bytes:
    return codec.encode(*to_record(event))


def topic_for(event: Event) -> str:
    return _TOPIC_OF_CLASS[type(event)]


def key_for(event: Event) -> str:
    """The Kafka key: user_id, or the unordered pair for friendships."""
    if isinstance(event, Friendship):
        return pair_key(event.user_a, event.user_b)
    return event.user_id


def subject(event: Event) -> str:
    """What de-duplication is scoped to (the same as the key)."""
    return key_for(event)
