"""The embedded broker's workarounds, in one place, behind one setting.

``make demo`` and the integration tests run noida-db 0.2.3, an embedded
Kafka-compatible broker; production runs Apache Kafka (docker-compose.yml).
noida-db differs from Kafka in four ways that matter here:

1. **It answers an empty fetch at once** instead of holding it for
   ``fetch.max.wait.ms``: every idle consumer re-asks in a tight loop (80% of
   a core, and as much again in the broker). Worked around: the fetch
   pacing below waits out ``STANDING_EMPTY_FETCH_PAUSE_MS`` after an empty
   answer (``FETCH_REQUEST``). On Kafka an empty answer comes after the long
   poll, so the pacing would change nothing there either.
2. **It never expires a dead group member**: a SIGKILLed worker stays in the
   group for ever and its partitions are never processed again. Worked
   around: the reaper below removes members whose process no longer
   answers (``DeadMemberReaper``).
3. **It loses records it acknowledged when it stops.** Not worked around
   here (nothing a client can do): the tests never rely on a stopped broker's
   data, and ``standing demo``, when it starts its own broker, starts it and
   its worker from empty directories (``standing/demo.py: _start_afresh``);
   see the README, "What the embedded broker is not".
4. **Its autosave takes most of a core whenever data changes** (66-94% of
   one, even at 15 events/s). Not worked around (it is the broker's own
   CPU): on 2 cores the worker then waits for a core, which sets most of
   the bench's live latency tail
   (ops/bench/results/live-latency-and-the-broker-2026-12-05.md).

The switch is ``Settings.embedded_broker_workarounds``
(``STANDING_EMBEDDED_BROKER_WORKAROUNDS=auto|1|0``): ``auto`` turns them on
for a broker on loopback (the embedded broker, started by ``standing
broker``, ``demo``, ``replay`` or the tests) and off for any other, so no
workaround changes behaviour on Apache Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.group import LeaveGroupRequest

from streams.runtime import metrics
from streams.runtime.patches import Patch
from topology.settings import Settings

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def workarounds_enabled(settings: Settings) -> bool:
    """Whether this process works around the embedded broker (see the module docstring)."""
    if settings.embedded_broker_workarounds is not None:
        return settings.embedded_broker_workarounds
    hosts = {server.rsplit(":", 1)[0] for server in settings.bootstrap_servers}
    return hosts <= LOOPBACK_HOSTS


# --- 1. empty fetches: client-side long polling ----------------------------------------

_pause_s = 0.0


async def _paced_fetch_request(self, assignment, node_id, request):
    started = time.monotonic()
    has_new_data = await FETCH_REQUEST.original(self, assignment, node_id, request)
    if not has_new_data and _pause_s > 0:
        remaining = _pause_s - (time.monotonic() - started)
        if remaining > 0:
            try:
                await asyncio.sleep(remaining)
            except asyncio.CancelledError:
                # close() or a new assignment cancels pending fetches and awaits
                # them; aiokafka's own request swallows the cancel the same way.
                pass
    return has_new_data


FETCH_REQUEST = Patch(
    target="aiokafka.consumer.fetcher:Fetcher._proc_fetch_request",
    sha256="59bf948fff47eed580671971252454daa614df479733f3bedfefe95bc4d8ad30",
    why="noida-db answers empty fetches at once, so idle consumers spin (80% of a core each); "
    "an empty answer is followed by a pause of STANDING_EMPTY_FETCH_PAUSE_MS before that broker is asked again",
    shown_by="tests/integration/test_broker.py::test_fetch_pacing_calms_idle_consumers_and_still_delivers",
    replacement=_paced_fetch_request,
    where="streams/runtime/embedded_broker.py",
    embedded_broker_only=True,
)
PATCHES = [FETCH_REQUEST]


def pace_empty_fetches(pause_ms: int) -> None:
    """Pace empty fetches in this process to one per ``pause_ms`` per broker (0 turns it off)."""
    global _pause_s
    _pause_s = max(0, pause_ms) / 1000.0
    if _pause_s:
        FETCH_REQUEST.apply()
    else:
        FETCH_REQUEST.remove()


# --- 2. dead members: the reaper ---------------------------------------------------------

INTERVAL_S = 5.0

#: This process's token: part of its Kafka client id and answered by its
#: metrics server, so a probe tells this process from whatever listens on the
#: same port later (a replacement worker on another data directory, which
#: once kept a dead member "alive" for good).
PROCESS_TOKEN = secrets.token_hex(6)
IDENTITY_METRIC = "standing_worker_identity_info"


def client_id(metrics_port: int) -> str:
    """The worker's Kafka client id: where its process answers, and which process it is."""
    return f"standing-metrics-{metrics_port}-{PROCESS_TOKEN}"


def parse_client_id(client_id: str) -> tuple[int, str | None] | None:
    """(metrics port, process token) of ``standing-metrics-PORT[-TOKEN]``; None if not a worker's."""
    prefix = "standing-metrics-"
    if not client_id.startswith(prefix):
        return None
    port, _, token = client_id[len(prefix):].partition("-")
    if not port.isdigit() or int(port) == 0:
        return None
    return int(port), token or None


def liveness_url(client_id: str, client_host: str) -> str | None:
    """Where a member's process answers while it lives: its metrics server, asked for its identity.

    The worker names its metrics port and its process token in its Kafka
    client id; the broker reports the member's host. That server is a thread
    started before Faust, so it answers during start-up, recovery and a stuck
    rebalance alike, and stops only with the process.
    """
    parsed = parse_client_id(client_id)
    if parsed is None:
        return None
    host = client_host.lstrip("/") or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{parsed[0]}/metrics?name[]={IDENTITY_METRIC}"


class DeadMemberReaper:
    """Tracks how long each member has been unreachable; evicts the long-silent ones."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.grace_s = 2 * settings.session_timeout
        self.silent_since: dict[str, float] = {}
        self._admin: AIOKafkaAdminClient | None = None
        self._client: AIOKafkaClient | None = None
        self._http: aiohttp.ClientSession | None = None

    async def check(self) -> list[str]:
        """One round; returns the member ids evicted."""
        try:
            members = await self._members()
        except Exception as error:  # the broker may be restarting; try next round
            log.debug("reaper: could not describe the group: %r", error)
            await self.close()
            return []
        now = time.monotonic()
        present = {member_id for member_id, _, _ in members}
        for gone in set(self.silent_since) - present:
            del self.silent_since[gone]
        evicted = []
        for member_id, url, token in members:
            if url is None or await self._answers(url, token):
                self.silent_since.pop(member_id, None)
                continue
            since = self.silent_since.setdefault(member_id, now)
            if now - since >= self.grace_s:
                if await self._evict(member_id):
                    log.warning("removed group member %s (%s): no answer for %.0f s; its partitions move to live workers", member_id, url, now - since)
                    metrics.MEMBERS_EVICTED.inc()
                    evicted.append(member_id)
                    self.silent_since.pop(member_id, None)
        return evicted

    async def _members(self) -> list[tuple[str, str | None, str | None]]:
        """(member id, liveness url, process token) of every member of the group."""
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap_servers, **self.settings.kafka_client_options())
            await self._admin.start()
        described = await self._admin.describe_consumer_groups([self.settings.app_id])
        members = []
        for response in described:
            for group in response.groups:
                error_code, name = group[0], group[1]
                if error_code or name != self.settings.app_id:
                    continue
                for member in group[5]:
                    parsed = parse_client_id(member[1])
                    members.append((member[0], liveness_url(member[1], member[2]), parsed[1] if parsed else None))
        return members

    async def _answers(self, url: str, token: str | None) -> bool:
        """The member's own process answers: the token of its client id (any answer for ids without one)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        try:
            async with self._http.get(url) as response:
                if response.status >= 500:
                    return False
                if token is None:
                    return True  # a worker from before tokens: the port answering is all there is to check
                return f'token="{token}"' in await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def _evict(self, member_id: str) -> bool:
        try:
            if self._client is None:
                self._client = AIOKafkaClient(bootstrap_servers=self.settings.bootstrap_servers, **self.settings.kafka_client_options())
                await self._client.bootstrap()
            coordinator = await self._client.coordinator_lookup(0, self.settings.app_id)
            response = await self._client.send(coordinator, LeaveGroupRequest(self.settings.app_id, member_id))
            return response.error_code == 0
        except Exception as error:
            log.warning("could not remove group member %s: %r", member_id, error)
            await self.close()
            return False

    async def close(self) -> None:
        for closer in (
            self._admin.close() if self._admin else None,
            self._client.close() if self._client else None,
            self._http.close() if self._http else None,
        ):
            if closer is not None:
                try:
                    await closer
                except Exception:
                    pass
        self._admin = self._client = self._http = None


def install_reaper(app, settings: Settings, loop: asyncio.AbstractEventLoop) -> DeadMemberReaper | None:
    """Start the reaper as a plain asyncio task when the worker starts.

    Not a Faust timer: Faust starts those only once its consumer has joined
    the group, and a group stuck on a dead member is exactly when it is needed.
    """
    if not workarounds_enabled(settings):
        return None
    reaper = DeadMemberReaper(settings)
    running: list[asyncio.Task] = []

    async def loop_forever() -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            try:
                await reaper.check()
            except Exception as error:  # never take the worker down
                log.warning("reaper round failed: %r", error)

    running.append(loop.create_task(loop_forever()))  # runs once the worker runs the loop

    @app.on_before_shutdown.connect
    async def stop_reaper(app, **kwargs) -> None:
        for task in running:
            task.cancel()
        await reaper.close()

    return reaper
