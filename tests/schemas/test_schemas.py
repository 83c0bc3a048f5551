"""Schemas, the Confluent framing, and the backward-compatibility gate."""

from __future__ import annotations

import json
import random
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
        "receivers": "dee", "senders": "ann", "update_columns": struct.pack("<Bd2sq", 0, 2.5, b"B\x08", 7),
    },
    "score": {"user_id": "ann", "raw": -1.25, "score": 640.0, "own": -2.0, "network": 0.15, "version": 3, "ts": 9, "as_of": 8, "rules_version": "r-2e8b3fe2d9d6"},
    "stream_time": {"partition": 3, "stream_time": 1767225600000, "rules_version": "r-2e8b3fe2d9d6", "half_life_days": 180.0},
    "rescore": {"epoch": 1, "version": "r-2e8b3fe2d9d6", "rules": "[network]\nalpha = 0.5\n"},
    "rules_record": {"epoch": 1, "version": "r-2e8b3fe2d9d6", "rules": "[network]\nalpha = 0.5\n", "published_ts": 10, "stream_time": 9, "source": "rules.toml"},
    "dead_letter": {
        "reason": "bad_amount", "detail": "amount is -1", "topic": "purchases", "partition": 0, "offset": 42,
        "key": b"ann", "original": b"\x00\x01", "received_ts": 10, "source": "worker",
    },
    "user_state": {
        "own": 1.0, "own_by_rule": {"purchase:groceries": 1.0}, "published": 0.9, "version": 2,
        "friends": {"bob": {"weight": 1.0, "estimate": 0.5, "has_estimate": True, "version": 4, "link_version": 1}},
        "recent_events": {"e1": 1}, "history": [{"ts": 1, "raw": 0.9}], "source_offsets": {"purchases": 12}, "updated_ts": 3,
        "friend_ids": "cy", "friend_columns": struct.pack("<ddB2s2s2s", 1.0, 0.25, 1, b"B\x02", b"B\x01", b"B\x05"),
        "history_columns": struct.pack("<qd", 2, 0.95), "exists": True, "erased_ts": -1, "as_of": 3, "extra": b"",
    },
    "pair_state": {
        "user_a": "ann", "user_b": "bob", "weight": 2.0, "version": 1, "recent_events": {"e3": 2}, "source_offset": 0,
        "weight_ts": 2, "events": [{"ts": 2, "weight": 2.0}],
    },
    "retraction": {"event_id": "r1", "ts": 5, "user_id": "ann", "retracts": "e1", "reason": "stolen card"},
    "erasure": {"event_id": "x1", "ts": 6, "user_id": "ann"},
    "pair_notice": {"user_id": "ann", "erased_ts": 6},
    "user_extra": {
        "held": [{"event_id": "e1", "type": "purchase", "ts": 1, "pricing": '["groceries", 12.5]', "points": 1.25, "retracted_by": "r1", "retracted_ts": 5}],
        "retractions": [{"retracts": "e9", "by": "r2", "ts": 7}], "named_ts": 5,
    },
}  # fmt: skip


def test_every_schema_has_a_sample_and_documents_every_field():
    assert set(SAMPLES) == set(codec.SCHEMA_NAMES)
    for name in codec.SCHEMA_NAMES:
        assert codec.schema_json(name)["namespace"] == "standing", name

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


def test_timestamps_are_documented_as_timestamp_millis_but_stay_ints():
    assert codec.schema_json("purchase")["fields"][1]["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    for name, field in [("purchase", "ts"), ("score", "ts"), ("dead_letter", "received_ts")]:
        _, record = codec.decode(codec.encode(name, SAMPLES[name]))
        assert type(record[field]) is int and record[field] == SAMPLES[name][field]


def test_decode_accepts_any_bytes_like_and_a_tuple_of_expected_names():
    data = codec.encode("score", SAMPLES["score"])
    assert codec.decode(memoryview(data), ("purchase", "score")) == ("score", SAMPLES["score"])
    assert codec.decode(bytearray(data), "score")[1] == SAMPLES["score"]
    with pytest.raises(codec.DecodeError) as error:
        codec.decode(data, ("purchase", "post"))
    assert error.value.reason == "wrong_schema"


def test_encoding_with_an_unknown_schema_name_says_which_exist():
    with pytest.raises(ValueError, match="purchase"):
        codec.encode("purchases", SAMPLES["purchase"])


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


def test_every_truncation_of_every_schema_is_not_decodable():
    for name, sample in SAMPLES.items():
        data = codec.encode(name, sample)
        for end in range(len(data)):
            with pytest.raises(codec.DecodeError) as error:
                codec.decode(data[:end])
            assert error.value.reason == "not_decodable", (name, end)


def test_corrupted_bytes_never_raise_anything_but_decode_error():
    """Deterministic fuzzing: overwrite, insert and append bytes in valid records
    (lengths and counts become absurd), plus pure noise behind a valid header."""
    rng = random.Random(1234)
    outcomes: dict[str, int] = {}
    for _ in range(20_000):
        name = rng.choice(sorted(SAMPLES))
        data = bytearray(codec.encode(name, SAMPLES[name]))
        mode = rng.randrange(4)
        if mode == 0:
            data[5:] = rng.randbytes(rng.randrange(40))
        elif mode == 1:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(5, len(data))] = rng.randrange(256)
        elif mode == 2:
            at = rng.randrange(5, len(data))
            data[at:at] = b"\xff" * rng.randrange(1, 10) + bytes([rng.randrange(128)])
        else:
            data += rng.randbytes(rng.randrange(1, 5))
        try:
            codec.decode(bytes(data))
            outcome = "decoded"
        except codec.DecodeError as error:
            assert error.reason == "not_decodable" and error.detail
            outcome = error.reason
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes["not_decodable"] > 10_000


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
    (deliberately) when releasing a new version. A schema new in this release
    has none yet.
    """
    path = codec.SCHEMA_DIR / "previous" / f"{name}.avsc"
    if not path.exists():
        assert name in NEW_IN_THIS_RELEASE, f"{name} has no released version in schemas/previous/"
        return
    previous = json.loads(path.read_text())
    assert _compatible(codec.schema_json(name), previous)


#: Schemas first released by this version (schemas/previous/ gets them at the release after).
NEW_IN_THIS_RELEASE = {"retraction", "erasure", "pair_notice", "user_extra", "rescore", "rules_record", "stream_time"}


def test_every_registered_version_is_readable_as_the_newest():
    """Any id in registry.json can be read: the newest version of its name must
    be able to read every older one."""
    registry = json.loads((codec.SCHEMA_DIR / "registry.json").read_text())
    for entry in registry["schemas"]:
        written = json.loads((codec.SCHEMA_DIR / entry["file"]).read_text())
        assert _compatible(codec.schema_json(entry["name"]), written), entry


def test_the_gate_catches_an_incompatible_change():
    previous = codec.schema_json("purchase")
    broken = json.loads(json.dumps(previous))
    broken["fields"].append({"name": "channel", "type": "string", "doc": "new, without a default"})
    assert not _compatible(broken, previous)
    retyped = json.loads(json.dumps(previous))
    retyped["fields"][4]["type"] = "string"  # amount: double -> string
    assert not _compatible(retyped, previous)
    fixed = json.loads(json.dumps(previous))
    fixed["fields"].append({"name": "channel", "type": "string", "default": "web", "doc": "new, with a default"})
    assert _compatible(fixed, previous)
