"""Removes group members whose worker is gone: a workaround for the embedded broker.

Apache Kafka drops a consumer-group member whose heartbeats stop, after the
session timeout, and rebalances its partitions to the survivors. noida-db
0.2.3 does not: a SIGKILLed member stays in the group for ever and its
partitions are never processed again. Where that can happen (by default: a
broker on loopback, i.e. the embedded one), every worker checks every few
seconds that each member of its group still lives (its metrics server, named
in its client id, answers); a member that has not answered for two session timeouts is removed with a LeaveGroup request,
which makes the broker rebalance as Kafka would have. On Apache Kafka the dead
member is gone long before, so this never fires there.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.group import LeaveGroupRequest

from topology.settings import Settings
from streams.runtime import metrics

log = logging.getLogger(__name__)

INTERVAL_S = 5.0


def liveness_url(client_id: str, client_host: str) -> str | None:
    """Where a member's process answers while it lives: its metrics server.

    The worker names its metrics port in its Kafka client id
    (``standing-metrics-PORT``); the broker reports the member's host. That
    server is a thread started before Faust, so it answers during start-up,
    recovery and a stuck rebalance alike, and stops only with the process.
    """
    prefix = "standing-metrics-"
    if not client_id.startswith(prefix) or not client_id[len(prefix):].isdigit():
        return None
    port = int(client_id[len(prefix):])
    if port == 0:
        return None
    host = client_host.lstrip("/") or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def reaping_enabled(settings: Settings) -> bool:
    if settings.reap_dead_members is not None:
        return settings.reap_dead_members
    hosts = {server.rsplit(":", 1)[0] for server in settings.bootstrap_servers}
    return hosts <= {"127.0.0.1", "localhost", "::1", "[::1]"}


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
        present = {member_id for member_id, _ in members}
        for gone in set(self.silent_since) - present:
            del self.silent_since[gone]
        evicted = []
        for member_id, url in members:
            if url is None or await self._answers(url):
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

    async def _members(self) -> list[tuple[str, str | None]]:
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
                    members.append((member[0], liveness_url(member[1], member[2])))
        return members

    async def _answers(self, url: str) -> bool:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        try:
            async with self._http.get(url) as response:
                return response.status < 500
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
    if not reaping_enabled(settings):
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
