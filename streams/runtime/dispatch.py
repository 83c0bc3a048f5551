"""Dispatch: how fetched records reach the callbacks, without a task per record when they cannot wait.

Faust's consumer hands every fetched record to the callback the conductor
built for its partition through ``Service.wait_first(callback(message),
suspend_flow.wait())``: four futures, two tasks and an ``asyncio.wait`` per
record, so that a callback stuck on a full queue is abandoned when a
rebalance suspends the flow. Measured here that was the largest single cost
left in table recovery (a quarter of the main thread) and a few percent of
input intake.

The worker's own callbacks (``streams.runtime.intake``, ``streams.runtime.recovery``) never
wait once the flow is running: each has a synchronous ``take(message) ->
bool`` attached with ``direct``. ``_drain_messages`` below is Faust's loop
(faust-streaming 0.15.3, ``Consumer._drain_messages``) with one change: when
the flow is running, nothing is reshuffling the callbacks and the partition's
callback has a ``take``, the record is given to ``take``; when ``take``
declines it, or in every other case, Faust's ``wait_first`` path runs as
before.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable

from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP, Message

from streams.runtime.patches import Patch

Take = Callable[[Message], bool]


Callback = Callable[[Message], Any]


def direct(callback: Callback, take: Take) -> Callback:
    """Attach ``take`` to ``callback``: it handles a record synchronously, or returns False."""
    callback.standing_take = take  # type: ignore[attr-defined]
    return callback


def route(app: Any, topic_names: Iterable[str], build: Callable[[TP, Callable[[], Callback]], Callback]) -> None:
    """Have the callbacks of these topics' partitions built by ``build``.

    Faust's conductor builds a callback per assigned partition on every
    assignment (``Conductor._build_handler``). For a routed topic it calls
    ``build(tp, faust_callback)``, where ``faust_callback()`` builds the one
    Faust would have used, for what ``build``'s callback leaves to Faust.
    One wrapper per conductor, however many routes.
    """
    conductor = app.topics
    routes: dict[str, Callable] | None = conductor.__dict__.get("_standing_routes")
    if routes is None:
        routes = conductor._standing_routes = {}
        faust_build = conductor._build_handler

        def build_handler(tp: TP, channels):
            routed = routes.get(tp.topic)
            if routed is None:
                return faust_build(tp, channels)
            return routed(tp, lambda: faust_build(tp, channels))

        conductor._build_handler = build_handler
    for name in topic_names:
        routes[name] = build


async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - exercised by every worker test
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    # -- the change: the conductor's callbacks, to find a partition's ``take``
    conductor = self.app.topics
    callbacks = conductor._tp_to_callback
    callbacks_lock = conductor._tp_to_callback_lock
    flow_running = self.app.flow_control.is_active
    suspended = self.suspend_flow.is_set

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = getmany(timeout=1.0)

            # Sleeping because sometimes getmany is called in a loop
            # never releasing to the event loop
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        # We have a gap in income messages
                        if gap > 1 and r_offset:
                            acks_enabled = acks_enabled_for(message.topic)
                            if acks_enabled:
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        # -- the change
                        if flow_running() and not suspended() and not callbacks_lock.locked():
                            take = getattr(callbacks.get(tp), "standing_take", None)
                            if take is not None and take(message):
                                set_read_offset(tp, offset)
                                continue
                        # -- as before
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)


DRAIN_MESSAGES = Patch(
    target="faust.transport.consumer:Consumer._drain_messages",
    sha256="44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417",
    why="Faust hands every fetched record to its callback through four futures, two tasks and an asyncio.wait "
    "(a quarter of table recovery's main thread); the copy gives a record to a callback's synchronous take()",
    shown_by="tests/streams/runtime/test_dispatch.py",
    replacement=_drain_messages,
    where="streams/runtime/dispatch.py (a copy of the upstream loop with one change)",
)
BUILD_HANDLER = Patch(
    target="faust.transport.conductor:Conductor._build_handler",
    sha256="5c071d1277988c57e4bb62e25551981babd67d6544d85db9b14bdb0d8aa1b56d",
    why="the callbacks of the intake's and the bulk recovery's partitions must be Standing's, not Faust's streams'",
    shown_by="tests/streams/runtime/test_dispatch.py",
    where="streams/runtime/dispatch.py: route() wraps it on each app's conductor",
)
PATCHES = [DRAIN_MESSAGES, BUILD_HANDLER]
