"""Where an event enters: the three input events and the rules they must follow.

Every input — a JSON line given to `standing produce`, or Avro bytes read from
a topic by the worker — passes through ``validate`` here, so the producer's
edge and the worker reject exactly the same things with the same reason codes
(spec section 1). A rejected input raises ``Rejected(reason, detail)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from schemas import codec
from topology import topics
from topology.routing import pair_key

MAX_ID_LENGTH = 256

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
_ACTIONS = ("add", "remove")


# --- field checks ------------------------------------------------------------------


def _field(obj: dict, name: str, kind: str):
    if name not in obj or obj[name] is None:
        raise Rejected("missing_field", f"a {kind} needs the field {name!r}")
    return obj[name]


def _id(obj: dict, name: str, kind: str, *, optional: bool = False) -> str | None:
    if optional and obj.get(name) is None:
        return None
    value = _field(obj, name, kind)
    if not isinstance(value, str):
        raise Rejected("bad_field_type", f"{name} must be a string, not {type(value).__name__}")
    if value == "":
        raise Rejected("empty_id", f"{name} is empty; every id must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise Rejected("id_too_long", f"{name} has {len(value)} characters; ids have at most {MAX_ID_LENGTH}")
    if not value.isprintable():
        raise Rejected("bad_id", f"{name} contains control characters; ids must be printable text")
    return value


def _timestamp(obj: dict, kind: str) -> int:
    value = _field(obj, "ts", kind)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Rejected("bad_timestamp", f"ts is {value!r}; it must be whole milliseconds since the Unix epoch (>= 0)")
    return value


def _number(obj: dict, name: str, kind: str, reason: str, rule: str, default: float | None = None) -> float:
    if default is not None and obj.get(name) is None:
        return default
    value = _field(obj, name, kind)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(reason, f"{name} is {value!r}; {rule}")
    value = float(value)
    if not math.isfinite(value):
        raise Rejected(reason, f"{name} is {value!r}; {rule}")
    return value


def _string(obj: dict, name: str, kind: str) -> str:
    value = _field(obj, name, kind)
    if not isinstance(value, str):
        raise Rejected("bad_field_type", f"{name} must be a string, not {type(value).__name__}")
    return value


# --- validation -------------------------------------------------------------------------


def validate(event_type: str, obj: dict) -> Event:
    """An Event from a dict of fields (JSON or Avro), or Rejected."""
    if event_type == "purchase":
        amount = _number(obj, "amount", "purchase", "bad_amount", "purchases need a finite amount >= 0")
        if amount < 0:
            raise Rejected("bad_amount", f"amount is {amount!r}; purchases need a finite amount >= 0")
        return Purchase(
            event_id=_id(obj, "event_id", "purchase"),
            ts=_timestamp(obj, "purchase"),
            user_id=_id(obj, "user_id", "purchase"),
            category=_string(obj, "category", "purchase"),
            amount=amount,
            merchant_id=_id(obj, "merchant_id", "purchase", optional=True),
        )
    if event_type == "post":
        labels = obj.get("labels", [])
        if labels is None:
            labels = []
        if not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) for label in labels):
            raise Rejected("bad_field_type", "labels must be a list of strings (it may be empty)")
        return Post(
            event_id=_id(obj, "event_id", "post"),
            ts=_timestamp(obj, "post"),
            user_id=_id(obj, "user_id", "post"),
            post_id=_id(obj, "post_id", "post"),
            labels=tuple(labels),
        )
    if event_type == "friendship":
        event_id = _id(obj, "event_id", "friendship")
        ts = _timestamp(obj, "friendship")
        user_a = _id(obj, "user_a", "friendship")
        user_b = _id(obj, "user_b", "friendship")
        if user_a == user_b:
            raise Rejected("self_friendship", f"user_a and user_b are both {user_a!r}; a friendship needs two distinct users")
        action = _string(obj, "action", "friendship")
        if action not in _ACTIONS:
            raise Rejected("unknown_action", f"action is {action!r}; it must be 'add' or 'remove'")
        rule = "a friendship weight must be a finite number > 0"
        weight = _number(obj, "weight", "friendship", "bad_weight", rule, default=1.0)
        if weight <= 0:
            raise Rejected("bad_weight", f"weight is {weight!r}; {rule}")
        return Friendship(event_id, ts, user_a, user_b, action, weight)
    raise Rejected("unknown_type", f"type is {event_type!r}; it must be 'purchase', 'post' or 'friendship'")


def from_dict(obj: dict) -> Event:
    """The JSON Lines form: the fields plus ``"type"``."""
    if not isinstance(obj, dict):
        raise Rejected("invalid_json", f"a line must hold a JSON object, not {type(obj).__name__}")
    event_type = obj.get("type")
    if event_type is None:
        raise Rejected("missing_field", "every event needs a 'type': 'purchase', 'post' or 'friendship'")
    if not isinstance(event_type, str):
        raise Rejected("unknown_type", f"type is {event_type!r}; it must be 'purchase', 'post' or 'friendship'")
    return validate(event_type, obj)


def from_json_line(line: str) -> Event:
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise Rejected("invalid_json", f"not valid JSON ({error}); each line must be one JSON object") from None
    return from_dict(obj)


def from_record(schema_name: str, record: dict) -> Event:
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
    name, record = to_record(event)
    return {"type": name, **record}


def to_record(event: Event) -> tuple[str, dict]:
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
