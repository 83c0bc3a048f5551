"""A real Schema Registry's ids: registered with compatibility checked, written, and read from any producer.

The registry is ``tests/registry_double.py`` (the real one cannot run here);
the client side is confluent-kafka's own ``SchemaRegistryClient``,
``AvroSerializer`` and ``AvroDeserializer``.
"""

from __future__ import annotations

import copy
import io
import json

import fastavro

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas import codec
from streams.runtime import schema_registry
from tests.registry_double import SchemaRegistryDouble
from topology.settings import Settings

PURCHASE = {"event_id": "e1", "ts": 1767225600000, "user_id": "ann", "category": "groceries", "amount": 12.5, "merchant_id": None}


@pytest.fixture
def registry():
    with SchemaRegistryDouble() as double:
        yield double
    codec.forget_registry()


def _settings(registry) -> Settings:
    return Settings(schema_registry_url=registry.url)


def test_every_outward_subject_is_registered_oldest_version_first_and_written_with_its_id(registry):
    written = schema_registry.ensure(_settings(registry))
    assert set(written) == set(schema_registry.subjects())
    assert sorted(registry.subjects) == sorted(schema_registry.subjects())
    assert len(registry.subjects["scores-value"]) == len(codec.versions("score"))
    for subject, id_ in written.items():
        name = schema_registry.subjects()[subject]
        assert codec.encode(name, _sample(name))[1:5] == id_.to_bytes(4, "big")
        assert registry.subjects[subject][-1] == id_
    # Standing's internal topics keep registry.json's ids
    assert codec.encode("pair_notice", {"user_id": "ann", "erased_ts": 1})[1:5] == codec.schema_id("pair_notice").to_bytes(4, "big")


def test_registering_again_changes_nothing(registry):
    first = schema_registry.ensure(_settings(registry))
    before = copy.deepcopy(registry.subjects)
    assert schema_registry.ensure(_settings(registry)) == first
    assert registry.subjects == before


def test_an_incompatible_latest_version_is_refused_before_anything_is_registered_for_it(registry):
    theirs = {"type": "record", "name": "Score", "namespace": "standing", "fields": [{"name": "required_elsewhere", "type": "string"}]}
    registry.register("scores-value", json.dumps(theirs))
    with pytest.raises(schema_registry.RegistryError, match="not compatible with the latest version of subject 'scores-value'"):
        schema_registry.ensure(_settings(registry))
    assert len(registry.subjects["scores-value"]) == 1


def test_a_producer_registering_its_own_compatible_version_is_read(registry):
    """confluent-kafka's AvroSerializer with its defaults (auto.register.schemas on) and a purchase
    schema with a field of its own: the worker has never seen the id it registers."""
    schema_registry.ensure(_settings(registry))
    theirs = copy.deepcopy(codec.schema_json("purchase"))
    theirs["fields"].append({"name": "loyalty_card", "type": ["null", "string"], "default": None})
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry.url}), json.dumps(theirs))
    data = serializer({**PURCHASE, "loyalty_card": "C-17"}, SerializationContext("purchases", MessageField.VALUE))
    their_id = int.from_bytes(data[1:5], "big")
    assert their_id not in {id_ for id_, _ in codec.versions("purchase")}
    name, record = codec.decode(data, "purchase")
    assert name == "purchase" and record == PURCHASE


def test_an_id_nobody_gave_out_is_unknown_and_asked_for_once(registry):
    schema_registry.ensure(_settings(registry))
    data = b"\x00" + (9999).to_bytes(4, "big") + b"\x02"
    for _ in range(3):
        with pytest.raises(codec.DecodeError) as raised:
            codec.decode(data, "purchase")
        assert raised.value.reason == "unknown_schema_id" and "Schema Registry" in raised.value.detail
    assert [path for _, path in registry.requests if path.startswith("/schemas/ids/9999")] == ["/schemas/ids/9999"]


def _their_purchase(registry) -> bytes:
    """A purchase written by confluent-kafka's AvroSerializer with a schema version of its own (an id no worker saw)."""
    theirs = copy.deepcopy(codec.schema_json("purchase"))
    theirs["fields"].append({"name": "loyalty_card", "type": ["null", "string"], "default": None})
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry.url}), json.dumps(theirs))
    return serializer({**PURCHASE, "loyalty_card": "C-17"}, SerializationContext("purchases", MessageField.VALUE))


def test_a_registry_that_cannot_answer_blames_no_record_and_is_asked_again(registry, monkeypatch):
    """A 503 (a registry restarting, or without its Kafka store) is not "unknown id": the record must not
    be dead-lettered. The error is a ConnectionError, which the lanes wait out and read again."""
    from streams.runtime.failures import transient

    schema_registry.ensure(_settings(registry))
    data = _their_purchase(registry)
    clock = [1000.0]
    monkeypatch.setattr(schema_registry.time, "monotonic", lambda: clock[0])
    registry.unavailable = True
    asked = len(registry.requests)
    with pytest.raises(schema_registry.RegistryUnavailable) as raised:
        codec.decode(data, "purchase")
    assert transient(raised.value) and not isinstance(raised.value, codec.DecodeError)
    assert "answered 503" in str(raised.value) and registry.url in str(raised.value)
    assert len(registry.requests) == asked + 1  # one request, no retries of the client's own (they block the loop)
    with pytest.raises(schema_registry.RegistryUnavailable):
        codec.decode(data, "purchase")  # within the pause: no request
    assert len(registry.requests) == asked + 1
    registry.unavailable = False
    clock[0] += schema_registry.UNAVAILABLE_RETRY_S
    assert codec.decode(data, "purchase") == ("purchase", PURCHASE)


def test_an_unreachable_registry_blames_no_record(registry, monkeypatch):
    schema_registry.ensure(_settings(registry))
    data = _their_purchase(registry)
    registry.__exit__()  # stops answering: connection refused
    with pytest.raises(schema_registry.RegistryUnavailable) as raised:
        codec.decode(data, "purchase")
    assert "cannot be reached" in str(raised.value)


def test_the_topic_decides_when_a_number_is_an_id_in_both(registry):
    """A fresh registry gives out ids from 1, as registry.json does: the same number can be an
    outward schema there and an older pair state in a changelog here. Each topic reads its own."""
    schema_registry.ensure(_settings(registry))
    (id_, v1), *_ = codec.versions("pair_state")
    assert json.loads(registry.schemas[id_ - 1])["name"] != "PairState"  # the registry gave the number to another
    old = {"user_a": "ann", "user_b": "bob", "weight": 2.0, "version": 1, "recent_events": {}, "source_offset": 5}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(v1), old)
    name, record = codec.decode(b"\x00" + id_.to_bytes(4, "big") + body.getvalue(), "pair_state")
    assert name == "pair_state" and record["weight"] == 2.0 and record["user_b"] == "bob"


def test_scores_are_read_by_confluent_kafkas_deserializer(registry):
    schema_registry.ensure(_settings(registry))
    score = _sample("score")
    data = codec.encode("score", score)
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    read = deserializer(data, SerializationContext("scores", MessageField.VALUE))
    # the registered schema says timestamp-millis, so fastavro gives datetimes
    assert {k: v for k, v in read.items() if k not in ("ts", "as_of")} == {k: v for k, v in score.items() if k not in ("ts", "as_of")}
    assert round(read["ts"].timestamp() * 1000) == score["ts"]


def _sample(name: str) -> dict:
    from tests.schemas.test_schemas import SAMPLES

    if name in SAMPLES:
        return SAMPLES[name]
    raise KeyError(name)
