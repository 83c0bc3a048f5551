"""Avro schemas (*.avsc), their registry of ids (registry.json) and the codec."""

from schemas.codec import SCHEMA_DIR, SCHEMA_NAMES, DecodeError, decode, encode, parsed_schema, schema_id

__all__ = ["SCHEMA_DIR", "SCHEMA_NAMES", "DecodeError", "decode", "encode", "parsed_schema", "schema_id"]
