"""Avro encoding in the Confluent wire format: magic byte 0, a 4-byte schema id
(big-endian, from registry.json), then the schemaless Avro body.

Schemas are parsed once at import; ``encode`` and ``decode`` only look things
up. Timestamps stay plain ints (milliseconds) on both sides: the .avsc files
carry ``timestamp-millis`` to document them for other readers, but fastavro
would turn them into datetimes, so the copies parsed here drop logical types.
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


def _load() -> tuple[dict[int, tuple[str, dict]], dict[str, int], dict[str, dict]]:
    """(id -> (name, parsed writer schema), name -> newest id, name -> newest .avsc as written)."""
    registry = json.loads((SCHEMA_DIR / "registry.json").read_text())
    by_id: dict[int, tuple[str, dict]] = {}
    newest: dict[str, int] = {}
    raw: dict[str, dict] = {}
    for entry in registry["schemas"]:
        schema = json.loads((SCHEMA_DIR / entry["file"]).read_text())
        parsed = parse_schema(_without_logical_types(copy.deepcopy(schema)), named_schemas={})
        by_id[entry["id"]] = (entry["name"], parsed)
        if entry["id"] > newest.get(entry["name"], 0):
            newest[entry["name"]] = entry["id"]
            raw[entry["name"]] = schema
    return by_id, newest, raw


_BY_ID, _NEWEST_ID, _RAW = _load()
#: name -> parsed schema of its newest id: what is written, and what every older id is read as.
_WRITERS = {name: _BY_ID[id_][1] for name, id_ in _NEWEST_ID.items()}
_HEADERS = {name: _HEADER.pack(MAGIC, id_) for name, id_ in _NEWEST_ID.items()}
SCHEMA_NAMES = tuple(sorted(_NEWEST_ID))


def schema_id(name: str) -> int:
    """The id written for ``name`` (its newest registered version)."""
    return _NEWEST_ID[name]


def parsed_schema(name: str) -> dict:
    """fastavro's parsed form of the newest version of ``name`` (logical types dropped)."""
    return _WRITERS[name]


def schema_json(name: str) -> dict:
    """The newest schema of ``name`` as written in its .avsc file."""
    return _RAW[name]


def encode(name: str, record: dict) -> bytes:
    """Framed bytes of ``record`` in the newest version of schema ``name``."""
    try:
        header = _HEADERS[name]
    except KeyError:
        raise ValueError(f"no schema named {name!r} in schemas/registry.json; known: {', '.join(SCHEMA_NAMES)}") from None
    out = io.BytesIO()
    out.write(header)
    schemaless_writer(out, _WRITERS[name], record)
    return out.getvalue()


def decode(data: bytes, expected: str | tuple[str, ...] | None = None) -> tuple[str, dict]:
    """(schema name, record) of framed bytes, read as the newest version of
    that schema; DecodeError, and nothing else, for anything that is not."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("not_decodable", f"expected bytes, got {type(data).__name__}")
    if len(data) < _HEADER.size:
        raise DecodeError("not_decodable", f"{len(data)} bytes is too short for the 5-byte header (magic byte 0 + schema id)")
    magic, id_ = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("not_decodable", f"first byte is {magic}, not the magic byte 0 of the Confluent wire format")
    known = _BY_ID.get(id_)
    if known is None:
        raise DecodeError("unknown_schema_id", f"schema id {id_} is not in schemas/registry.json")
    name, writer = known
    if expected is not None and name != expected and (isinstance(expected, str) or name not in expected):
        raise DecodeError("wrong_schema", f"a {name!r} record (schema id {id_}) where {expected!r} was expected")
    body = io.BytesIO(data)
    body.seek(_HEADER.size)
    reader = _WRITERS[name]
    try:
        # Garbage makes fastavro raise almost anything (EOFError, ValueError,
        # UnicodeDecodeError, IndexError, MemoryError on absurd lengths, ...).
        record = schemaless_reader(body, writer) if writer is reader else schemaless_reader(body, writer, reader)
    except Exception as error:
        raise DecodeError(
            "not_decodable", f"the body is not a valid {name!r} record: {type(error).__name__}: {str(error)[:200]}"
        ) from None
    if body.tell() != len(data):
        raise DecodeError("not_decodable", f"{len(data) - body.tell()} bytes left over after a {name!r} record")
    return name, record
