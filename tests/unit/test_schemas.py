"""Schemas, the Confluent framing, and the backward-compatibility gate."""

from __future__ import annotations

import json
import struct

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas import codec

SAMPLES = {
    "purchase": {"event_id": "e1", "ts": 1767225600000, "user_id": "ann", "category": "groceries", "amount": 12.5, "merchant_id": None},
    "post": {"event_id": "e2", "ts": 1, "user_id": "ann", "post_id": "p1", "labels": ["helpful", "spam"]},
    "friendship": {"event_id": "e3", "ts": 2, "user_a": "ann", "user_b": "bob", "action": "add", "weight": 2.0},
    "friend_update_batch": {
        "partition": 3,
        "updates": [
            {"kind": "ESTIMATE", "receiver": "bob", "sender": "ann", "estimate": 1.5, "version": 7, "weight": 0.0, "origin_ts": 5},
            {"kind": "LINK", "receiver": "cid", "sender": "ann", "estimate": 0.0, "version": 2, "weight": 0.0, "origin_ts": 6},
        ],
    },
    "score": {"user_id": "ann", "raw": -1.25, "score": 640.0, "own": -2.0, "network": 0.15, "version": 3, "ts": 9},
    "dead_letter": {
        "reason": "bad_amount", "detail": "amount is -1", "topic": "purchases", "partition": 0, "offset": 42,
        "key": b"ann", "original": b"\x00\x01", "received_ts": 10, "source": "worker",
    },
    "user_state": {
        "own": 1.0, "own_by_rule": {"purchase:groceries": 1.0}, "published": 0.9, "version": 2,
        "friends": {"bob": {"weight": 1.0, "estimate": 0.5, "has_estimate": True, "version": 4, "link_version": 1}},
        "recent_events": {"e1": 1}, "history": [{"ts": 1, "raw": 0.9}], "source_offsets": {"purchases": 12}, "updated_ts": 3,
    },
    "pair_state": {"user_a": "ann", "user_b": "bob", "weight": 2.0, "version": 1, "recent_events": {"e3": 2}, "source_offset": 0},
}  # fmt: skip


def test_every_schema_has_a_sample_and_documents_every_field():
    assert set(SAMPLES) == set(codec.SCHEMA_NAMES)

    def check(schema: dict) -> None:
        if isinstance(schema, dict) and schema.get("type") == "record":
            assert schema.get("doc"), schema["name"]
            for field in schema["fields"]:
                assert field.get("doc"), f"{schema['name']}.{field['name']} has no doc"
                check(field["type"])
        elif isinstance(schema, dict):
            for value in schema.values():
                check(value)
        elif isinstance(schema, list):
            for value in schema:
                check(value)

    for name in codec.SCHEMA_NAMES:
        check(codec.schema_json(name))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_with_confluent_framing(name):
    data = codec.encode(name, SAMPLES[name])
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert magic == 0 and schema_id == codec.schema_id(name)
    decoded_name, record = codec.decode(data)
    assert decoded_name == name
    assert record == SAMPLES[name]


def test_registry_ids_are_unique_and_files_exist():
    registry = json.loads((codec.SCHEMA_DIR / "registry.json").read_text())
    ids = [entry["id"] for entry in registry["schemas"]]
    assert len(ids) == len(set(ids))
    for entry in registry["schemas"]:
        assert (codec.SCHEMA_DIR / entry["file"]).is_file()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "not_decodable"),
        (b"\x00\x00\x00", "not_decodable"),
        (b"\x07\x00\x00\x00\x01abc", "not_decodable"),
        (b"\x00\x00\x00\x03\xe7abc", "unknown_schema_id"),
        (b"\x00\x00\x00\x00\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "not_decodable"),
    ],
)
def test_garbage_gives_a_reason_never_a_crash(data, reason):
    with pytest.raises(codec.DecodeError) as error:
        codec.decode(data, "purchase")
    assert error.value.reason == reason
    assert error.value.detail


def test_trailing_bytes_and_wrong_schema_are_rejected():
    data = codec.encode("purchase", SAMPLES["purchase"])
    with pytest.raises(codec.DecodeError) as error:
        codec.decode(data + b"\x00")
    assert error.value.reason == "not_decodable"
    with pytest.raises(codec.DecodeError) as error:
        codec.decode(data, "post")
    assert error.value.reason == "wrong_schema"


def _parse(schema: dict) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(schema))


def _compatible(reader: dict, writer: dict) -> bool:
    result = ReaderWriterCompatibilityChecker().get_compatibility(_parse(reader), _parse(writer))
    return result.compatibility is SchemaCompatibilityType.compatible


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_current_schema_can_read_the_previous_release(name):
    """Backward compatibility gate: a change that breaks it fails here.

    schemas/previous/ holds the last released version of each schema; update it
    (deliberately) when releasing a new version.
    """
    previous = json.loads((codec.SCHEMA_DIR / "previous" / f"{name}.avsc").read_text())
    assert _compatible(codec.schema_json(name), previous)


def test_the_gate_catches_an_incompatible_change():
    previous = codec.schema_json("purchase")
    broken = json.loads(json.dumps(previous))
    broken["fields"].append({"name": "channel", "type": "string", "doc": "new, without a default"})
    assert not _compatible(broken, previous)
    fixed = json.loads(json.dumps(previous))
    fixed["fields"].append({"name": "channel", "type": "string", "default": "web", "doc": "new, with a default"})
    assert _compatible(fixed, previous)
