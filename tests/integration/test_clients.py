"""Outside clients, as an integrator writes them from the README: confluent-kafka with its defaults,
and its Schema Registry client and AvroSerializer pointed at a worker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from examples.produce_with_confluent_kafka import TOPICS, RegistrySerializers, WireFormat, produce
from schemas import codec
from standing import processes
from standing.control import wait_until_quiescent
from standing.population import PopulationConfig, generate_events, write_jsonl
from standing.reference import compare, reference_file
from streams.rules import load_rules
from tests.helpers import wait_until_ready
from streams.runtime.lookups import read_scores

RULES = load_rules()
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture
def worker(fresh_settings, tmp_path):
    log_path = tmp_path / "worker.log"
    process = processes.start_worker_process(fresh_settings, log_path=log_path)
    try:
        processes.wait_for_metrics(fresh_settings.metrics_port, process, log_path=log_path)
        wait_until_ready(fresh_settings)
        yield process
    finally:
        processes.stop_process(process)


def _events(tmp_path: Path) -> Path:
    """A population's events, then disputes upheld (retractions) and a few people forgotten (erasures)."""
    path = tmp_path / "events.jsonl"
    write_jsonl(path, generate_events(PopulationConfig(users=400, events=4000, seed=21), RULES))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    last = max(line["ts"] for line in lines)
    owned = [line for line in lines if line["type"] in ("purchase", "post")]
    more = [
        {"type": "retraction", "event_id": f"r{i}", "ts": last + 1 + i, "user_id": line["user_id"], "retracts": line["event_id"], "reason": "dispute upheld"}
        for i, line in enumerate(owned[::50])
    ]
    more += [{"type": "erasure", "event_id": f"x{i}", "ts": last + 1000 + i, "user_id": line["user_id"]} for i, line in enumerate(owned[7::400])]
    with path.open("a") as out:
        out.writelines(json.dumps(line) + "\n" for line in more)
    return path


def _scored_like_the_reference(settings, events: Path) -> None:
    asyncio.run(wait_until_quiescent(settings, timeout=300, progress=None))
    scores = {user: score["raw"] for user, score in asyncio.run(read_scores(settings)).items()}
    result = compare(scores, reference_file(events, RULES).raw)
    assert result.within(RULES.error_bound), result


def _registry_url(settings) -> str:
    return f"http://{settings.web_host}:{settings.web_port}"


def test_the_example_producer_knows_every_input_topic():
    from streams.events import CATALOG

    assert TOPICS == {event_type.name: event_type.topic for event_type in CATALOG.types}


def test_a_confluent_kafka_producer_with_default_settings_scores_like_the_reference(fresh_settings, worker, tmp_path):
    events = _events(tmp_path)
    produced = produce(events, fresh_settings.broker, WireFormat(SCHEMAS))
    _scored_like_the_reference(fresh_settings, events)
    samples = processes.scrape_metrics(fresh_settings.metrics_port)
    rerouted = processes.sum_samples(samples, "standing_input_records_rerouted_total")
    # librdkafka hashes keys with CRC32, not murmur2: most records land elsewhere and are routed, none rejected
    assert produced * 0.5 < rerouted < produced
    assert processes.sum_samples(samples, "standing_events_rejected_total") == 0
    assert processes.sum_samples(samples, "standing_events_accepted_total") == produced


def test_avro_serializer_against_a_workers_registry_endpoint_scores_like_the_reference(fresh_settings, worker, tmp_path):
    events = _events(tmp_path)
    produce(events, fresh_settings.broker, RegistrySerializers(_registry_url(fresh_settings)))
    _scored_like_the_reference(fresh_settings, events)


def test_the_registry_endpoint_speaks_the_schema_registry_dialect(fresh_settings, worker):
    client = SchemaRegistryClient({"url": _registry_url(fresh_settings)})
    subjects = client.get_subjects()
    assert {"purchases-value", "posts-value", "friendships-value", "scores-value", "dead-letters-value"} <= set(subjects)
    latest = client.get_latest_version("purchases-value")
    assert latest.schema_id == codec.schema_id("purchase") and latest.version == len(client.get_versions("purchases-value"))
    assert json.loads(client.get_schema(latest.schema_id).schema_str) == codec.schema_json("purchase")
    # a serializer that looks its schema up (use.latest.version off) finds it too
    assert client.lookup_schema("purchases-value", latest.schema).schema_id == latest.schema_id
    # user_state has two versions: both are served, the newest is "latest"
    changelog = f"{fresh_settings.app_id}-users-changelog-value"
    assert [client.get_version(changelog, v).schema_id for v in client.get_versions(changelog)] == [
        id_ for id_, _ in codec.versions("user_state")
    ]
    with pytest.raises(SchemaRegistryError) as unknown:
        client.get_latest_version("no-such-topic-value")
    assert (unknown.value.http_status_code, unknown.value.error_code) == (404, 40401)
    with pytest.raises(SchemaRegistryError) as missing:
        client.get_schema(987654)
    assert missing.value.error_code == 40403
    fresh = SchemaRegistryClient({"url": _registry_url(fresh_settings)})  # the first one cached the schema's id
    with pytest.raises(SchemaRegistryError) as refused:
        fresh.register_schema("purchases-value", latest.schema)
    assert refused.value.error_code == 42205 and "read-only" in refused.value.error_message


def test_the_api_refuses_ids_no_event_could_carry_without_echoing_them(fresh_settings, worker):
    base = f"http://{fresh_settings.web_host}:{fresh_settings.web_port}/users/"

    def status(path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(base + path, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    for bad in ("%00", "a%0Ab", "%1F", "%FF", "%ED%A0%80", "x" * 257):
        code, body = status(bad)
        assert code == 400, (bad, code, body)
        assert "user_id" not in body and bad not in json.dumps(body)
    assert status("nobody-yet") == (404, {"error": "unknown user", "user_id": "nobody-yet", "detail": "no accepted event names this user"})


def test_with_a_schema_registry_any_id_it_gave_out_is_scored_and_scores_are_read_through_it(fresh_broker, tmp_path):
    """A real registry's ids (tests/registry_double.py serves its API; confluent-kafka's classes are the
    clients): `standing topics` registers Standing's schemas; a producer's AvroSerializer with its defaults
    registers its own compatible purchase schema (a field more) and writes that id; the scores are read with
    AvroDeserializer, as any consumer in a registry shop does."""
    from dataclasses import replace

    from confluent_kafka import Consumer
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from examples.produce_with_confluent_kafka import RegisteringSerializers
    from tests.conftest import _settings_for
    from tests.registry_double import SchemaRegistryDouble

    with SchemaRegistryDouble() as registry:
        settings = replace(_settings_for(fresh_broker, tmp_path), schema_registry_url=registry.url)
        done = subprocess.run(
            [sys.executable, "-m", "standing", "topics", "--broker", settings.broker, "--partitions", str(settings.partitions),
             "--app-id", settings.app_id],
            env={**os.environ, "STANDING_SCHEMA_REGISTRY_URL": registry.url}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0 and "schemas in " + registry.url in done.stdout, done.stderr
        assert {"purchases-value", "scores-value", "dead-letters-value"} <= set(registry.subjects)
        log_path = tmp_path / "worker.log"
        process = processes.start_worker_process(settings, log_path=log_path)
        try:
            processes.wait_for_metrics(settings.metrics_port, process, log_path=log_path)
            events = _events(tmp_path)
            serializers = RegisteringSerializers.from_directory(registry.url, SCHEMAS)
            theirs = json.loads((SCHEMAS / "purchase.avsc").read_text())
            theirs["fields"].append({"name": "loyalty_card", "type": ["null", "string"], "default": None})
            mine = RegisteringSerializers(registry.url, {**_newest_texts(), "purchase": json.dumps(theirs)})
            produced = produce(events, settings.broker, lambda event: (mine if event["type"] == "purchase" else serializers)(
                {**event, "loyalty_card": "C-1"} if event["type"] == "purchase" else event))
            assert len(registry.subjects["purchases-value"]) == 2  # theirs is a version of its own
            asyncio.run(wait_until_quiescent(settings, timeout=300, progress=None))
            samples = processes.scrape_metrics(settings.metrics_port)
            assert processes.sum_samples(samples, "standing_events_accepted_total") == produced
            assert processes.sum_samples(samples, "standing_events_rejected_total") == 0
        finally:
            processes.stop_process(process)
        deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
        consumer = Consumer({"bootstrap.servers": settings.broker, "group.id": "reader", "auto.offset.reset": "earliest"})
        consumer.subscribe(["scores"])
        latest: dict[str, dict] = {}
        idle = 0
        while idle < 10:
            message = consumer.poll(0.5)
            if message is None or message.error():
                idle += 1
                continue
            idle = 0
            if message.value() is None:  # a tombstone: the user was erased
                latest.pop(message.key().decode(), None)
                continue
            score = deserializer(message.value(), SerializationContext("scores", MessageField.VALUE))
            if score["version"] > latest.get(score["user_id"], {"version": -1})["version"]:
                latest[score["user_id"]] = score
        consumer.close()
    result = compare({user: score["raw"] for user, score in latest.items()}, reference_file(events, RULES).raw)
    assert result.within(RULES.error_bound), result


def _newest_texts() -> dict[str, str]:
    registry = json.loads((SCHEMAS / "registry.json").read_text())
    newest = {}
    for entry in sorted(registry["schemas"], key=lambda entry: entry["id"]):
        newest[entry["name"]] = (SCHEMAS / entry["file"]).read_text()
    return {name: newest[name] for name in TOPICS}
