"""Validation at the edge: every bad-input class of the spec has its reason code,
whether it arrives as a JSON line or as Avro bytes on a topic, and whatever is
accepted can be encoded and read back unchanged."""

from __future__ import annotations

import json
import math

import random
from collections import Counter

import pytest

from schemas import codec
from streams import events as ev
from topology import topics
from topology.routing import pair_key

GOOD = {
    "purchase": {"type": "purchase", "event_id": "e1", "ts": 5, "user_id": "ann", "category": "books", "amount": 3.5},
    "post": {"type": "post", "event_id": "e2", "ts": 6, "user_id": "ann", "post_id": "p", "labels": ["helpful"]},
    "friendship": {"type": "friendship", "event_id": "e3", "ts": 7, "user_a": "bob", "user_b": "ann", "action": "add", "weight": 2.0},
}  # fmt: skip
TOPIC = {"purchase": "purchases", "post": "posts", "friendship": "friendships"}


def _with(kind: str, **changes) -> dict:
    """GOOD[kind] with fields replaced; ``...`` removes a field."""
    event = dict(GOOD[kind])
    for key, value in changes.items():
        if value is ...:
            event.pop(key)
        else:
            event[key] = value
    return event


def _rejected(line: str) -> ev.Rejected:
    with pytest.raises(ev.Rejected) as error:
        ev.from_json_line(line)
    return error.value


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_good_events_round_trip_json_event_record_bytes(kind):
    event = ev.from_json_line(json.dumps(GOOD[kind]))
    assert ev.to_json_dict(event)["type"] == kind
    assert ev.from_dict(ev.to_json_dict(event)) == event
    name, record = ev.to_record(event)
    assert name == kind and ev.from_record(name, record) == event
    data = codec.encode(name, record)
    assert ev.from_bytes(TOPIC[kind], data) == event
    assert ev.topic_for(event) == TOPIC[kind]


def test_keys_route_friendships_by_the_unordered_pair():
    a = ev.from_dict(GOOD["friendship"])
    b = ev.from_dict(_with("friendship", user_a="ann", user_b="bob"))
    assert ev.key_for(a) == ev.key_for(b) == pair_key("ann", "bob")
    assert ev.key_for(ev.from_dict(GOOD["purchase"])) == "ann"
    assert ev.key_for(ev.from_dict(GOOD["post"])) == "ann"


def test_defaults_weight_labels_merchant_and_extra_fields():
    assert ev.from_dict(_with("friendship", weight=...)).weight == 1.0
    assert ev.from_dict(_with("friendship", weight=None, action="remove")).weight == 1.0
    assert ev.from_dict(_with("post", labels=...)).labels == ()
    assert ev.from_dict(_with("post", labels=[])).labels == ()
    assert ev.from_dict(GOOD["purchase"]).merchant_id is None
    assert ev.from_dict(_with("purchase", merchant_id="m1")).merchant_id == "m1"
    assert ev.from_dict(_with("purchase", note="ignored", nested={"a": 1})) == ev.from_dict(GOOD["purchase"])


def test_numbers_may_be_ints_and_are_stored_as_floats():
    purchase = ev.from_dict(_with("purchase", amount=0))
    assert purchase.amount == 0.0 and isinstance(purchase.amount, float)
    assert ev.from_dict(_with("friendship", weight=3)).weight == 3.0


@pytest.mark.parametrize(
    "user_id",
    ["x" * ev.MAX_ID_LENGTH, "Zoë", "名前", "a b", "nbsp\u00a0id", "family\U0001f468\u200d\U0001f469\u200d\U0001f467", "e\u0301"],
)
def test_ids_are_opaque_text_without_control_characters(user_id):
    event = ev.from_dict(_with("purchase", user_id=user_id))
    assert ev.from_bytes("purchases", ev.to_bytes(event)).user_id == user_id


# (JSON line, the field the detail must name or None, reason). Lines are
# built as text so that NaN, huge numbers and escapes reach the parser as such.
BAD_LINES = [
    ("not json", None, "invalid_json"),
    ("[1, 2]", None, "invalid_json"),
    ("null", None, "invalid_json"),
    ('"a string"', None, "invalid_json"),
    ("[" * 100_000, None, "invalid_json"),
    (json.dumps(GOOD["purchase"]).replace('"amount": 3.5', '"amount": 1' + "0" * 5000), None, "invalid_json"),
    (json.dumps({"event_id": "x", "ts": 1}), "type", "missing_field"),
    (json.dumps(_with("purchase", type="review")), "type", "unknown_type"),
    (json.dumps(_with("purchase", type=5)), "type", "unknown_type"),
    (json.dumps(_with("purchase", event_id=...)), "event_id", "missing_field"),
    (json.dumps(_with("purchase", event_id=None)), "event_id", "missing_field"),
    (json.dumps(_with("purchase", category=...)), "category", "missing_field"),
    (json.dumps(_with("friendship", action=...)), "action", "missing_field"),
    (json.dumps(_with("post", post_id=...)), "post_id", "missing_field"),
    (json.dumps(_with("purchase", event_id="")), "event_id", "empty_id"),
    (json.dumps(_with("purchase", user_id="")), "user_id", "empty_id"),
    (json.dumps(_with("purchase", merchant_id="")), "merchant_id", "empty_id"),
    (json.dumps(_with("post", post_id="")), "post_id", "empty_id"),
    (json.dumps(_with("friendship", user_a="")), "user_a", "empty_id"),
    (json.dumps(_with("purchase", user_id="x" * 257)), "user_id", "id_too_long"),
    (json.dumps(_with("purchase", user_id="a\nb")), "user_id", "bad_id"),
    (json.dumps(_with("purchase", user_id="a\x00b")), "user_id", "bad_id"),
    (json.dumps(_with("friendship", user_b="a\x1fb")), "user_b", "bad_id"),
    (json.dumps(_with("purchase", user_id="a\x85b")), "user_id", "bad_id"),
    (json.dumps(_with("purchase", user_id="\ud800")), "user_id", "bad_id"),
    (json.dumps(_with("purchase", user_id=7)), "user_id", "bad_field_type"),
    (json.dumps(_with("purchase", event_id=["e"])), "event_id", "bad_field_type"),
    (json.dumps(_with("purchase", category=5)), "category", "bad_field_type"),
    (json.dumps(_with("purchase", category="\udc00")), "category", "bad_field_type"),
    (json.dumps(_with("post", labels="helpful")), "labels", "bad_field_type"),
    (json.dumps(_with("post", labels=["ok", 1])), "label", "bad_field_type"),
    (json.dumps(_with("post", labels=["\ud83d"])), "label", "bad_field_type"),
    (json.dumps(_with("friendship", action=1)), "action", "bad_field_type"),
    (json.dumps(_with("purchase", ts=-1)), "ts", "bad_timestamp"),
    (json.dumps(_with("purchase", ts=1.5)), "ts", "bad_timestamp"),
    (json.dumps(_with("purchase", ts=True)), "ts", "bad_timestamp"),
    (json.dumps(_with("purchase", ts="5")), "ts", "bad_timestamp"),
    (json.dumps(_with("purchase", ts=2**63)), "ts", "bad_timestamp"),
    (json.dumps(_with("purchase", amount=-0.01)), "amount", "bad_amount"),
    (json.dumps(_with("purchase", amount="12")), "amount", "bad_amount"),
    (json.dumps(_with("purchase", amount=True)), "amount", "bad_amount"),
    (json.dumps(_with("purchase", amount=10**400)), "amount", "bad_amount"),
    (json.dumps(_with("purchase", amount=math.nan)), "amount", "bad_amount"),
    (json.dumps(_with("purchase", amount=math.inf)), "amount", "bad_amount"),
    (json.dumps(_with("purchase", amount=-math.inf)), "amount", "bad_amount"),
    (json.dumps(_with("purchase", amount=...)), "amount", "missing_field"),
    (json.dumps(_with("friendship", user_b="bob")), "user_a", "self_friendship"),
    (json.dumps(_with("friendship", action="poke")), "action", "unknown_action"),
    (json.dumps(_with("friendship", action="ADD")), "action", "unknown_action"),
    (json.dumps(_with("friendship", weight=0)), "weight", "bad_weight"),
    (json.dumps(_with("friendship", weight=-2.0)), "weight", "bad_weight"),
    (json.dumps(_with("friendship", weight=math.nan)), "weight", "bad_weight"),
    (json.dumps(_with("friendship", weight=math.inf)), "weight", "bad_weight"),
    (json.dumps(_with("friendship", weight=False)), "weight", "bad_weight"),
    (json.dumps(_with("friendship", weight="1")), "weight", "bad_weight"),
    (json.dumps(_with("friendship", action="remove", weight=-1)), "weight", "bad_weight"),
]


@pytest.mark.parametrize("line, field, reason", BAD_LINES, ids=[f"{r}-{i}" for i, (_, _, r) in enumerate(BAD_LINES)])
def test_every_bad_json_input_has_its_reason_and_a_detail_naming_the_field(line, field, reason):
    rejection = _rejected(line)
    assert rejection.reason == reason
    assert rejection.reason in ev.REASONS
    assert rejection.detail and len(rejection.detail) < 400
    if field is not None:
        assert field in rejection.detail


def test_detail_says_what_to_do():
    rejection = _rejected(json.dumps(_with("purchase", amount=-3.0)))
    assert rejection.detail == "amount is -3.0; purchases need a finite amount >= 0"


AVRO_BAD = [
    ("purchase", {"amount": -1.0}, "bad_amount"),
    ("purchase", {"amount": math.nan}, "bad_amount"),
    ("purchase", {"amount": math.inf}, "bad_amount"),
    ("purchase", {"event_id": ""}, "empty_id"),
    ("purchase", {"merchant_id": ""}, "empty_id"),
    ("purchase", {"user_id": "u" * 300}, "id_too_long"),
    ("purchase", {"user_id": "a\tb"}, "bad_id"),
    ("purchase", {"ts": -5}, "bad_timestamp"),
    ("post", {"user_id": ""}, "empty_id"),
    ("post", {"post_id": "p\r"}, "bad_id"),
    ("friendship", {"user_b": "bob"}, "self_friendship"),
    ("friendship", {"action": "block"}, "unknown_action"),
    ("friendship", {"action": ""}, "unknown_action"),
    ("friendship", {"weight": 0.0}, "bad_weight"),
    ("friendship", {"weight": -0.5}, "bad_weight"),
    ("friendship", {"weight": math.nan}, "bad_weight"),
    ("friendship", {"weight": -math.inf}, "bad_weight"),
]


@pytest.mark.parametrize("kind, changes, reason", AVRO_BAD)
def test_bad_values_arriving_as_avro_bytes_are_rejected_the_same_way(kind, changes, reason):
    record = {key: value for key, value in GOOD[kind].items() if key != "type"}
    if kind == "purchase":
        record["merchant_id"] = None
    record.update(changes)
    with pytest.raises(ev.Rejected) as error:
        ev.from_bytes(TOPIC[kind], codec.encode(kind, record))
    assert error.value.reason == reason
    with pytest.raises(ev.Rejected) as same:
        ev.from_record(kind, record)
    assert same.value.reason == reason


def test_undecodable_bytes_unknown_ids_and_wrong_schema_on_a_topic():
    cases = [
        (b"", "not_decodable"),
        (b"\x00\x00\x00\x00\x01garbage", "not_decodable"),
        (b'{"type": "purchase"}', "not_decodable"),
        (b"\x00\x00\x00\x01\x00", "unknown_schema_id"),
        (ev.to_bytes(ev.from_dict(GOOD["post"])), "wrong_schema"),
        (codec.encode("score", {"user_id": "u", "raw": 0.0, "score": 650.0, "own": 0.0, "network": 0.0, "version": 1, "ts": 1}), "wrong_schema"),
    ]  # fmt: skip
    for data, reason in cases:
        with pytest.raises(ev.Rejected) as error:
            ev.from_bytes("purchases", data)
        assert error.value.reason == reason, data
        assert error.value.detail


def test_bytes_on_a_topic_that_takes_no_events_are_rejected():
    with pytest.raises(ev.Rejected) as error:
        ev.from_bytes(topics.SCORES, ev.to_bytes(ev.from_dict(GOOD["purchase"])))
    assert error.value.reason == "unknown_type"


# One character of each interesting class: ASCII, C0/C1 controls, format and
# space characters, a combining mark, CJK, an astral emoji, lone surrogates.
_CHARS = ["a", "b", " ", "\x00", "\n", "\x1f", "\x7f", "\x85", "\u00a0", "\u200d", "\u0301", "é", "名", "\U0001f600", "\ud800", "\udfff"]  # fmt: skip
_STRING_FIELDS = {"event_id", "user_id", "category", "merchant_id", "post_id", "user_a", "user_b", "action"}


def _text(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return rng.choice(["", "ann", "bob", "x" * 256, "x" * 257, "add", "remove"])
    return "".join(rng.choice(_CHARS) for _ in range(rng.randrange(1, 6)))


def _number(rng: random.Random) -> float | int:
    return rng.choice([
        0, -0.0, 1, -1, 0.5, -2.5, 1e308, -1e308, 2**63 - 1, 2**63, 2**70, -(2**70), 10**400,
        math.nan, math.inf, -math.inf, rng.uniform(-1e6, 1e6), rng.randrange(-(2**64), 2**64),
    ])  # fmt: skip


def _anything(rng: random.Random) -> object:
    return rng.choice([_text, _number, lambda r: [_text(r)], lambda r: None, lambda r: r.random() < 0.5, lambda r: {}])(rng)


def _value_for(name: str, rng: random.Random) -> object:
    """Mostly the field's own JSON type with awkward contents, sometimes anything."""
    if rng.random() < 0.25:
        return _anything(rng)
    if name in _STRING_FIELDS:
        return _text(rng)
    if name == "labels":
        return [_text(rng) for _ in range(rng.randrange(4))]
    return _number(rng)


def _mutated_events(count: int, seed: int = 20240601):
    """Good events with one or two fields replaced; deterministic."""
    rng = random.Random(seed)
    for _ in range(count):
        obj = dict(GOOD[rng.choice(sorted(GOOD))])
        fields = sorted(set(obj) - {"type"} | ({"merchant_id"} if obj["type"] == "purchase" else set()))
        for name in rng.sample(fields, rng.choice([1, 1, 2])):
            obj[name] = _value_for(name, rng)
        yield obj


def test_anything_accepted_can_be_encoded_and_read_back():
    """Validation is the only gate before encoding: it must never let through
    something the codec cannot write (lone surrogates, 70-bit ints, ...)."""
    outcomes: Counter[str] = Counter()
    for obj in _mutated_events(5000):
        try:
            event = ev.from_json_line(json.dumps(obj))
        except ev.Rejected as rejection:
            assert rejection.reason in ev.REASONS
            outcomes[rejection.reason] += 1
            continue
        outcomes["accepted"] += 1
        assert ev.from_bytes(ev.topic_for(event), ev.to_bytes(event)) == event, obj
        ev.key_for(event).encode()
    # The generator must exercise both sides, or this test proves nothing.
    assert outcomes["accepted"] > 1000 and outcomes["bad_id"] > 100 and outcomes["bad_field_type"] > 100, outcomes
