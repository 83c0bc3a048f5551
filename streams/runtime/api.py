"""The read-only HTTP API on every worker (Faust's web server).

GET /users/{user_id}  the score with its explanation (404 for an unknown or
                      erased user, 400 for a user id that could not be one);
                      a request reaching a worker that does not own the
                      user's partition is forwarded to the owner by Faust's
                      table router.
GET /users/{user_id}/export
                      everything held about the user (spec section 9).
GET /health           the process is up.
GET /ready            the worker holds recovered partitions (503 otherwise).
GET /subjects/...,    Standing's schemas in the Confluent Schema Registry's
    /schemas/ids/...  dialect (streams/runtime/registry_api.py).

Anything but GET (and the registry's lookup POST) answers 405.
"""

from __future__ import annotations

import json
import urllib.parse

from faust import web

from streams import batch as core
from streams import events as ev
from streams import scoring
from streams.explain import explain, export
from streams.runtime.agents import Scorer
from streams.runtime.registry_api import CONTENT_TYPE, ReadOnlyRegistry
from topology.routing import partition_for

MAX_USER_ID_LENGTH = ev.MAX_ID_LENGTH


def user_id_from(raw_segment: str) -> tuple[str | None, str | None]:
    """(user id, None) from a URL path segment as sent, or (None, why it cannot be a user id).

    The same rules as ids in events (1 to 256 characters, no control
    characters, valid UTF-8): a request for an id no event could carry is a
    bad request, not an unknown user, and its bytes are not echoed back.
    """
    try:
        text = urllib.parse.unquote_to_bytes(raw_segment).decode("utf-8")
    except UnicodeDecodeError:
        return None, "the user id is not UTF-8 text; percent-encode the UTF-8 bytes of the id"
    try:
        return ev.id_field({"user_id": text}, "user_id", "request"), None
    except ev.Rejected as rejection:
        detail = {
            "empty_id": "the user id is empty",
            "id_too_long": f"user ids have at most {MAX_USER_ID_LENGTH} characters",
            "bad_id": "user ids may not contain control characters",
        }.get(rejection.reason, rejection.detail)
        return None, detail


def install_api(scorer: Scorer) -> None:
    app = scorer.app
    partitions = scorer.settings.partitions
    registry = ReadOnlyRegistry(scorer.catalog, scorer.settings.app_id)

    def segment_of(request: web.Request, from_end: int) -> str:
        return request.raw_path.split("?", 1)[0].rstrip("/").split("/")[-1 - from_end]

    def held(user_id: str):
        """(state, rules) of the user, made valid at their partition's stream time; None when nothing names them."""
        partition = partition_for(user_id, partitions)
        state = scorer.users.get(partition, user_id)
        if state is None or not state.exists:
            return None
        clock, rules, _ = core.partition_time(scorer.users, partition, scorer.context)
        scoring.rebase(state, clock, rules)
        return state, rules

    def unknown(view: web.View, user_id: str) -> web.Response:
        return view.json(
            {"error": "unknown user", "user_id": user_id, "detail": "no accepted event names this user"}, status=404
        )

    @app.page("/users/{user_id}")
    async def user(view: web.View, request: web.Request, user_id: str) -> web.Response:
        # Checked before routing: an id no event could carry is refused by whichever worker gets it.
        checked, problem = user_id_from(segment_of(request, 0))
        if checked is None:
            return view.json({"error": "bad user id", "detail": problem}, status=400)
        return await owned_user(view, request, user_id=checked)

    @app.table_route(table=scorer.users_table, match_info="user_id")
    async def owned_user(view: web.View, request: web.Request, user_id: str) -> web.Response:
        found = held(user_id)
        if found is None:
            return unknown(view, user_id)
        state, rules = found
        return view.json(explain(user_id, state, rules, friend_detail=scorer.settings.explain_friends))

    @app.page("/users/{user_id}/export")
    async def user_export(view: web.View, request: web.Request, user_id: str) -> web.Response:
        checked, problem = user_id_from(segment_of(request, 1))
        if checked is None:
            return view.json({"error": "bad user id", "detail": problem}, status=400)
        return await owned_export(view, request, user_id=checked)

    @app.table_route(table=scorer.users_table, match_info="user_id")
    async def owned_export(view: web.View, request: web.Request, user_id: str) -> web.Response:
        found = held(user_id)
        if found is None:
            return unknown(view, user_id)
        state, rules = found
        return view.json(export(user_id, state, rules, scorer.catalog))

    @app.page("/health")
    async def health(view: web.View, request: web.Request) -> web.Response:
        return view.json({"status": "ok"})

    @app.page("/ready")
    async def ready(view: web.View, request: web.Request) -> web.Response:
        if scorer.ready:
            return view.json({"status": "ready"})
        return view.json({"status": "recovering"}, status=503)

    class RegistryView(web.View):
        """A registry path: GET answers, anything that would change the registry is refused."""

        def _answer(self, status_body) -> web.Response:
            status, body = status_body
            return self.bytes(json.dumps(body).encode(), content_type=CONTENT_TYPE, status=status)

        async def get(self, request: web.Request, **kwargs) -> web.Response:
            return self._answer(registry.get(request.path))

        async def post(self, request: web.Request, **kwargs) -> web.Response:
            parts = [part for part in request.path.split("/") if part]
            if len(parts) == 2 and parts[0] == "subjects":  # "is this schema registered?": a lookup
                try:
                    body = json.loads(await request.read())
                except ValueError:
                    body = {}
                return self._answer(registry.lookup(parts[1], body))
            return self._answer(registry.refuse("POST", request.path))

        async def put(self, request: web.Request, **kwargs) -> web.Response:
            return self._answer(registry.refuse("PUT", request.path))

        async def delete(self, request: web.Request, **kwargs) -> web.Response:
            return self._answer(registry.refuse("DELETE", request.path))

    for path in (
        "/subjects",
        "/subjects/{subject}",
        "/subjects/{subject}/versions",
        "/subjects/{subject}/versions/{version}",
        "/schemas/ids/{id}",
        "/schemas/ids/{id}/subjects",
    ):
        app.page(path)(type(f"Registry{abs(hash(path))}", (RegistryView,), {}))
