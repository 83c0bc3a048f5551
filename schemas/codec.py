"""Avro encoding in the Confluent wire format: magic byte 0, a 4-byte schema id
(big-endian, from registry.json), then the schemaless Avro body.

Schemas are parsed once at import. Timestamps stay plain ints (milliseconds)
on both sides: the logical type documents them, it does not convert them.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from pathlib import Path

from fastavro import parse_schema, schemaless_reader, schemaless_writer

SCHEMA_DIR = Path(__file__).parent
MAGIC = 0
_HEADER = struct.Struct(">bI")


class DecodeError(Exception):
    """Bytes that are not a record of an expected schema.

    ``reason`` is a machine code: ``not_decodable``, ``unknown_schema_id`` or
    ``wrong_schema``; ``detail`` says what was wrong for a person.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _without_logical_types(schema):
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    return schema


def _load() -> tuple[dict[int, tuple[str, dict]], dict[str, int], dict[str, dict], dict[str, dict]]:
    registry = json.loads((SCHEMA_DIR / "registry.json").read_text())
    by_id: dict[int, tuple[str, dict]] = {}
    newest: dict[str, int] = {}
    raw: dict[str, dict] = {}
    for entry in registry["schemas"]:
        schema = json.loads((SCHEMA_DIR / entry["file"]).read_text())
        by_id[entry["id"]] = (entry["name"], parse_schema(_without_logical_types(copy.deepcopy(schema)), named_schemas={}))
        if entry["id"] > newest.get(entry["name"], 0):
            newest[entry["name"]] = entry["id"]
            raw[entry["name"]] = schema
    writers = {name: by_id[schema_id][1] for name, schema_id in newest.items()}
    return by_id, newest, writers, raw


_BY_ID, _NEWEST_ID, _WRITERS, _RAW = _load()
SCHEMA_NAMES = tuple(sorted(_NEWEST_ID))


def schema_id(name: str) -> int:
    return _NEWEST_ID[name]


def parsed_schema(name: str) -> dict:
    return _WRITERS[name]


def schema_json(name: str) -> dict:
    """The current schema as written in its .avsc file."""
    return _RAW[name]


_HEADERS = {name: _HEADER.pack(MAGIC, schema_id) for name, schema_id in _NEWEST_ID.items()}


def encode(name: str, record: dict) -> bytes:
    out = io.BytesIO()
    out.write(_HEADERS[name])
    schemaless_writer(out, _WRITERS[name], record)
    return out.getvalue()


def decode(data: bytes, expected: str | tuple[str, ...] | None = None) -> tuple[str, dict]:
    """(schema name, record) of framed bytes; DecodeError for anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("not_decodable", f"expected bytes, got {type(data).__name__}")
    if len(data) < _HEADER.size:
        raise DecodeError("not_decodable", f"{len(data)} bytes is too short for the 5-byte header (magic byte 0 + schema id)")
    magic, schema_id_ = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("not_decodable", f"first byte is {magic}, not the magic byte 0 of the Confluent wire format")
    known = _BY_ID.get(schema_id_)
    if known is None:
        raise DecodeError("unknown_schema_id", f"schema id {schema_id_} is not in schemas/registry.json")
    name, writer = known
    if expected is not None and name != expected and (isinstance(expected, str) or name not in expected):
        raise DecodeError("wrong_schema", f"a {name!r} record (schema id {schema_id_}) where {expected!r} was expected")
    body = io.BytesIO(data)
    body.seek(_HEADER.size)
    newest = _WRITERS[name]
    try:
        if writer is newest:
            record = schemaless_reader(body, writer, None)
        else:
            record = schemaless_reader(body, writer, newest)
    except Exception as error:  # fastavro raises many types on garbage (EOFError, ValueError, MemoryError, ...)
        raise DecodeError("not_decodable", f"the body is not a valid {name!r} record: {type(error).__name__}: {error}") from None
    if body.tell() != len(data):
        raise DecodeError("not_decodable", f"{len(data) - body.tell()} bytes left over after a {name!r} record")
    return name, record
