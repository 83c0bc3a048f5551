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
from fastavro.schema import to_parsing_canonical_form

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


def _load() -> tuple[dict[int, tuple[str, dict]], dict[str, int], dict[str, dict], dict[str, list[tuple[int, dict]]]]:
    """(id -> (name, parsed writer schema), name -> newest id, name -> newest .avsc as written,
    name -> every (id, .avsc as written), oldest first)."""
    registry = json.loads((SCHEMA_DIR / "registry.json").read_text())
    by_id: dict[int, tuple[str, dict]] = {}
    newest: dict[str, int] = {}
    raw: dict[str, dict] = {}
    versions: dict[str, list[tuple[int, dict]]] = {}
    for entry in sorted(registry["schemas"], key=lambda entry: entry["id"]):
        schema = json.loads((SCHEMA_DIR / entry["file"]).read_text())
        parsed = parse_schema(_without_logical_types(copy.deepcopy(schema)), named_schemas={})
        by_id[entry["id"]] = (entry["name"], parsed)
        versions.setdefault(entry["name"], []).append((entry["id"], schema))
        if entry["id"] > newest.get(entry["name"], 0):
            newest[entry["name"]] = entry["id"]
            raw[entry["name"]] = schema
    return by_id, newest, raw, versions


_BY_ID, _NEWEST_ID, _RAW, _VERSIONS = _load()
#: name -> parsed schema of its newest id: what is written, and what every older id is read as.
_WRITERS = {name: _BY_ID[id_][1] for name, id_ in _NEWEST_ID.items()}
_HEADERS = {name: _HEADER.pack(MAGIC, id_) for name, id_ in _NEWEST_ID.items()}
SCHEMA_NAMES = tuple(sorted(_NEWEST_ID))


def register(name: str, schema: dict, id_: int) -> None:
    """Add a schema that is not in registry.json (a test's own event type, an extension).

    It becomes the newest version of ``name``: written from now on, and read
    under ``id_``. An id already given to another schema is refused.
    """
    global SCHEMA_NAMES
    known = _BY_ID.get(id_)
    if known is not None and known[0] != name:
        raise ValueError(f"schema id {id_} is already {known[0]!r}")
    parsed = parse_schema(_without_logical_types(copy.deepcopy(schema)), named_schemas={})
    _BY_ID[id_] = (name, parsed)
    _NEWEST_ID[name] = id_
    _RAW[name] = schema
    if id_ not in [known_id for known_id, _ in _VERSIONS.get(name, [])]:
        _VERSIONS.setdefault(name, []).append((id_, schema))
    _WRITERS[name] = parsed
    _HEADERS[name] = _HEADER.pack(MAGIC, id_)
    SCHEMA_NAMES = tuple(sorted(_NEWEST_ID))


def schema_id(name: str) -> int:
    """The id written for ``name`` (its newest registered version)."""
    return _NEWEST_ID[name]


#: Ids a Schema Registry gave out (streams/runtime/schema_registry.py): id -> (name, parsed schema).
#: Kept apart from registry.json's ids: the same number can mean one schema
#: there and another here, and the topic a record came from decides.
_FROM_REGISTRY: dict[int, tuple[str, dict]] = {}
#: Asked for an id neither knows: ``resolve(id) -> (name, schema as written) | None``.
_RESOLVER = None


def set_resolver(resolve) -> None:
    """Decode ids nobody listed yet with ``resolve(id) -> (name, schema) | None`` (None: unknown); None turns it off."""
    global _RESOLVER
    _RESOLVER = resolve


def use_id(name: str, id_: int, schema: dict, *, write: bool) -> None:
    """Read ``id_`` as ``name`` written with ``schema`` (a registry's id); with ``write``, write ``name`` with it.

    Only ids of ``name``'s newest schema may be written with: that is the body ``encode`` writes.
    """
    if write and to_parsing_canonical_form(schema) != to_parsing_canonical_form(_RAW[name]):
        raise ValueError(f"schema id {id_} is not the newest {name!r} schema, which is what Standing writes")
    _FROM_REGISTRY[id_] = (name, parse_schema(_without_logical_types(copy.deepcopy(schema)), named_schemas={}))
    if write:
        _HEADERS[name] = _HEADER.pack(MAGIC, id_)


def forget_registry() -> None:
    """Back to registry.json's ids only (tests; a worker that stops using a registry)."""
    _FROM_REGISTRY.clear()
    set_resolver(None)
    for name, id_ in _NEWEST_ID.items():
        _HEADERS[name] = _HEADER.pack(MAGIC, id_)


def _lookup(id_: int, expected) -> tuple[str, dict] | None:
    """The schema ``id_`` names: the registry's when it is of the ``expected`` name, else registry.json's,
    else the registry is asked (a producer may have registered its own version)."""

    def fits(known) -> bool:
        return known is not None and (
            expected is None or known[0] == expected or (not isinstance(expected, str) and known[0] in expected)
        )

    local, remote = _BY_ID.get(id_), _FROM_REGISTRY.get(id_)
    if fits(remote):
        return remote
    if fits(local):
        return local
    if remote is None and _RESOLVER is not None:
        found = _RESOLVER(id_)
        if found is not None:
            name, schema = found
            parsed = parse_schema(_without_logical_types(copy.deepcopy(schema)), named_schemas={})
            remote = _FROM_REGISTRY[id_] = (name, parsed)
    return remote if fits(remote) else (local or remote)


def unregister(name: str) -> None:
    """Remove a schema added with ``register`` (every id of ``name`` that registry.json does not list)."""
    global SCHEMA_NAMES
    listed = {entry["id"] for entry in json.loads((SCHEMA_DIR / "registry.json").read_text())["schemas"]}
    kept = [(id_, schema) for id_, schema in _VERSIONS.get(name, []) if id_ in listed]
    for id_, _ in _VERSIONS.get(name, []):
        if id_ not in listed:
            del _BY_ID[id_]
    if kept:
        _VERSIONS[name] = kept
        _NEWEST_ID[name], _RAW[name] = kept[-1]
        _WRITERS[name] = _BY_ID[_NEWEST_ID[name]][1]
        _HEADERS[name] = _HEADER.pack(MAGIC, _NEWEST_ID[name])
    else:
        for table in (_VERSIONS, _NEWEST_ID, _RAW, _WRITERS, _HEADERS):
            table.pop(name, None)
    SCHEMA_NAMES = tuple(sorted(_NEWEST_ID))


def versions(name: str) -> list[tuple[int, dict]]:
    """Every registered version of ``name``: (schema id, schema as written in its .avsc), oldest first."""
    return list(_VERSIONS.get(name, ()))


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
    that schema; DecodeError, and nothing else, for anything that is not.

    A resolver (``set_resolver``) that cannot answer for an id raises its
    own error instead, a ``ConnectionError``: no record is to blame."""
    name, _, record = decode_with_id(data, expected)
    return name, record


def decode_with_id(data: bytes, expected: str | tuple[str, ...] | None = None) -> tuple[str, int, dict]:
    """``decode``, and the schema id the bytes were written with (for readers of packed columns)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("not_decodable", f"expected bytes, got {type(data).__name__}")
    if len(data) < _HEADER.size:
        raise DecodeError("not_decodable", f"{len(data)} bytes is too short for the 5-byte header (magic byte 0 + schema id)")
    magic, id_ = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("not_decodable", f"first byte is {magic}, not the magic byte 0 of the Confluent wire format")
    known = _BY_ID.get(id_) if not _FROM_REGISTRY and _RESOLVER is None else _lookup(id_, expected)
    if known is None:
        where = "schemas/registry.json or the Schema Registry" if _RESOLVER is not None else "schemas/registry.json"
        raise DecodeError("unknown_schema_id", f"schema id {id_} is not in {where}")
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
    return name, id_, record
