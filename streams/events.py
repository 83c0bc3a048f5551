"""Where an event enters: one declaration per event type, and the rules every input must follow.

Each input event type is declared once (``EventType``): its name (the JSON
``"type"`` and the Avro schema), its topic, its key, how its fields are
validated, which lane applies it (the user's partition or the pair's), what
effect it has and, for events that earn points, how the rules price it.
Topics, the worker's subscriptions, decoding, the reference's dispatch,
metrics labels and the commands all derive from ``CATALOG``; adding an event
type is its ``.avsc``, its declaration here, its effect (``streams.batch``) if
it needs a new one, and its tests.

Every input -- a JSON line given to `standing produce`, or Avro bytes read
from a topic by the worker -- passes through the same validation, so the
producer's edge and the worker reject exactly the same things with the same
reason codes (spec section 1). A rejected input raises ``Rejected(reason, detail)``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Mapping

from schemas import codec
from streams.rules import Rules
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
    # not a rule of the events: a record the worker failed to process on its own, repeatedly
    "processing_failed",
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


@dataclass(frozen=True, slots=True)
class Retraction:
    event_id: str
    ts: int
    user_id: str
    retracts: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Erasure:
    event_id: str
    ts: int
    user_id: str


Event = Purchase | Post | Friendship | Retraction | Erasure


# --- field checks (for every event type's validate) -------------------------------

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


def required(obj: Mapping[str, Any], name: str, kind: str):
    value = obj.get(name)
    if value is None:
        raise Rejected("missing_field", f"a {kind} needs the field {name!r}; add it")
    return value


def id_field(obj: Mapping[str, Any], name: str, kind: str) -> str:
    value = required(obj, name, kind)
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


def optional_id_field(obj: Mapping[str, Any], name: str, kind: str) -> str | None:
    return None if obj.get(name) is None else id_field(obj, name, kind)


def text_field(value: object, name: str) -> str:
    """A string that can be encoded (any content, but valid Unicode)."""
    if value.__class__ is not str:
        raise Rejected("bad_field_type", f"{name} is {_shown(value)}; it must be a string")
    if not value.isascii() and _SURROGATE.search(value) is not None:
        raise Rejected("bad_field_type", f"{name} is {_shown(value)}; it contains a lone surrogate, send valid UTF-8 text")
    return value


def timestamp_field(obj: Mapping[str, Any], kind: str) -> int:
    value = required(obj, "ts", kind)
    if value.__class__ is not int or not 0 <= value <= MAX_TIMESTAMP:
        raise Rejected(
            "bad_timestamp",
            f"ts is {_shown(value)}; it must be a whole number of milliseconds since the Unix epoch, >= 0",
        )
    return value


def number_field(obj: Mapping[str, Any], name: str, kind: str, reason: str, rule: str) -> float:
    """A finite float from an int or float (booleans are not numbers)."""
    value = required(obj, name, kind)
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


# --- the event types ------------------------------------------------------------

#: Lanes: whose partition applies an event. USER events are keyed by ``user_id``
#: and applied with the friend updates of that user's partition; PAIR events are
#: keyed by the unordered pair and applied in order on the pair's partition.
USER, PAIR = "user", "pair"

#: Effects an event can have (``streams.batch`` applies each; ``standing reference`` solves each).
POINTS, FRIENDSHIP, RETRACTION, ERASURE = "points", "friendship", "retraction", "erasure"


@dataclass(frozen=True)
class EventType:
    """One kind of input event: everything topics, decoding, dispatch and metrics derive from."""

    #: the JSON Lines ``"type"``, the Avro schema's name in schemas/registry.json, the metric label
    name: str
    #: the input topic producers publish it to
    topic: str
    #: the class of a validated event (a frozen dataclass whose fields are the schema's)
    event: type
    #: fields (JSON or Avro-decoded) -> event, or raises Rejected
    validate: Callable[[Mapping[str, Any]], Any]
    #: USER or PAIR
    lane: str
    #: the Kafka key of an event (its subject: de-duplication is scoped to it)
    key: Callable[[Any], str]
    #: POINTS, FRIENDSHIP, RETRACTION or ERASURE
    effect: str
    #: for POINTS: what the rules need to price an event, as a tuple of plain values (it is kept with the user)
    pricing: Callable[[Any], tuple] | None = None
    #: for POINTS: the (reason code, points) that pricing earns under rules
    price: Callable[[tuple, Rules], list[tuple[str, float]]] | None = None

    def __post_init__(self) -> None:
        if self.lane not in (USER, PAIR):
            raise ValueError(f"event type {self.name!r}: lane must be USER or PAIR, not {self.lane!r}")
        if self.effect == POINTS and (self.pricing is None or self.price is None or self.lane != USER):
            raise ValueError(f"event type {self.name!r}: a POINTS event needs pricing(), price() and the USER lane")

    def points(self, event, rules: Rules) -> list[tuple[str, float]]:
        """The (reason code, points) an accepted POINTS event adds to its user's own part."""
        return self.price(self.pricing(event), rules)

    def to_record(self, event) -> dict:
        """The event's fields as the Avro record (tuples as lists)."""
        return {f.name: _plain(getattr(event, f.name)) for f in fields(event)}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


_AMOUNT_RULE = "purchases need a finite amount >= 0"
_WEIGHT_RULE = "a friendship weight must be a finite number > 0 (omit it for 1.0)"


def _validate_purchase(obj: Mapping[str, Any]) -> Purchase:
    event_id = id_field(obj, "event_id", "purchase")
    ts = timestamp_field(obj, "purchase")
    user_id = id_field(obj, "user_id", "purchase")
    category = text_field(required(obj, "category", "purchase"), "category")
    amount = number_field(obj, "amount", "purchase", "bad_amount", _AMOUNT_RULE)
    if amount < 0:
        raise Rejected("bad_amount", f"amount is {amount!r}; {_AMOUNT_RULE}")
    return Purchase(event_id, ts, user_id, category, amount, optional_id_field(obj, "merchant_id", "purchase"))


def _validate_post(obj: Mapping[str, Any]) -> Post:
    event_id = id_field(obj, "event_id", "post")
    ts = timestamp_field(obj, "post")
    user_id = id_field(obj, "user_id", "post")
    post_id = id_field(obj, "post_id", "post")
    labels = obj.get("labels")
    if labels is None:
        return Post(event_id, ts, user_id, post_id, ())
    if labels.__class__ is not list and labels.__class__ is not tuple:
        raise Rejected("bad_field_type", f"labels is {_shown(labels)}; it must be a list of strings (it may be empty)")
    for label in labels:
        text_field(label, "a label")
    return Post(event_id, ts, user_id, post_id, tuple(labels))


def _validate_friendship(obj: Mapping[str, Any]) -> Friendship:
    event_id = id_field(obj, "event_id", "friendship")
    ts = timestamp_field(obj, "friendship")
    user_a = id_field(obj, "user_a", "friendship")
    user_b = id_field(obj, "user_b", "friendship")
    if user_a == user_b:
        raise Rejected("self_friendship", f"user_a and user_b are both {_shown(user_a)}; a friendship needs two distinct users")
    action = required(obj, "action", "friendship")
    if action != "add" and action != "remove":
        reason = "unknown_action" if action.__class__ is str else "bad_field_type"
        raise Rejected(reason, f"action is {_shown(action)}; it must be 'add' or 'remove'")
    if obj.get("weight") is None:
        return Friendship(event_id, ts, user_a, user_b, action, 1.0)
    weight = number_field(obj, "weight", "friendship", "bad_weight", _WEIGHT_RULE)
    if weight <= 0:
        raise Rejected("bad_weight", f"weight is {weight!r}; {_WEIGHT_RULE}")
    return Friendship(event_id, ts, user_a, user_b, action, weight)


def _validate_retraction(obj: Mapping[str, Any]) -> Retraction:
    event_id = id_field(obj, "event_id", "retraction")
    ts = timestamp_field(obj, "retraction")
    user_id = id_field(obj, "user_id", "retraction")
    retracts = id_field(obj, "retracts", "retraction")
    reason = obj.get("reason")
    return Retraction(event_id, ts, user_id, retracts, "" if reason is None else text_field(reason, "reason"))


def _validate_erasure(obj: Mapping[str, Any]) -> Erasure:
    event_id = id_field(obj, "event_id", "erasure")
    ts = timestamp_field(obj, "erasure")
    return Erasure(event_id, ts, id_field(obj, "user_id", "erasure"))


def _user_key(event) -> str:
    return event.user_id


PURCHASE = EventType(
    name="purchase",
    topic="purchases",
    event=Purchase,
    validate=_validate_purchase,
    lane=USER,
    key=_user_key,
    effect=POINTS,
    pricing=lambda event: (event.category, event.amount),
    price=lambda pricing, rules: [(rules.purchase_reason(pricing[0]), rules.purchase_points(pricing[0], pricing[1]))],
)
POST = EventType(
    name="post",
    topic="posts",
    event=Post,
    validate=_validate_post,
    lane=USER,
    key=_user_key,
    effect=POINTS,
    pricing=lambda event: (event.labels,),
    price=lambda pricing, rules: rules.post_contributions(pricing[0]),
)
FRIENDSHIP_TYPE = EventType(
    name="friendship",
    topic="friendships",
    event=Friendship,
    validate=_validate_friendship,
    lane=PAIR,
    key=lambda event: pair_key(event.user_a, event.user_b),
    effect=FRIENDSHIP,
)


RETRACTION_TYPE = EventType(
    name="retraction",
    topic="retractions",
    event=Retraction,
    validate=_validate_retraction,
    lane=USER,
    key=_user_key,
    effect=RETRACTION,
)
ERASURE_TYPE = EventType(
    name="erasure",
    topic="erasures",
    event=Erasure,
    validate=_validate_erasure,
    lane=USER,
    key=_user_key,
    effect=ERASURE,
)


class Catalog:
    """The event types a worker, a producer or the reference accept, by name, topic and class."""

    def __init__(self, types: Iterable[EventType]) -> None:
        self.types = tuple(types)
        self.by_name = {t.name: t for t in self.types}
        self.by_topic = {t.topic: t for t in self.types}
        self.by_class = {t.event: t for t in self.types}
        if not (len(self.by_name) == len(self.by_topic) == len(self.by_class) == len(self.types)):
            raise ValueError("event types need distinct names, topics and classes")
        self._names = ", ".join(repr(t.name) for t in self.types)

    def with_types(self, *types: EventType) -> "Catalog":
        """This catalog and more event types (an extension, or a test's own type)."""
        return Catalog((*self.types, *types))

    def topics(self, lane: str | None = None) -> tuple[str, ...]:
        """The input topics, of one lane or all."""
        return tuple(t.topic for t in self.types if lane is None or t.lane == lane)

    def of(self, event) -> EventType:
        return self.by_class[type(event)]

    # --- in ----------------------------------------------------------------------

    def validate(self, name: str, obj: Mapping[str, Any]):
        """An event from a dict of fields (JSON or Avro) of type ``name``, or Rejected.

        Fields are checked in schema order, so the first problem of a record
        is the one reported.
        """
        event_type = self.by_name.get(name) if name.__class__ is str else None
        if event_type is None:
            raise Rejected("unknown_type", f"type is {_shown(name)}; it must be one of {self._names}")
        return event_type.validate(obj)

    def from_dict(self, obj) -> Any:
        """The JSON Lines form: the fields plus ``"type"``."""
        if not isinstance(obj, dict):
            raise Rejected("invalid_json", f"a line must hold a JSON object, not {type(obj).__name__}")
        event_type = obj.get("type")
        if event_type is None:
            raise Rejected("missing_field", f"every event needs a 'type': one of {self._names}")
        return self.validate(event_type, obj)

    def from_json_line(self, line: str):
        """One line of a JSON Lines file (the format of produce, replay and reference)."""
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as error:  # ValueError also covers ints past Python's digit limit
            raise Rejected("invalid_json", f"not valid JSON ({_cut(str(error))}); each line must be one JSON object") from None
        return self.from_dict(obj)

    def from_bytes(self, topic: str, data: bytes):
        """Decode a record read from an input topic and validate it."""
        event_type = self.by_topic.get(topic)
        if event_type is None:
            raise Rejected("unknown_type", f"topic {topic!r} is not an input topic")
        try:
            _, record = codec.decode(data, event_type.name)
        except codec.DecodeError as error:
            raise Rejected(error.reason, error.detail) from None
        return event_type.validate(record)

    # --- out ---------------------------------------------------------------------

    def to_record(self, event) -> tuple[str, dict]:
        """(schema name, Avro record) of an event."""
        event_type = self.of(event)
        return event_type.name, event_type.to_record(event)

    def to_json_dict(self, event) -> dict:
        """The JSON Lines form, with ``"type"`` (what ``from_dict`` reads)."""
        name, record = self.to_record(event)
        return {"type": name, **record}

    def to_bytes(self, event) -> bytes:
        return codec.encode(*self.to_record(event))

    def topic_for(self, event) -> str:
        return self.of(event).topic

    def key_for(self, event) -> str:
        """The Kafka key: user_id, or the unordered pair for friendships (the event's subject)."""
        return self.of(event).key(event)


#: The event types of the spec (sections 1 and 9).
CATALOG = Catalog([PURCHASE, POST, FRIENDSHIP_TYPE, RETRACTION_TYPE, ERASURE_TYPE])

# Shorthands over CATALOG, for callers that take the spec's events.
validate = CATALOG.validate
from_dict = CATALOG.from_dict
from_json_line = CATALOG.from_json_line
from_bytes = CATALOG.from_bytes
to_record = CATALOG.to_record
to_json_dict = CATALOG.to_json_dict
to_bytes = CATALOG.to_bytes
topic_for = CATALOG.topic_for
key_for = CATALOG.key_for
#: What de-duplication is scoped to (the same as the key).
subject = CATALOG.key_for


def from_record(schema_name: str, record: dict):
    """An Avro-decoded record of one of the catalog's schemas."""
    return validate(schema_name, record)


def _cut(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."
