"""A Confluent Schema Registry, in-process, for the tests that need a writable one.

The real registry (Java, keeping its schemas in a Kafka topic) cannot be
installed here, so this serves the part of its REST API that confluent-kafka's
``SchemaRegistryClient``, ``AvroSerializer`` and ``AvroDeserializer`` call,
with its semantics: ids global and given out in order from 1 (a fresh
registry's), the same schema under two subjects keeps one id, registering a
schema already under a subject returns its id, BACKWARD compatibility by
default (the new schema must read data written with the latest one; checked
with the ``avro`` library's checker, as the registry's own AvroSchema does),
and the registry's JSON errors (40401 subject not found, 40402 version not
found, 40403 schema not found, 409 incompatible).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro.schema import to_parsing_canonical_form


class SchemaRegistryDouble:
    def __init__(self, compatibility: str = "BACKWARD") -> None:
        self.compatibility = compatibility
        self.schemas: list[str] = []  # id - 1 -> schema text
        self.subjects: dict[str, list[int]] = {}  # subject -> ids, version - 1 -> id
        self.requests: list[tuple[str, str]] = []
        #: while set, every request is answered 503, as a registry that lost its Kafka store is
        self.unavailable = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "SchemaRegistryDouble":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the registry's semantics -------------------------------------------------

    def register(self, subject: str, text: str) -> tuple[int, dict]:
        with self._lock:
            canonical = _canonical(text)
            ids = self.subjects.get(subject, [])
            for id_ in ids:
                if _canonical(self.schemas[id_ - 1]) == canonical:
                    return 200, {"id": id_}
            if ids and self.compatibility != "NONE" and not _compatible(text, self.schemas[ids[-1] - 1]):
                return 409, {"error_code": 409, "message": f"Schema being registered is incompatible with an earlier schema for subject \"{subject}\""}
            for id_, known in enumerate(self.schemas, 1):
                if _canonical(known) == canonical:
                    break
            else:
                self.schemas.append(text)
                id_ = len(self.schemas)
            self.subjects.setdefault(subject, []).append(id_)
            return 200, {"id": id_}

    def answer(self, method: str, path: str, body: dict | None) -> tuple[int, object]:
        self.requests.append((method, path))
        if self.unavailable:
            return 503, {"error_code": 50301, "message": "Service Unavailable"}
        parts = [unquote(part) for part in urlparse(path).path.split("/") if part]
        if method == "GET" and parts == ["subjects"]:
            return 200, sorted(self.subjects)
        if method == "GET" and parts == ["config"]:
            return 200, {"compatibilityLevel": self.compatibility}
        if parts[:2] == ["schemas", "ids"] and len(parts) == 3 and method == "GET":
            id_ = int(parts[2]) if parts[2].isdigit() else 0
            if not 1 <= id_ <= len(self.schemas):
                return 404, {"error_code": 40403, "message": f"Schema {parts[2]} not found"}
            return 200, {"schema": self.schemas[id_ - 1]}
        if parts[:1] == ["subjects"] and len(parts) >= 2:
            subject = parts[1]
            if method == "POST" and len(parts) == 3 and parts[2] == "versions":
                return self.register(subject, body["schema"])
            ids = self.subjects.get(subject)
            if ids is None:
                return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
            if method == "POST" and len(parts) == 2:
                for version, id_ in enumerate(ids, 1):
                    if _canonical(self.schemas[id_ - 1]) == _canonical(body["schema"]):
                        return 200, {"subject": subject, "id": id_, "version": version, "schema": self.schemas[id_ - 1]}
                return 404, {"error_code": 40403, "message": "Schema not found"}
            if method == "GET" and len(parts) == 3 and parts[2] == "versions":
                return 200, list(range(1, len(ids) + 1))
            if method == "GET" and len(parts) == 4 and parts[2] == "versions":
                version = len(ids) if parts[3] in ("latest", "-1") else int(parts[3])
                if not 1 <= version <= len(ids):
                    return 404, {"error_code": 40402, "message": f"Version {parts[3]} not found."}
                id_ = ids[version - 1]
                return 200, {"subject": subject, "id": id_, "version": version, "schema": self.schemas[id_ - 1]}
        if method == "POST" and parts[:2] == ["compatibility", "subjects"] and len(parts) == 5:
            ids = self.subjects.get(parts[2])
            if ids is None:
                return 404, {"error_code": 40401, "message": f"Subject '{parts[2]}' not found."}
            against = ids[-1] if parts[4] == "latest" else ids[int(parts[4]) - 1]
            return 200, {"is_compatible": self.compatibility == "NONE" or _compatible(body["schema"], self.schemas[against - 1])}
        return 404, {"error_code": 404, "message": "HTTP 404 Not Found"}

    def _handler(self):
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, answer = registry.answer(method, self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's names
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def log_message(self, *_) -> None:
                pass

        return Handler


def _canonical(text: str) -> str:
    return to_parsing_canonical_form(json.loads(text))


def _compatible(reader: str, writer: str) -> bool:
    result = ReaderWriterCompatibilityChecker().get_compatibility(avro.schema.parse(reader), avro.schema.parse(writer))
    return result.compatibility is SchemaCompatibilityType.compatible
