"""The read-only query API on every worker (Faust's web server).

GET /users/{user_id}  the score with its explanation (404 for an unknown user);
                      a request reaching a worker that does not own the
                      user's partition is forwarded to the owner by Faust's
                      table router.
GET /health           the process is up.
GET /ready            the worker holds recovered partitions (503 otherwise).
"""

from __future__ import annotations

from faust import web

from streams.runtime.agents import Scorer
from streams.explain import explain
from topology.routing import partition_for

MAX_USER_ID_LENGTH = 256


def install_api(scorer: Scorer) -> None:
    app = scorer.app
    partitions = scorer.settings.partitions

    @app.page("/users/{user_id}")
    @app.table_route(table=scorer.users_table, match_info="user_id")
    async def user(view: web.View, request: web.Request, user_id: str) -> web.Response:
        if not user_id or len(user_id) > MAX_USER_ID_LENGTH:
            return view.json({"error": "bad user id", "detail": f"user ids are 1 to {MAX_USER_ID_LENGTH} characters"}, status=400)
        state = scorer.users.get(partition_for(user_id, partitions), user_id)
        if state is None:
            return view.json(
                {"error": "unknown user", "user_id": user_id, "detail": "no accepted event has named this user"}, status=404
            )
        return view.json(explain(user_id, state, scorer.rules))

    @app.page("/health")
    async def health(view: web.View, request: web.Request) -> web.Response:
        return view.json({"status": "ok"})

    @app.page("/ready")
    async def ready(view: web.View, request: web.Request) -> web.Response:
        if scorer.ready:
            return view.json({"status": "ready"})
        return view.json({"status": "recovering"}, status=503)
