"""Running one worker process: broker check, topics, metrics server, Faust worker."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import socket
import sys
import time

import faust
import uvloop
from prometheus_client import start_http_server

from streams.rules import Rules
from streams.runtime import group_join, install, metrics, rules_topic
from streams.runtime.admin import TopologyError, ensure_topics, wait_for_broker
from streams.runtime.agents import Scorer
from streams.runtime.api import install_api
from streams.runtime.app import create_app
from streams.runtime.embedded_broker import install_reaper
from streams.runtime.monitoring import install_monitoring
from streams.runtime.patches import IncompatibleDependency, Patch
from topology.settings import Settings

log = logging.getLogger("standing.worker")


class Worker(faust.Worker):
    """Faust's worker, whose stop lets the scorer's batches finish before the app stops."""

    def __init__(self, app: faust.App, scorer: Scorer, *, stop_timeout: float, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self.scorer = scorer
        self.stop_timeout = stop_timeout

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        # mode warns "Timer ... is overlapping" whenever one of Faust's timers ran
        # longer than its interval, i.e. whenever a batch held the loop that long:
        # a worker working through a backlog does that by design (an 8,000-record
        # batch decides for ~0.5 s), so the warning fired on healthy workers. How
        # long batches hold the loop is the histogram standing_batch_duration_seconds.
        logging.getLogger("mode.timers").setLevel(logging.ERROR)

    async def _sentinel_task(self) -> None:
        # mode.Worker._shutdown_loop runs this on the stopped loop before
        # closing it, for the callbacks of what was just cancelled or closed;
        # mode sleeps a whole second there (SENTINEL_TASK, streams/runtime/patches.py).
        await asyncio.sleep(0.05)

    async def on_stop(self) -> None:
        # Runs before the app (a child of the worker) stops its consumer,
        # tables and producer: see Scorer.stop_taking_batches.
        await self.scorer.stop_taking_batches(self.stop_timeout)
        await super().on_stop()


SENTINEL_TASK = Patch(
    target="mode.worker:Worker._sentinel_task",
    sha256="6e66058cf3e1b61606c66359bae30b81a5aeb355cf4f7e2cb4748449560c3687",
    why="mode sleeps a whole second on the stopped loop before closing it; one short turn does what it is for "
    "(a worker took 2-3 s to stop when idle)",
    shown_by="tests/integration/test_faults.py::test_clean_sigterm_commits_and_exits_promptly",
    where="streams/runtime/worker.py: Worker._sentinel_task overrides it",
)
PATCHES = [SENTINEL_TASK]


def build(settings: Settings, rules: Rules, epoch: int = 0) -> tuple[faust.App, Scorer]:
    app = create_app(settings)
    scorer = Scorer(app, settings, rules, epoch=epoch)
    install_api(scorer)
    install_monitoring(scorer)
    return app, scorer


def crash_when_membership_is_lost(app: faust.App, loop: asyncio.AbstractEventLoop) -> None:
    """A consumer whose group coordination died owns nothing for good: crash, so the worker is restarted.

    Called from the consumer's thread (streams/runtime/group_join.py); the crash runs
    on the worker's loop, stops the worker and exits with status 1.
    """

    def lost(error: BaseException) -> None:
        if app.should_stop:
            return  # stopping anyway: the exit status stays that of the stop
        log.critical(
            "this worker's consumer left its group for good (%r): it would own no partition again; "
            "stopping with exit status 1 so that it is restarted",
            error,
        )
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(app.crash(error), loop=loop))

    group_join.on_membership_lost(lost)


def tune_garbage_collector(young_threshold: int) -> None:
    """Fewer cyclic collections while batches hold many states (Settings.gc_young_threshold says why)."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()  # what start-up built (modules, the Faust app) lives as long as the process
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, max(middle, 20), oldest)


def serve_metrics(host: str, port: int, *, wait: float, say) -> None:
    """Start the metrics server, waiting up to ``wait`` s while the port is still held (``when_free``)."""
    when_free(lambda: start_http_server(port, addr=host), host, port, wait=wait, say=say, what="metrics port")


def wait_for_web_port(host: str, port: int, *, wait: float, say) -> None:
    """Return once the API's port can be bound (Faust's web server binds it as the worker starts)."""

    def probe() -> None:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as held:
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp's server does
            held.bind(address)

    when_free(probe, host, port, wait=wait, say=say, what="web port")


def when_free(bind, host: str, port: int, *, wait: float, say, what: str) -> None:
    """Call ``bind`` until it does not find the port in use, for up to ``wait`` s; then it raises.

    A process killed with SIGKILL keeps its listening sockets until its last
    thread has exited and its memory is unmapped (measured here: 50-115 ms at
    200-270 MB, 0.6 s at 1 GB, 2.1 s at 4 GB); SO_REUSEADDR covers TIME_WAIT
    only, never a socket still listening. A worker restarted at once on the
    same ports waits for its predecessor instead of failing.
    """
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            bind()
            if told:
                say(f"{what} {port} is free again")
            return
        except OSError as error:
            if error.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise
            if not told:
                say(f"{what} {host}:{port} is in use{held_by(port)}; waiting up to {wait:.0f} s for it to be released")
                told = True
            time.sleep(0.1)


def held_by(port: int) -> str:
    """`` by pid N (command)`` for the process listening on ``port``, when /proc tells (Linux); else ""."""
    try:
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                        inodes.add(fields[9])
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                            command = cmd.read().replace(bytes(1), b" ").decode(errors="replace").strip()[:80]
                        return f" by pid {pid} ({command or 'exiting'})"
            except OSError:
                continue
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return ""


async def rules_in_force(settings: Settings, rules: Rules, *, explicit: bool, say) -> tuple[Rules, int] | None:
    """(rules, epoch) to score with: the rules in force on the broker, or ``rules`` published as the first.

    None (after saying why) when ``rules`` came from ``--rules`` and differ
    from the rules in force: workers never score with different rules.
    """
    known = await rules_topic.history(settings)
    if not known:
        first = await rules_topic.publish(settings, rules, source=rules.source, first=True)
        say(f"published the rules {first.version} ({rules.source}) as the first rules in force")
        return rules, first.epoch
    in_force = known[-1]
    if explicit and in_force.version != rules.version:
        say(
            f"the rules in force are {in_force.version} (epoch {in_force.epoch}, from {in_force.source or 'the rules topic'}), "
            f"but --rules {rules.source} is {rules.version}; publish it first (`standing rules publish {rules.source}`) "
            f"or start without --rules to score with the rules in force"
        )
        return None
    return in_force.rules, in_force.epoch


def run_worker(
    settings: Settings, rules: Rules, *, rules_explicit: bool = False, loglevel: str = "warning", broker_timeout: float = 60.0
) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    try:
        install(settings)  # checks faust-streaming, mode-streaming and aiokafka, then patches them (streams/runtime/patches.py)
    except IncompatibleDependency as error:
        print(f"standing worker: {error}", file=sys.stderr, flush=True)
        return 2
    if settings.event_loop == "uvloop":
        # For every loop of this process: Faust's consumer thread makes its own.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def say(message: str) -> None:
        print(f"standing worker: {message}", file=sys.stderr, flush=True)

    try:
        loop.run_until_complete(wait_for_broker(settings, timeout=broker_timeout, log=say))
        created = loop.run_until_complete(ensure_topics(settings))
    except TopologyError as error:
        say(str(error))
        return 2
    if created:
        say(f"created topics: {', '.join(created)}")
    resolved = loop.run_until_complete(rules_in_force(settings, rules, explicit=rules_explicit, say=say))
    if resolved is None:
        return 2
    rules, epoch = resolved
    ports = [("the API", settings.web_port, "--web-port", wait_for_web_port)]
    if settings.metrics_port:
        metrics.publish_identity(settings.group_instance_id)
        ports.insert(0, ("metrics", settings.metrics_port, "--metrics-port", serve_metrics))
    for what, port, flag, take in ports:
        try:
            take(settings.web_host, port, wait=settings.session_timeout, say=say)
        except OSError as error:
            say(f"cannot serve {what} on {settings.web_host}:{port} ({error}){held_by(port)}; stop that process or pass {flag}")
            return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app, scorer = build(settings, rules, epoch)
    install_reaper(app, settings, loop)
    crash_when_membership_is_lost(app, loop)
    tune_garbage_collector(settings.gc_young_threshold)
    say(
        f"consuming from {settings.broker} as group {settings.app_id!r}; "
        f"API http://{settings.web_host}:{settings.web_port}, "
        f"metrics http://{settings.web_host}:{settings.metrics_port}/metrics; rules {rules.version} (epoch {epoch})"
    )
    if loglevel != "debug":
        # Some of aiokafka's loggers end up enabled at DEBUG under Faust's
        # logging set-up; building their records cost ~10% of a busy worker.
        logging.disable(logging.DEBUG)
    worker = Worker(
        app,
        scorer,
        stop_timeout=settings.session_timeout / 2,
        loop=loop,
        loglevel=loglevel,
        quiet=True,
        redirect_stdouts=False,
        override_logging=True,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0
