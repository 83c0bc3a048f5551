"""A real Confluent Schema Registry, when there is one (``STANDING_SCHEMA_REGISTRY_URL``).

Without one, schema ids are those of ``schemas/registry.json`` and every
worker serves them read-only (``registry_api``). With one, producers that
register their own schemas (``AvroSerializer`` with ``auto.register.schemas``,
Java's ``KafkaAvroSerializer``, Kafka Connect) write the registry's ids, so:

* whatever creates topics (``standing topics``, a worker at start, the
  producer) also registers Standing's schemas under their TopicNameStrategy
  subjects, oldest version first, each checked for compatibility with the
  subject's latest version before it is registered (the registry's own
  check, at the subject's compatibility level), and then writes the records
  others read (scores, dead letters, events) with the registry's ids;
* every process decodes any id the registry gave out: an id neither
  registry.json nor this process has seen is asked for once (the client
  caches it; an unknown id is asked again after a minute at most), matched
  to Standing's schema by its Avro full name, and read as Standing's newest
  version of that schema (Avro schema resolution), so a producer's own
  compatible version of a schema (an added field with a default, say) scores.

Only the subjects outsiders read or write are registered: the input topics,
``scores`` and ``dead-letters``. Standing's internal topics (changelogs,
friend updates, rules, stream time) keep registry.json's ids. Which source an
id comes from is decided by the topic: the same number can be a registry id
on ``purchases`` and a registry.json id on a changelog (``codec._lookup``).

The client is confluent-kafka's ``SchemaRegistryClient`` (the ``registry``
extra); its calls block, so they run in a thread at start. Decoding a record
with a new id asks the registry from the event loop: once per id, with a
short timeout and no retry of the client's own. A registry that cannot
answer (unreachable, or any error but "not found") blames no record: the
lookup raises ``RegistryUnavailable``, a ``ConnectionError``, so the lane
reads the batch again after a back-off (``streams.runtime.failures``)
instead of dead-lettering valid events as ``unknown_schema_id``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from schemas import codec
from streams.events import CATALOG, Catalog
from topology import topics
from topology.settings import Settings

#: How long an id the registry did not know stays unknown before it is asked again, seconds.
UNKNOWN_ID_TTL = 60.0
#: HTTP timeout for one registry request, seconds.
REQUEST_TIMEOUT = 10
#: The same for a lookup while records are decoded, which blocks the event loop
#: (the lanes, commits and the query API): short, and not retried by the client itself.
LOOKUP_TIMEOUT = 2
#: After the registry could not answer a lookup, records with ids not yet
#: known fail at once (no request) for this long, seconds.
UNAVAILABLE_RETRY_S = 5.0


class RegistryError(Exception):
    """The registry refused or could not be reached; the message says what to do."""


class RegistryUnavailable(ConnectionError):
    """A schema id could not be looked up: the registry's fault, not the record's (a transient failure)."""


def subjects(catalog: Catalog = CATALOG) -> dict[str, str]:
    """Subject (TopicNameStrategy) -> schema name, for the topics outsiders read or write."""
    named = {f"{t.topic}-value": t.name for t in catalog.types}
    named[f"{topics.SCORES}-value"] = "score"
    named[f"{topics.DEAD_LETTERS}-value"] = "dead_letter"
    return named


def client_for(settings: Settings, *, lookups: bool = False):
    """confluent-kafka's registry client for ``settings`` (``lookups``: the one asked while records are decoded)."""
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError:  # pragma: no cover - the extra is part of the test install
        raise RegistryError(
            "STANDING_SCHEMA_REGISTRY_URL is set but confluent-kafka's Schema Registry client is not installed: "
            "pip install 'standing[registry]'"
        ) from None
    config: dict[str, Any] = {"url": settings.schema_registry_url, "timeout": REQUEST_TIMEOUT}
    if lookups:
        config.update({"timeout": LOOKUP_TIMEOUT, "max.retries": 0})
    if settings.schema_registry_user_info:
        config["basic.auth.user.info"] = settings.schema_registry_user_info
    if settings.ssl_cafile and settings.schema_registry_url.startswith("https"):
        config["ssl.ca.location"] = settings.ssl_cafile
    return SchemaRegistryClient(config)


def ensure(settings: Settings, catalog: Catalog = CATALOG, client=None) -> dict[str, int]:
    """Register what is missing (compatibility checked first), then write with the registry's ids.

    Returns subject -> id of the schema Standing writes under it. Blocking:
    call it from a thread in async code.
    """
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = client or client_for(settings)
    written: dict[str, int] = {}
    try:
        for subject, name in subjects(catalog).items():
            versions = codec.versions(name)
            for index, (_, schema) in enumerate(versions):
                text = json.dumps(schema, separators=(",", ":"))
                candidate = Schema(text, "AVRO")
                try:
                    id_ = client.lookup_schema(subject, candidate).schema_id
                except SchemaRegistryError as error:
                    if error.http_status_code != 404:
                        raise
                    id_ = None
                if id_ is None:
                    try:
                        compatible = client.test_compatibility(subject, candidate)
                    except SchemaRegistryError as error:
                        if error.http_status_code != 404:  # 404: a new subject, nothing to be compatible with
                            raise
                        compatible = True
                    if not compatible:
                        raise RegistryError(
                            f"the {name!r} schema (schemas/{_file_of(name, index)}) is not compatible with the latest "
                            f"version of subject {subject!r} at {settings.schema_registry_url} (at that subject's "
                            "compatibility level); nothing was registered for it. Compare the two with GET "
                            f"/subjects/{subject}/versions/latest, then change the schema or the subject's level"
                        )
                    id_ = client.register_schema(subject, candidate)
                newest = index == len(versions) - 1
                codec.use_id(name, id_, schema, write=newest)
                if newest:
                    written[subject] = id_
    except SchemaRegistryError as error:
        raise RegistryError(
            f"the Schema Registry at {settings.schema_registry_url} answered {error.http_status_code} "
            f"(error {error.error_code}): {error.error_message}"
        ) from None
    except (OSError, ValueError) as error:  # connection refused, timeouts (httpx errors are OSError-like or ValueError)
        raise RegistryError(f"cannot reach the Schema Registry at {settings.schema_registry_url}: {error}") from None
    except Exception as error:
        if type(error).__module__.startswith("httpx"):
            raise RegistryError(f"cannot reach the Schema Registry at {settings.schema_registry_url}: {error}") from None
        raise
    install_resolver(settings, catalog)
    return written


def install_resolver(settings: Settings, catalog: Catalog = CATALOG) -> None:
    """Decode ids the registry gave out (asked for lazily, once per id)."""
    codec.set_resolver(_Resolver(client_for(settings, lookups=True), catalog, settings.schema_registry_url))


class _Resolver:
    """id -> (Standing's schema name, the schema as registered), by the Avro full name."""

    def __init__(self, client, catalog: Catalog, url: str) -> None:
        self._client = client
        self._url = url
        self._names = {
            _full_name(schema): name for name in set(subjects(catalog).values()) for _, schema in codec.versions(name)
        }
        self._unknown: dict[int, float] = {}
        self._down_until = 0.0
        self._down_why = ""

    def __call__(self, id_: int):
        now = time.monotonic()
        if now < self._down_until:
            raise RegistryUnavailable(self._down_why)
        if now < self._unknown.get(id_, 0.0):
            return None
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            registered = self._client.get_schema(id_)
        except SchemaRegistryError as error:
            if error.http_status_code != 404:
                self._down(now, id_, f"answered {error.http_status_code} (error {error.error_code}: {error.error_message})")
            registered = None  # an id it never gave out: the record is dead-lettered as unknown_schema_id
        except Exception as error:  # connection refused, timeouts (httpx's errors)
            self._down(now, id_, f"cannot be reached ({type(error).__name__}: {error})")
        try:
            schema = json.loads(registered.schema_str) if registered is not None else None
        except ValueError:  # not JSON: not an Avro schema (Protobuf, JSON Schema's own text), so not Standing's
            schema = None
        name = self._names.get(_full_name(schema)) if isinstance(schema, dict) and registered.schema_type in (None, "AVRO") else None
        if name is None:
            self._unknown[id_] = time.monotonic() + UNKNOWN_ID_TTL
            return None
        return name, schema

    def _down(self, now: float, id_: int, why: str) -> None:
        self._down_why = (
            f"the Schema Registry at {self._url} {why} when asked for schema id {id_}; records with ids this "
            f"worker has not seen yet wait (their batch is read again) until it answers: check the registry"
        )
        self._down_until = now + UNAVAILABLE_RETRY_S
        raise RegistryUnavailable(self._down_why)


def _full_name(schema: Any) -> str | None:
    if not isinstance(schema, dict) or "name" not in schema:
        return None
    name = schema["name"]
    return name if "." in name or not schema.get("namespace") else f"{schema['namespace']}.{name}"


def _file_of(name: str, index: int) -> str:
    entries = [e for e in json.loads((codec.SCHEMA_DIR / "registry.json").read_text())["schemas"] if e["name"] == name]
    entries.sort(key=lambda e: e["id"])
    return entries[index]["file"] if index < len(entries) else f"{name}.avsc"
