"""Standing's schemas, read-only, in the Confluent Schema Registry's REST dialect, on every worker's web port.

Producers that write Avro in the Confluent wire format get schema ids from a
Schema Registry (confluent-kafka's ``AvroSerializer``, Java's
``KafkaAvroSerializer``, Kafka Connect). Pointed at a worker
(``http://worker:6066``) with ``auto.register.schemas`` off and
``use.latest.version`` on, they find each topic's schema under its
TopicNameStrategy subject (``purchases-value``, ``posts-value``, ...) with
the ids of ``schemas/registry.json``, which is what the workers decode.

Paths served (GET only; anything that would change the registry answers 422
with the registry's read-only error):

* ``/subjects``
* ``/subjects/{subject}/versions``
* ``/subjects/{subject}/versions/{version}`` (a number or ``latest``)
* ``/schemas/ids/{id}`` (and ``/schemas/ids/{id}/subjects``)
* ``POST /subjects/{subject}``: is this schema registered under the subject?
  (what a serializer with ``auto.register.schemas`` off and
  ``use.latest.version`` off asks; it changes nothing)

Errors have the registry's JSON form: ``{"error_code": 40401, "message": ...}``.
"""

from __future__ import annotations

import json
from typing import Any

from fastavro.schema import to_parsing_canonical_form

from schemas import codec
from streams.runtime import schema_registry
from streams.events import CATALOG, Catalog
from topology import topics
from topology.topics import changelog_topic

#: The media type the registry answers with (clients accept application/json too).
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

SUBJECT_NOT_FOUND, VERSION_NOT_FOUND, SCHEMA_NOT_FOUND = 40401, 40402, 40403
INVALID_SCHEMA, INVALID_VERSION, READ_ONLY = 42201, 42202, 42205


def subjects(catalog: Catalog = CATALOG, app_id: str = "standing") -> dict[str, str]:
    """Subject (TopicNameStrategy: ``<topic>-value``) -> schema name, for every topic Standing writes or reads."""
    named = schema_registry.subjects(catalog)  # the topics outsiders use
    named[f"{topics.FRIEND_UPDATES}-value"] = "friend_update_batch"
    named[f"{changelog_topic(app_id, topics.USERS_TABLE)}-value"] = "user_state"
    named[f"{changelog_topic(app_id, topics.PAIRS_TABLE)}-value"] = "pair_state"
    return dict(sorted(named.items()))


class ReadOnlyRegistry:
    """Answers registry requests: (HTTP status, JSON body)."""

    def __init__(self, catalog: Catalog = CATALOG, app_id: str = "standing") -> None:
        self._subjects = subjects(catalog, app_id)

    def get(self, path: str) -> tuple[int, Any]:
        parts = [part for part in path.split("?", 1)[0].split("/") if part]
        if parts == ["subjects"]:
            return 200, list(self._subjects)
        if len(parts) >= 3 and parts[0] == "subjects" and parts[2] == "versions":
            subject = parts[1]
            name = self._subjects.get(subject)
            if name is None:
                return _error(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
            versions = codec.versions(name)
            if len(parts) == 3:
                return 200, list(range(1, len(versions) + 1))
            if len(parts) == 4:
                return self._version(subject, versions, parts[3])
        if len(parts) in (3, 4) and parts[:2] == ["schemas", "ids"]:
            return self._by_id(parts[2], subjects_only=len(parts) == 4 and parts[3] == "subjects")
        return _error(404, SUBJECT_NOT_FOUND if parts[:1] == ["subjects"] else 404, f"Not found: /{'/'.join(parts)}")

    def lookup(self, subject: str, body: Any) -> tuple[int, Any]:
        """POST /subjects/{subject}: the version of ``subject`` whose schema is the one posted."""
        name = self._subjects.get(subject)
        if name is None:
            return _error(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
        try:
            posted = to_parsing_canonical_form(json.loads(body["schema"]))
        except Exception as error:  # not JSON, not a schema: the registry's "invalid schema"
            return _error(422, INVALID_SCHEMA, f"Invalid schema: {error}")
        for number, (id_, schema) in enumerate(codec.versions(name), 1):
            if to_parsing_canonical_form(schema) == posted:
                return 200, {"subject": subject, "version": number, "id": id_, "schema": _text(schema)}
        return _error(404, SCHEMA_NOT_FOUND, f"Schema not found under subject '{subject}'")

    def refuse(self, method: str, path: str) -> tuple[int, Any]:
        return _error(
            422,
            READ_ONLY,
            f"{method} /{path.strip('/')}: this registry is read-only. Standing's schemas are fixed by its "
            "workers (schemas/registry.json); produce with auto.register.schemas=false and use.latest.version=true",
        )

    def _version(self, subject: str, versions: list[tuple[int, dict]], asked: str) -> tuple[int, Any]:
        if asked == "latest" or asked == "-1":
            number = len(versions)
        else:
            try:
                number = int(asked)
            except ValueError:
                return _error(422, INVALID_VERSION, f"The specified version '{asked}' is not a valid version id.")
            if not 1 <= number <= len(versions):
                return _error(404, VERSION_NOT_FOUND, f"Version {asked} not found.")
        id_, schema = versions[number - 1]
        return 200, {"subject": subject, "version": number, "id": id_, "schema": _text(schema)}

    def _by_id(self, asked: str, *, subjects_only: bool) -> tuple[int, Any]:
        try:
            id_ = int(asked)
        except ValueError:
            return _error(404, SCHEMA_NOT_FOUND, f"Schema {asked} not found")
        for subject, name in self._subjects.items():
            for known, schema in codec.versions(name):
                if known == id_:
                    if subjects_only:
                        return 200, [s for s, n in self._subjects.items() if n == name]
                    return 200, {"schema": _text(schema)}
        return _error(404, SCHEMA_NOT_FOUND, f"Schema {id_} not found")


def _text(schema: dict) -> str:
    return json.dumps(schema, separators=(",", ":"))


def _error(status: int, code: int, message: str) -> tuple[int, dict]:
    return status, {"error_code": code, "message": message}
