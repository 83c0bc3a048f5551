"""An event type declared in this file alone is scored end to end: topics, decoding, dead letters, dispatch,
propagation and the reference all follow its declaration."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from schemas import codec
from standing.reference import compute_reference
from streams import events as ev
from streams.explain import explain
from streams.local import LocalPipeline
from streams.rules import load_rules
from streams.runtime.admin import all_topics
from topology.routing import partition_for
from topology.settings import Settings

RULES = load_rules()

# --- the toy event type: its schema, its event, its validation, its declaration ---------

KUDOS_SCHEMA = {
    "type": "record",
    "name": "Kudos",
    "namespace": "test.standing",
    "doc": "A user was thanked by others: stars from 1 to 5.",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "user_id", "type": "string"},
        {"name": "stars", "type": "int"},
    ],
}


@dataclass(frozen=True, slots=True)
class Kudos:
    event_id: str
    ts: int
    user_id: str
    stars: int


def validate_kudos(obj) -> Kudos:
    event_id = ev.id_field(obj, "event_id", "kudos")
    ts = ev.timestamp_field(obj, "kudos")
    user_id = ev.id_field(obj, "user_id", "kudos")
    stars = ev.required(obj, "stars", "kudos")
    if stars.__class__ is not int or not 1 <= stars <= 5:
        raise ev.Rejected("bad_field_type", f"stars is {stars!r}; kudos have 1 to 5 stars")
    return Kudos(event_id, ts, user_id, stars)


KUDOS = ev.EventType(
    name="kudos",
    topic="kudos",
    event=Kudos,
    validate=validate_kudos,
    lane=ev.USER,
    key=lambda event: event.user_id,
    effect=ev.POINTS,
    pricing=lambda event: (event.stars,),
    price=lambda pricing, rules: [("kudos", 3.0 * pricing[0])],
)
CATALOG = ev.CATALOG.with_types(KUDOS)


@pytest.fixture(autouse=True)
def kudos_schema():
    codec.register("kudos", KUDOS_SCHEMA, 9001)
    yield
    codec.unregister("kudos")


def _lines() -> list[str]:
    events = [
        {"type": "friendship", "event_id": "f1", "ts": 1, "user_a": "ann", "user_b": "bob", "action": "add"},
        {"type": "friendship", "event_id": "f2", "ts": 2, "user_a": "bob", "user_b": "cid", "action": "add", "weight": 2.0},
        {"type": "kudos", "event_id": "k1", "ts": 3, "user_id": "ann", "stars": 5},
        {"type": "kudos", "event_id": "k1", "ts": 3, "user_id": "ann", "stars": 5},  # a duplicate
        {"type": "kudos", "event_id": "k2", "ts": 4, "user_id": "dan", "stars": 2},
        {"type": "purchase", "event_id": "p1", "ts": 5, "user_id": "cid", "category": "groceries", "amount": 30.0},
        {"type": "kudos", "event_id": "k3", "ts": 6, "user_id": "bob", "stars": 9},  # rejected
    ]
    return [json.dumps(event) for event in events]


def test_the_declaration_names_a_topic_every_command_creates_and_the_user_lane_reads():
    assert "kudos" in [spec.name for spec in all_topics(Settings(), CATALOG)]
    assert "kudos" in CATALOG.topics(ev.USER) and "kudos" not in CATALOG.topics(ev.PAIR)
    assert CATALOG.from_json_line(_lines()[2]) == Kudos("k1", 3, "ann", 5)


def test_a_toy_event_type_is_scored_end_to_end_in_process_like_the_reference():
    lines = _lines()
    expected = compute_reference(lines, RULES, CATALOG)
    assert expected.summary.as_dict() == {"accepted": 5, "duplicates": 1, "rejected": {"bad_field_type": 1}}
    pipeline = LocalPipeline(RULES, partitions=3, catalog=CATALOG)
    assert pipeline.produce_lines(lines) == {"bad_field_type": 1}
    pipeline.run()
    scores = pipeline.raw_scores()
    assert set(scores) == set(expected.raw) == {"ann", "bob", "cid", "dan"}
    for user, raw in expected.raw.items():
        assert scores[user] == pytest.approx(raw, abs=RULES.error_bound)
    assert expected.raw["dan"] == 6.0  # friendless: exactly the kudos' points
    assert pipeline.counts["accepted", "kudos"] == 2 and pipeline.counts["duplicate", "kudos"] == 1
    ann = pipeline.users.load(partition_for("ann", 3), "ann")
    assert [reason["code"] for reason in explain("ann", ann, RULES)["reasons"] if reason["kind"] == "rule"] == ["kudos"]


def test_a_bad_toy_record_reaching_the_worker_is_a_dead_letter_with_its_reason():
    pipeline = LocalPipeline(RULES, partitions=3, catalog=CATALOG)
    bad = codec.encode("kudos", {"event_id": "k9", "ts": 1, "user_id": "eve", "stars": 0})
    pipeline.produce("kudos", b"eve", bad)
    pipeline.run()
    [letter] = pipeline.dead_letters()
    assert (letter["reason"], letter["topic"], letter["original"]) == ("bad_field_type", "kudos", bad)
    assert pipeline.scores() == {}
