"""Publish a JSON Lines file of events with confluent-kafka, as any integrator would (README: "Producing from any Kafka client").

Two ways, both with confluent-kafka's default settings (its default
partitioner, librdkafka's CRC32 of the key, is fine: a worker routes a
record that lands on a partition other than its key's):

* ``--schemas DIR``: encode with fastavro, framed in the Confluent wire
  format with the schema ids of ``DIR/registry.json`` (Standing's
  ``schemas/`` directory);
* ``--registry URL``: confluent-kafka's own ``AvroSerializer``, asking a
  Schema Registry for each topic's schema: a worker's web port
  (``http://127.0.0.1:6066``) answers as one, read-only, so
  ``auto.register.schemas`` is off and ``use.latest.version`` on;
* ``--registry URL --schemas DIR``: a real Schema Registry (workers started
  with ``STANDING_SCHEMA_REGISTRY_URL``): ``AvroSerializer`` with its
  defaults, registering the schemas of ``DIR`` (or a compatible version of
  your own) and writing the ids the registry gives out.

    python examples/produce_with_confluent_kafka.py events.jsonl --broker 127.0.0.1:9092 --schemas schemas
    python examples/produce_with_confluent_kafka.py events.jsonl --broker 127.0.0.1:9092 --registry http://127.0.0.1:6066
    python examples/produce_with_confluent_kafka.py events.jsonl --broker kafka:9092 --registry http://registry:8081 --schemas schemas

Needs only confluent-kafka and fastavro (``pip install confluent-kafka fastavro``).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
from pathlib import Path

import fastavro
from confluent_kafka import Producer

#: event "type" -> (topic, schema name); the README lists them.
TOPICS = {
    "purchase": "purchases",
    "post": "posts",
    "friendship": "friendships",
    "retraction": "retractions",
    "erasure": "erasures",
}
#: A friendship's key: the two user ids, the smaller first, joined by this character (U+001F).
PAIR_SEPARATOR = "\x1f"


def key_of(event: dict) -> str:
    """The Kafka key: user_id, or the unordered pair of a friendship."""
    if event["type"] == "friendship":
        a, b = sorted((event["user_a"], event["user_b"]))
        return a + PAIR_SEPARATOR + b
    return event["user_id"]


def fields_of(event: dict) -> dict:
    return {name: value for name, value in event.items() if name != "type"}


class WireFormat:
    """Avro in the Confluent wire format, with the ids of Standing's registry.json."""

    def __init__(self, schemas: Path) -> None:
        registry = json.loads((schemas / "registry.json").read_text())
        newest: dict[str, tuple[int, str]] = {}
        for entry in registry["schemas"]:
            if entry["id"] > newest.get(entry["name"], (0, ""))[0]:
                newest[entry["name"]] = (entry["id"], entry["file"])
        self._writers = {
            name: (id_, fastavro.parse_schema(json.loads((schemas / file).read_text())))
            for name, (id_, file) in newest.items()
            if name in TOPICS
        }

    def __call__(self, event: dict) -> bytes:
        id_, schema = self._writers[event["type"]]
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, fields_of(event))
        return struct.pack(">bI", 0, id_) + body.getvalue()


class RegistrySerializers:
    """confluent-kafka's AvroSerializer per topic, with the schema the registry holds for ``<topic>-value``."""

    def __init__(self, url: str) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        client = SchemaRegistryClient({"url": url})
        config = {"auto.register.schemas": False, "use.latest.version": True}
        self._context = lambda topic: SerializationContext(topic, MessageField.VALUE)
        self._serializers = {
            kind: AvroSerializer(client, client.get_latest_version(f"{topic}-value").schema.schema_str, conf=config)
            for kind, topic in TOPICS.items()
        }

    def __call__(self, event: dict) -> bytes:
        topic = TOPICS[event["type"]]
        return self._serializers[event["type"]](fields_of(event), self._context(topic))


class RegisteringSerializers:
    """confluent-kafka's AvroSerializer with its defaults (``auto.register.schemas`` on), one schema per event type."""

    def __init__(self, url: str, schemas: dict[str, str]) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        client = SchemaRegistryClient({"url": url})
        self._context = lambda topic: SerializationContext(topic, MessageField.VALUE)
        self._serializers = {kind: AvroSerializer(client, schemas[kind]) for kind in TOPICS}

    @classmethod
    def from_directory(cls, url: str, schemas: Path) -> "RegisteringSerializers":
        """With the newest schema of each event type in Standing's ``schemas/`` directory."""
        registry = json.loads((schemas / "registry.json").read_text())
        newest = {}
        for entry in sorted(registry["schemas"], key=lambda entry: entry["id"]):
            if entry["name"] in TOPICS:
                newest[entry["name"]] = (schemas / entry["file"]).read_text()
        return cls(url, newest)

    def __call__(self, event: dict) -> bytes:
        return self._serializers[event["type"]](fields_of(event), self._context(TOPICS[event["type"]]))


def produce(path: Path, broker: str, encode) -> int:
    producer = Producer({"bootstrap.servers": broker})
    failures: list[str] = []

    def delivered(error, message) -> None:
        if error is not None:
            failures.append(str(error))

    count = 0
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            event = json.loads(line)
            producer.produce(TOPICS[event["type"]], key=key_of(event).encode(), value=encode(event), on_delivery=delivered)
            producer.poll(0)
            count += 1
    producer.flush()
    if failures:
        raise RuntimeError(f"{len(failures)} records were not delivered: {failures[0]}")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="JSON Lines, one event per line (the format of `standing produce`)")
    parser.add_argument("--broker", default="127.0.0.1:9092")
    parser.add_argument("--schemas", type=Path, help="Standing's schemas/ directory (registry.json and the .avsc files)")
    parser.add_argument("--registry", help="a Schema Registry URL: a worker's http://127.0.0.1:6066, or a real registry with --schemas")
    args = parser.parse_args(argv)
    if not (args.schemas or args.registry):
        parser.error("give --schemas, --registry, or both (a real registry)")
    if args.schemas and args.registry:
        encode = RegisteringSerializers.from_directory(args.registry, args.schemas)
    else:
        encode = WireFormat(args.schemas) if args.schemas else RegistrySerializers(args.registry)
    count = produce(args.file, args.broker, encode)
    print(f"produced {count} events", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
