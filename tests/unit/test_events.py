"""Validation at the edge: every bad-input class of the spec has its reason code,
whether it arrives as a JSON line or as Avro bytes on a topic."""

from __future__ import annotations

import json
import math

import pytest

from schemas import codec
from streams import events as ev
from topology import topics

GOOD = {
    "purchase": {"type": "purchase", "event_id": "e1", "ts": 5, "user_id": "ann", "category": "books", "amount": 3.5},
    "post": {"type": "post", "event_id": "e2", "ts": 6, "user_id": "ann", "post_id": "p", "labels": ["helpful"]},
    "friendship": {"type": "friendship", "event_id": "e3", "ts": 7, "user_a": "bob", "user_b": "ann", "action": "add", "weight": 2.0},
}


def _with(kind: str, **changes) -> dict:
    event = dict(GOOD[kind])
    for key, value in changes.items():
        if value is ...:
            event.pop(key)
        else:
            event[key] = value
    return event


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_good_events_round_trip_json_record_bytes(kind):
    event = ev.from_dict(GOOD[kind])
    assert ev.to_json_dict(event) | {"type": kind} == ev.to_json_dict(event)
    assert ev.from_json_line(json.dumps(ev.to_json_dict(event))) == event
    assert ev.from_bytes(ev.topic_for(event), ev.to_bytes(event)) == event


def test_keys_route_friendships_by_the_unordered_pair():
    a = ev.from_dict(GOOD["friendship"])
    b = ev.from_dict(_with("friendship", user_a="ann", user_b="bob"))
    assert ev.key_for(a) == ev.key_for(b)
    assert ev.key_for(ev.from_dict(GOOD["purchase"])) == "ann"
    assert ev.topic_for(a) == topics.FRIENDSHIPS


def test_defaults_weight_labels_merchant():
    friendship = ev.from_dict(_with("friendship", weight=...))
    assert friendship.weight == 1.0
    assert ev.from_dict(_with("post", labels=...)).labels == ()
    assert ev.from_dict(GOOD["purchase"]).merchant_id is None


BAD = [
    ("not json", None, "invalid_json"),
    ("[1, 2]", None, "invalid_json"),
    (None, {"event_id": "x", "ts": 1}, "missing_field"),
    (None, _with("purchase", type="review"), "unknown_type"),
    (None, _with("purchase", event_id=...), "missing_field"),
    (None, _with("purchase", event_id=""), "empty_id"),
    (None, _with("purchase", user_id=""), "empty_id"),
    (None, _with("post", post_id=""), "empty_id"),
    (None, _with("purchase", user_id="x" * 257), "id_too_long"),
    (None, _with("purchase", user_id="a\nb"), "bad_id"),
    (None, _with("purchase", user_id=7), "bad_field_type"),
    (None, _with("purchase", amount=-0.01), "bad_amount"),
    (None, _with("purchase", amount="12"), "bad_amount"),
    (None, _with("purchase", amount=True), "bad_amount"),
    (None, _with("purchase", amount=...), "missing_field"),
    (None, _with("purchase", ts=-1), "bad_timestamp"),
    (None, _with("purchase", ts=1.5), "bad_timestamp"),
    (None, _with("post", labels="helpful"), "bad_field_type"),
    (None, _with("friendship", user_b="bob"), "self_friendship"),
    (None, _with("friendship", action="poke"), "unknown_action"),
    (None, _with("friendship", weight=0), "bad_weight"),
    (None, _with("friendship", weight=-2.0), "bad_weight"),
]


@pytest.mark.parametrize("line, obj, reason", BAD)
def test_every_bad_json_input_has_its_reason(line, obj, reason):
    with pytest.raises(ev.Rejected) as error:
        ev.from_json_line(line if line is not None else json.dumps(obj))
    assert error.value.reason == reason
    assert error.value.detail


def test_nan_and_infinity_in_json_are_bad_amounts_and_weights():
    for value in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ev.Rejected) as error:
            ev.from_json_line(json.dumps(_with("purchase", amount=0)).replace('"amount": 0', f'"amount": {value}'))
        assert error.value.reason == "bad_amount"
    with pytest.raises(ev.Rejected) as error:
        ev.from_json_line(json.dumps(_with("friendship", weight=1)).replace('"weight": 1', '"weight": NaN'))
    assert error.value.reason == "bad_weight"


AVRO_BAD = [
    ("purchase", {"amount": -1.0}, "bad_amount"),
    ("purchase", {"amount": math.nan}, "bad_amount"),
    ("purchase", {"amount": math.inf}, "bad_amount"),
    ("purchase", {"event_id": ""}, "empty_id"),
    ("post", {"user_id": ""}, "empty_id"),
    ("friendship", {"user_b": "bob"}, "self_friendship"),
    ("friendship", {"action": "block"}, "unknown_action"),
    ("friendship", {"weight": 0.0}, "bad_weight"),
    ("friendship", {"weight": math.nan}, "bad_weight"),
]


@pytest.mark.parametrize("kind, changes, reason", AVRO_BAD)
def test_bad_values_arriving_as_avro_bytes_are_rejected_the_same_way(kind, changes, reason):
    record = {key: value for key, value in GOOD[kind].items() if key != "type"}
    if kind == "purchase":
        record["merchant_id"] = None
    record.update(changes)
    topic = {"purchase": topics.PURCHASES, "post": topics.POSTS, "friendship": topics.FRIENDSHIPS}[kind]
    with pytest.raises(ev.Rejected) as error:
        ev.from_bytes(topic, codec.encode(kind, record))
    assert error.value.reason == reason


def test_undecodable_bytes_and_wrong_schema_on_a_topic():
    with pytest.raises(ev.Rejected) as error:
        ev.from_bytes(topics.PURCHASES, b"\x00\x00\x00\x00\x01garbage")
    assert error.value.reason == "not_decodable"
    with pytest.raises(ev.Rejected) as error:
        ev.from_bytes(topics.PURCHASES, ev.to_bytes(ev.from_dict(GOOD["post"])))
    assert error.value.reason == "wrong_schema"
    with pytest.raises(ev.Rejected) as error:
        ev.from_bytes(topics.PURCHASES, b"\x00\x00\x00\x01\x00")
    assert error.value.reason == "unknown_schema_id"


def test_reason_codes_are_declared():
    for _, _, reason in BAD + [(None, None, r) for _, _, r in AVRO_BAD]:
        assert reason in ev.REASONS
