"""The `standing` command (spec section 6). Each subcommand is a thin shell
around a module that does the work, so everything here is argument handling."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from topology.settings import DEFAULT_BROKER_PORT, Settings


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env().with_overrides(
        broker=getattr(args, "broker", None),
        rules_path=getattr(args, "rules", None),
        data_dir=getattr(args, "data_dir", None),
        web_port=getattr(args, "web_port", None),
        metrics_port=getattr(args, "metrics_port", None),
        partitions=getattr(args, "partitions", None),
        app_id=getattr(args, "app_id", None),
        worker_id=getattr(args, "worker_id", None),
    )


def _rules(args: argparse.Namespace):
    from streams.rules import RulesError, load_rules

    try:
        return load_rules(getattr(args, "rules", None) or Settings.from_env().rules_path)
    except RulesError as error:
        raise SystemExit(f"standing: {error}")


# --- commands --------------------------------------------------------------


def cmd_broker(args: argparse.Namespace) -> int:
    from standing.broker import BrokerError, run_foreground

    settings = Settings.from_env()
    try:
        return run_foreground(args.port, args.data_dir or settings.broker_data_dir)
    except BrokerError as error:
        print(f"standing broker: {error}", file=sys.stderr)
        return 2


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.runtime.worker import run_worker

    explicit = bool(getattr(args, "rules", None) or Settings.from_env().rules_path)
    return run_worker(_settings(args), _rules(args), rules_explicit=explicit, loglevel=args.loglevel)


def cmd_rules_publish(args: argparse.Namespace) -> int:
    from streams.rules import RulesError, load_rules
    from streams.runtime import rules_topic
    from streams.runtime.admin import TopologyError, ensure_topics, wait_for_broker

    settings = _settings(args)
    try:
        rules = load_rules(args.file)
    except RulesError as error:
        print(f"standing rules publish: {error}", file=sys.stderr)
        return 2

    async def run():
        await wait_for_broker(settings, timeout=30)
        await ensure_topics(settings)
        known = await rules_topic.history(settings)
        if known and known[-1].version == rules.version:
            return None
        return await rules_topic.publish(settings, rules, source=str(args.file))

    try:
        entry = asyncio.run(run())
    except TopologyError as error:
        print(f"standing rules publish: {error}", file=sys.stderr)
        return 2
    if entry is None:
        print(f"{rules.version} is already the rules in force; nothing to do")
        return 0
    when = f"at stream time {entry.stream_time}" if entry.stream_time >= 0 else "before any event"
    print(
        f"published {entry.version} as epoch {entry.epoch} {when}; every worker rescores its users "
        f"(`standing wait` returns once it has settled)"
    )
    return 0


def cmd_rules_show(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from streams.runtime import rules_topic

    known = asyncio.run(rules_topic.history(_settings(args)))
    if not known:
        print("no rules were ever published: the first worker publishes its --rules (or the default rules)")
        return 0
    if args.json:
        print(json.dumps([{"epoch": e.epoch, "version": e.version, "published_ts": e.published_ts, "stream_time": e.stream_time, "source": e.source, "rules": e.rules.text} for e in known], indent=2))
        return 0
    for entry in reversed(known):
        published = datetime.fromtimestamp(entry.published_ts / 1000, timezone.utc).isoformat(timespec="seconds")
        took_effect = (
            datetime.fromtimestamp(entry.stream_time / 1000, timezone.utc).isoformat(timespec="seconds")
            if entry.stream_time >= 0 else "the first event"
        )  # fmt: skip
        state = "in force" if entry is known[-1] else "before"
        print(f"epoch {entry.epoch}  {entry.version}  {state:8}  published {published} from {entry.source or '?'}; "
              f"in effect from stream time {took_effect} ({entry.stream_time})")  # fmt: skip
    print()
    print(known[-1].rules.text.rstrip())
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.runtime.admin import TopologyError, ensure_schemas, ensure_topics, wait_for_broker

    settings = _settings(args)

    async def run() -> tuple[list[str], dict[str, int]]:
        await wait_for_broker(settings, timeout=args.timeout)
        created = await ensure_topics(settings, schemas=False)
        return created, (await ensure_schemas(settings) if settings.schema_registry_url else {})

    try:
        created, registered = asyncio.run(run())
    except TopologyError as error:
        print(f"standing topics: {error}", file=sys.stderr)
        return 2
    print("created: " + ", ".join(created) if created else "all topics already exist")
    if registered:
        print(f"schemas in {settings.schema_registry_url}: " + ", ".join(f"{s} (id {i})" for s, i in registered.items()))
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from standing.produce import ProduceError, produce_file

    try:
        summary = asyncio.run(produce_file(_settings(args), args.file))
    except ProduceError as error:
        print(f"standing produce: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError:
        print(f"standing produce: no such file: {args.file}", file=sys.stderr)
        return 2
    rejected = sum(summary.rejected.values())
    print(f"sent {summary.sent} events, rejected {rejected} lines, in {summary.elapsed_s:.1f} s")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from standing.population import PopulationConfig, generate_events, write_jsonl

    config = PopulationConfig(
        users=args.users,
        events=args.events,
        seed=args.seed,
        mean_degree=args.mean_degree,
        duplicate_share=args.duplicate_share,
        invalid_share=args.invalid_share,
    )
    count = write_jsonl(args.out, generate_events(config, _rules(args)))
    print(f"wrote {count} lines to {args.out}")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    from standing.control import ControlError, wait_until_quiescent

    try:
        asyncio.run(wait_until_quiescent(_settings(args), timeout=args.timeout))
    except ControlError as error:
        print(f"standing wait: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    from standing.control import ControlError, dump

    try:
        count, at = asyncio.run(dump(_settings(args), args.out, as_of=args.as_of))
    except ControlError as error:
        print(f"standing dump: {error}", file=sys.stderr)
        return 2
    print(f"wrote {count} scores, valid at {at}, to {args.out}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from standing.control import ControlError
    from standing.produce import ProduceError
    from standing.replay import replay

    _rules(args)  # fail fast on a bad rules file
    try:
        replay(_settings(args), args.file, args.out, rules_path=args.rules, summary_path=args.summary, timeout=args.timeout)
    except (ControlError, ProduceError, RuntimeError) as error:
        print(f"standing replay: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    from standing.reference import reference_file, write_scores

    rules = _rules(args)
    try:
        result = reference_file(args.file, rules, as_of=args.as_of)
    except ValueError as error:  # an as_of before the stream time
        print(f"standing reference: {error}; give --as-of at or after it", file=sys.stderr)
        return 2
    write_scores(args.out, result.raw, rules)
    summary = result.summary.as_dict()
    print(json.dumps(summary))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from standing.demo import run_demo

    return run_demo(
        _settings(args),
        rules_path=args.rules,
        seconds=args.seconds,
        rate=args.rate,
        users=args.users,
        seed=args.seed,
    )


def _ask_worker(args: argparse.Namespace, command: str, path_suffix: str = "") -> tuple[int, dict | None]:
    """(exit code, the JSON a worker answers about ``args.user``), saying what went wrong otherwise."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from streams import events as ev

    try:
        user = ev.id_field({"user_id": args.user}, "user_id", "request")
    except ev.Rejected as rejection:
        print(f"standing {command}: {rejection.detail}", file=sys.stderr)
        return 2, None
    settings = Settings.from_env()
    base = (args.api or f"http://{settings.web_host}:{settings.web_port}").rstrip("/")
    url = f"{base}/users/{urllib.parse.quote(user, safe='')}{path_suffix}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return 0, json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            body = json.loads(error.read() or b"{}")
        except ValueError:  # not the API's JSON: something else answers on that port
            body = {}
        reason = body.get("error", error.reason) if isinstance(body, dict) else error.reason
        detail = body.get("detail", "") if isinstance(body, dict) else ""
        print(f"standing {command}: {reason}: {user}" + (f" ({detail})" if detail else ""), file=sys.stderr)
        return 1, None
    except (OSError, ValueError) as error:
        print(f"standing {command}: no worker answers at {base} ({error}); start one or pass --api URL", file=sys.stderr)
        return 2, None


def cmd_explain(args: argparse.Namespace) -> int:
    from streams.explain import render_text

    code, explanation = _ask_worker(args, "explain")
    if explanation is not None:
        print(json.dumps(explanation, indent=2) if args.json else render_text(explanation))
    return code


def cmd_export(args: argparse.Namespace) -> int:
    code, held = _ask_worker(args, "export", "/export")
    if held is not None:
        text = json.dumps(held, indent=2, ensure_ascii=False) + "\n"
        if args.out:
            args.out.write_text(text, encoding="utf-8")
            print(f"wrote everything held about {args.user} to {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
    return code


def cmd_bench(args: argparse.Namespace) -> int:
    from standing.bench import run_bench, run_soak

    if args.soak:
        run_soak(seconds=args.soak, rate=args.rate, users=args.users, seed=args.seed, partitions=args.partitions)
        return 0
    run_bench(
        users=args.users, events=args.events, seed=args.seed, partitions=args.partitions, baselines=not args.no_baselines,
        latency_seconds=args.latency_seconds, celebrity_friends=args.celebrity_friends,
        peer_users=0 if args.no_peers else args.peer_users,
    )  # fmt: skip
    return 0


# --- argument parsing --------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="standing",
        description="Standing: a real-time, network-aware scorer on Kafka and Faust.",
        epilog="Every command that talks to Kafka takes --broker HOST:PORT "
        f"(default: $STANDING_BROKER, else the embedded broker at 127.0.0.1:{DEFAULT_BROKER_PORT}).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str, handler) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        sub.set_defaults(handler=handler)
        return sub

    def kafka(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--broker", metavar="HOST:PORT", help="Kafka bootstrap address")
        sub.add_argument("--partitions", type=int, help="partitions of every topic (default 8; must match the topics)")
        sub.add_argument("--app-id", help="Faust app id = consumer group (default 'standing')")

    def rules(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--rules", type=Path, metavar="FILE", help="rules file (TOML); default: the shipped rules")

    sub = command("demo", "embedded broker + worker + a simulated population, with live figures", cmd_demo)
    kafka(sub)
    rules(sub)
    sub.add_argument("--seconds", type=float, help="stop after N seconds (default: run until Ctrl-C)")
    sub.add_argument("--rate", type=float, default=500.0, help="events per second produced (default 500)")
    sub.add_argument("--users", type=int, default=2000, help="simulated users (default 2000)")
    sub.add_argument("--seed", type=int, default=7)
    sub.add_argument("--web-port", type=int, help="query API port (default 6066)")
    sub.add_argument("--metrics-port", type=int, help="Prometheus metrics port (default 9464)")

    sub = command("broker", "run the embedded Kafka-compatible broker (noida-db) in the foreground", cmd_broker)
    sub.add_argument("--port", type=int, default=DEFAULT_BROKER_PORT)
    sub.add_argument("--data-dir", type=Path, help="where the broker keeps its data (default .standing/broker)")

    sub = command("worker", "run a scoring worker", cmd_worker)
    kafka(sub)
    rules(sub)
    sub.add_argument("--data-dir", type=Path, help="RocksDB tables (default .standing/worker)")
    sub.add_argument("--web-port", type=int, help="query API port (default 6066)")
    sub.add_argument("--metrics-port", type=int, help="Prometheus metrics port (default 9464; 0 = off)")
    sub.add_argument("--worker-id", help="stable identity in the consumer group (default: host + data directory)")
    sub.add_argument("--loglevel", default="warning", choices=["debug", "info", "warning", "error"])

    sub = command("topics", "create every topic Standing uses (idempotent)", cmd_topics)
    kafka(sub)
    sub.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker")

    rules_command = commands.add_parser("rules", help="the rules through Kafka: publish a new version, show the audit trail")
    rules_commands = rules_command.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    sub = rules_commands.add_parser("publish", help="make FILE the rules of every worker; every user is rescored")
    sub.set_defaults(handler=cmd_rules_publish)
    kafka(sub)
    sub.add_argument("file", type=Path)
    sub = rules_commands.add_parser("show", help="the rules in force, their version, and the versions before with when each took effect")
    sub.set_defaults(handler=cmd_rules_show)
    kafka(sub)
    sub.add_argument("--json", action="store_true")

    sub = command("produce", "publish a JSON Lines file of events, validating each", cmd_produce)
    kafka(sub)
    sub.add_argument("file", type=Path)

    sub = command("generate", "write a simulated population's events as JSON Lines", cmd_generate)
    rules(sub)
    sub.add_argument("--out", type=Path, required=True)
    sub.add_argument("--users", type=int, default=2000)
    sub.add_argument("--events", type=int, default=20_000)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--mean-degree", type=float, default=10.0)
    sub.add_argument("--duplicate-share", type=float, default=0.0)
    sub.add_argument("--invalid-share", type=float, default=0.0)

    sub = command("wait", "return when everything produced so far is fully processed", cmd_wait)
    kafka(sub)
    sub.add_argument("--timeout", type=float, default=3600.0)

    sub = command("dump", "write the current scores as JSON Lines, valid at the stream time", cmd_dump)
    kafka(sub)
    sub.add_argument("--out", type=Path, required=True)
    sub.add_argument("--as-of", type=int, metavar="MS", help="valid at this event time instead (ms, not before the stream time)")

    sub = command("replay", "produce a file, wait, dump; starts and stops what it needs", cmd_replay)
    kafka(sub)
    rules(sub)
    sub.add_argument("file", type=Path)
    sub.add_argument("--out", type=Path, required=True)
    sub.add_argument("--summary", type=Path, help="also write the summary as JSON here")
    sub.add_argument("--timeout", type=float, default=3600.0)

    sub = command("reference", "the batch fixed point of a file of events (no broker)", cmd_reference)
    rules(sub)
    sub.add_argument("file", type=Path)
    sub.add_argument("--as-of", type=int, metavar="MS", help="valid at this event time instead of the stream time (ms, not before it)")
    sub.add_argument("--out", type=Path, required=True)
    sub.add_argument("--summary", type=Path)

    sub = command("explain", "why a user's score is what it is (asks a worker's query API)", cmd_explain)
    sub.add_argument("user")
    sub.add_argument("--api", metavar="URL", help="a worker's query API (default http://127.0.0.1:$STANDING_WEB_PORT, port 6066)")
    sub.add_argument("--json", action="store_true", help="print the API's JSON instead of text")

    sub = command("export", "everything Standing holds about one user, as JSON (asks a worker's API)", cmd_export)
    sub.add_argument("user")
    sub.add_argument("--api", metavar="URL", help="a worker's query API (default http://127.0.0.1:$STANDING_WEB_PORT, port 6066)")
    sub.add_argument("--out", type=Path, help="write it to this file instead of standard output")

    sub = command("bench", "the scorer against baselines on the same events (prints a table, writes JSON)", cmd_bench)
    sub.add_argument("--users", type=int, default=100_000, help="simulated users (default 100,000)")
    sub.add_argument("--events", type=int, default=1_000_000, help="pre-produced events (default 1,000,000)")
    sub.add_argument("--seed", type=int, default=1)
    sub.add_argument("--partitions", type=int, default=8)
    sub.add_argument("--no-baselines", action="store_true", help="measure the scorer only")
    sub.add_argument("--peer-users", type=int, default=3000, help="users of the same-model peers' scenario (10 events each; default 3000)")
    sub.add_argument("--no-peers", action="store_true", help="leave out the same-model peers (quixstreams, Pathway)")
    sub.add_argument("--latency-seconds", type=float, default=30.0, help="length of the latency phase at half the highest live rate (each live-rate step: at most 10 s)")
    sub.add_argument("--celebrity-friends", type=int, help="friends of the celebrity (default: every user)")
    sub.add_argument("--soak", type=float, metavar="SECONDS", help="instead: a steady rate for SECONDS; memory and backlog over time")
    sub.add_argument("--rate", type=float, default=300.0, help="events/s offered during --soak (default 300)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from standing.redaction import install_secret_redaction
    from streams import runtime
    from streams.runtime.patches import IncompatibleDependency

    settings = _settings(args)
    install_secret_redaction(settings)
    try:
        runtime.install(settings)
    except IncompatibleDependency as error:
        print(f"standing {args.command}: {error}", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
