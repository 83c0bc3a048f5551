"""Read Standing's `scores` topic with nothing but aiokafka and fastavro.

Each record is a user's published score, Avro in the Confluent wire format:
byte 0 is the magic byte 0, bytes 1-4 the schema id (big-endian), the rest the
Avro body of the score schema with that id (`schemas/registry.json`; the
newest is `schemas/score.avsc`). The topic is compacted and keyed by
`user_id`; a user's records are in one partition, in the order they were
published, but a worker taking over a partition may republish a score, so
keep the record with the highest `version` per user. A record with no value
(a tombstone) says the user was erased: forget them.

    python examples/consume_scores.py 127.0.0.1:9092   # prints scores as they move
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import sys
from pathlib import Path

import fastavro
from aiokafka import AIOKafkaConsumer

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
#: schema id -> parsed score schema (every version of "score" in registry.json)
SCORE_SCHEMAS = {
    entry["id"]: fastavro.parse_schema(json.loads((SCHEMAS / entry["file"]).read_text()))
    for entry in json.loads((SCHEMAS / "registry.json").read_text())["schemas"]
    if entry["name"] == "score"
}


def decode_score(value: bytes) -> dict:
    magic, schema_id = struct.unpack(">bI", value[:5])
    if magic != 0 or schema_id not in SCORE_SCHEMAS:
        raise ValueError("not a score record in the Confluent wire format")
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), SCORE_SCHEMAS[schema_id])


async def latest_scores(broker: str, *, follow: bool = False, idle_ms: int = 2000) -> dict[str, dict]:
    """Read the topic from the beginning; the current score of every user.

    With `follow`, keep reading and print each move; otherwise stop once no
    record arrived for `idle_ms`.
    """
    consumer = AIOKafkaConsumer("scores", bootstrap_servers=broker, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)  # fmt: skip
    await consumer.start()
    current: dict[str, dict] = {}
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=idle_ms)
            if not batches and not follow:
                return current
            for records in batches.values():
                for record in records:
                    if record.value is None:  # a tombstone: the user was erased
                        current.pop(record.key.decode(), None)
                        if follow:
                            print(f"{record.key.decode()}: erased", flush=True)
                        continue
                    score = decode_score(record.value)
                    known = current.get(score["user_id"])
                    if known is None or score["version"] > known["version"]:
                        current[score["user_id"]] = score
                        if follow:
                            print(f"{score['user_id']}: {score['score']:.1f} (raw {score['raw']:+.3f})", flush=True)
    finally:
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(latest_scores(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092", follow=True))
