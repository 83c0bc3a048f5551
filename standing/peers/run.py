"""Run the same-model peers (issue 17) on pre-produced events and check them against `standing reference`.

Each peer runs as its own process against a broker that already holds the
events, from start to quiescence; its rate counts only if every user's raw
score is within epsilon / (1 - alpha) of the batch fixed point.

From bench.py (same broker, same pre-produced events; generate_events is
deterministic, so the bench's config regenerates exactly what it produced)::

    from standing.peers.run import reference_scores, run_peers, print_table
    expected = reference_scores(generate_events(config), rules)   # once, for every peer
    peers = run_peers(settings.broker, settings.partitions, total, rules, reference=expected, workdir=workdir)
    print_table(peers, total)   # or one at a time: run_quixstreams(...), run_pathway(..., max_backlog_size=10_000)

Standalone: ``python -m standing.peers.run --users 2000 --events 20000`` starts
an embedded broker, pre-produces, runs every peer and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Mapping

from standing.peers.common import (
    INPUT_TOPICS,
    PeerResult,
    RssSampler,
    create_topics,
    die_with_parent,
    free_port,
    group_lag,
    python_module_command,
    read_latest,
    within,
    write_rules,
)
from standing.broker import stop_process_group
from standing.population import PopulationConfig, generate_events
from streams import events as ev
from streams.rules import Rules, load_rules


def _say(message: str) -> None:
    print(f"peers: {message}", file=sys.stderr, flush=True)


# --- events and the reference --------------------------------------------------------------


def _line(item: dict | str) -> str:
    return json.dumps(item) if isinstance(item, dict) else item


def reference_scores(events: Path | str | Iterable[dict | str], rules: Rules) -> dict[str, float]:
    """user_id -> raw score of the batch fixed point (`standing reference`) of a JSONL file or of event dicts/lines."""
    from standing.reference import compute_reference, reference_file

    if isinstance(events, (str, Path)):
        return reference_file(Path(events), rules).raw
    return compute_reference((_line(item) for item in events), rules).raw


async def _preproduce(broker: str, config: PopulationConfig, rules: Rules | None, lines: list[str]) -> int:
    """bench.py's pre-production: the population's valid events as fast as possible; the count."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker, acks=1, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    count = 0
    try:
        futures = []
        for item in generate_events(config, rules):
            lines.append(_line(item))
            try:
                event = ev.from_dict(item) if isinstance(item, dict) else ev.from_json_line(item)
            except ev.Rejected:
                continue
            futures.append(await producer.send(ev.topic_for(event), ev.to_bytes(event), key=ev.key_for(event).encode()))
            count += 1
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return count


def preproduce(broker: str, config: PopulationConfig, partitions: int, rules: Rules | None = None) -> tuple[int, list[str]]:
    """Create the input topics and publish the population's events: (valid events produced, every line for the reference)."""
    create_topics(broker, partitions)
    lines: list[str] = []
    total = asyncio.run(_preproduce(broker, config, rules, lines))
    return total, lines


# --- running a peer ------------------------------------------------------------------------------


def _expected(events, reference: Mapping[str, float] | None, rules: Rules) -> Mapping[str, float]:
    if reference is not None:
        return reference
    if events is None:
        raise ValueError("give the events (a JSONL path or a list) or a precomputed reference")
    return reference_scores(events, rules)


def _run_process(command: list[str], log_path: Path, limit: float) -> tuple[subprocess.Popen, int, str | None, float]:
    """Run a peer process to its end (or ``limit`` s); (process, peak tree RSS, its last stdout line, start wall time)."""
    with log_path.open("w") as log:
        started = time.time()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=die_with_parent)
        try:
            with RssSampler(process.pid) as sampler:
                try:
                    out, _ = process.communicate(timeout=limit)
                except subprocess.TimeoutExpired:
                    stop_process_group(process, 15.0)
                    out, _ = process.communicate()
                    out = (out or "") + "\nTIMEOUT"
        finally:
            stop_process_group(process, 15.0)
    lines = [line for line in (out or "").splitlines() if line.strip()]
    return process, sampler.peak, lines[-1] if lines else None, started


def _workdir(workdir: Path | None) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return Path(workdir), None
    holder = tempfile.TemporaryDirectory(prefix="standing-peers-")
    return Path(holder.name), holder


def run_quixstreams(
    broker: str,
    partitions: int,
    total: int,
    rules: Rules,
    events: Path | str | Iterable[dict | str] | None = None,
    *,
    reference: Mapping[str, float] | None = None,
    workdir: Path | None = None,
    group: str | None = None,
    idle_timeout: float = 5.0,
    timeout: float | None = None,
    merge: str = "concat",
    poll_timeout: float = 0.01,
) -> PeerResult:
    """The model in quixstreams (standing.peers.quix_model) on the ``total`` events already in the input topics."""
    from standing.peers.quix_model import inbox_topic, scores_topic

    expected = _expected(events, reference, rules)
    base, holder = _workdir(workdir)
    group = group or f"peers-quix-{os.getpid()}-{int(time.time())}"
    limit = timeout if timeout is not None else max(600.0, total / 20)  # ~140 events/s at 20k events: 7x slack
    try:
        command = python_module_command(
            "standing.peers.quix_model", "--broker", broker, "--group", group, "--partitions", str(partitions),
            "--state-dir", str(base / f"{group}-state"), "--rules", str(write_rules(rules, base / f"{group}-rules.pickle")),
            "--idle-timeout", str(idle_timeout), "--merge", merge, "--poll-timeout", str(poll_timeout),
        )  # fmt: skip
        log_path = base / f"{group}.log"
        process, peak, last, started = _run_process(command, log_path, limit)
        name = "quixstreams" if (merge, poll_timeout) == ("concat", 0.01) else f"quixstreams ({merge}, poll {poll_timeout:g} s)"
        if process.returncode != 0 or last is None or not last.startswith("{"):
            tail = log_path.read_text(errors="replace")[-3000:]
            return PeerResult(name, None, peak, False, None, f"exit {process.returncode}, last line {last!r}; log tail:\n{tail}")
        progress = json.loads(last)
        seconds = progress["last"] - started if progress["last"] else None
        lag = group_lag(broker, group, [*INPUT_TOPICS, inbox_topic(group)])
        scores = {key.decode(): value["raw"] for key, value in read_latest(broker, scores_topic(group), json.loads).items()}
        exact, diff, text = within(scores, expected, rules.error_bound)
        if any(lag.values()):
            exact, text = False, f"not quiescent when it stopped (uncommitted records {lag}); {text}"
        return PeerResult(
            name, total / seconds if exact and seconds else None, peak, exact, diff, text, seconds,
            {"messages_processed": progress["processed"], "events_per_s_unchecked": total / seconds if seconds else None},
        )  # fmt: skip
    finally:
        if holder is not None:
            holder.cleanup()


def run_pathway(
    broker: str,
    partitions: int,
    total: int,
    rules: Rules,
    events: Path | str | Iterable[dict | str] | None = None,
    *,
    reference: Mapping[str, float] | None = None,
    max_backlog_size: int | None = None,
    workdir: Path | None = None,
    group: str | None = None,
    threads: int = 1,
    timeout: float | None = None,
) -> PeerResult:
    """The model in Pathway (standing.peers.pathway_model) on the ``total`` events already in the input topics.

    ``max_backlog_size=None`` is Pathway's default (the pre-produced backlog
    is read as one minibatch); a bound (e.g. 10_000) makes it maintain the
    fixed point incrementally, minibatch after minibatch.
    """
    expected = _expected(events, reference, rules)
    base, holder = _workdir(workdir)
    group = group or f"peers-pathway-{os.getpid()}-{time.monotonic_ns()}"
    limit = timeout if timeout is not None else max(300.0, total / 50)
    name = "pathway" if max_backlog_size is None else f"pathway (max_backlog_size={max_backlog_size})"
    try:
        out = base / f"{group}-scores.json"
        command = python_module_command(
            "standing.peers.pathway_model", "--broker", broker, "--group", group, "--total", str(total),
            "--rules", str(write_rules(rules, base / f"{group}-rules.pickle")), "--out", str(out), "--threads", str(threads),
            *(["--max-backlog-size", str(max_backlog_size)] if max_backlog_size is not None else []),
        )  # fmt: skip
        log_path = base / f"{group}.log"
        process, peak, last, started = _run_process(command, log_path, limit)
        if process.returncode != 0 or last is None or not last.startswith("{") or not out.exists():
            tail = log_path.read_text(errors="replace")[-3000:]
            return PeerResult(name, None, peak, False, None, f"exit {process.returncode}, last line {last!r}; log tail:\n{tail}")
        progress = json.loads(last)
        seconds = progress["done"] - started
        scores = json.loads(out.read_text())
        exact, diff, text = within(scores, expected, rules.error_bound)
        return PeerResult(
            name, total / seconds if exact else None, peak, exact, diff, text, seconds,
            {"minibatches": progress["minibatches"], "events_per_s_unchecked": total / seconds},
        )  # fmt: skip
    finally:
        if holder is not None:
            holder.cleanup()


PEERS = ("quixstreams", "pathway", "pathway-bounded")


def run_peers(
    broker: str,
    partitions: int,
    total: int,
    rules: Rules,
    events: Path | str | Iterable[dict | str] | None = None,
    *,
    reference: Mapping[str, float] | None = None,
    workdir: Path | None = None,
    peers: Iterable[str] = PEERS,
    max_backlog_size: int = 10_000,
    progress=_say,
) -> list[PeerResult]:
    """Every peer in turn on the same pre-produced events, checked against one reference."""
    expected = _expected(events, reference, rules)
    results = []
    for name in peers:
        progress(f"running {name}")

        def run_one() -> PeerResult:
            if name == "quixstreams":
                return run_quixstreams(broker, partitions, total, rules, reference=expected, workdir=workdir)
            if name == "pathway":
                return run_pathway(broker, partitions, total, rules, reference=expected, workdir=workdir)
            if name == "pathway-bounded":
                return run_pathway(broker, partitions, total, rules, reference=expected, workdir=workdir, max_backlog_size=max_backlog_size)
            raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")

        result = run_one()
        if not result.exact and result.detail.startswith("exit "):
            # The peer's process stopped (quixstreams' consumer was once told "Unknown member" by the
            # embedded broker mid-run): once more, in a group of its own. Scores that were merely
            # wrong are not retried.
            progress(f"{name} stopped ({result.detail.splitlines()[0]}); running it once more")
            result = run_one()
            result.extra["attempts"] = 2
        progress(f"{name}: {result.detail.splitlines()[0] if result.exact else result.detail}")
        results.append(result)
    return results


# --- the table -------------------------------------------------------------------------------------


def _note(result: PeerResult, total: int) -> str:
    if "messages_processed" in result.extra:
        return f"{result.extra['messages_processed'] / max(1, total):.1f} messages/event"
    if "minibatches" in result.extra:
        return f"{result.extra['minibatches']} minibatch(es)"
    return ""


def print_table(results: list[PeerResult], total: int, file=sys.stdout) -> None:
    """One line per peer; a rate only where the scores were within the bound, and its ratio to the first such rate."""
    print(f"{'peer':<34} {'events/s':>10} {'ratio':>7} {'seconds':>8} {'peak RSS':>10} {'exact':>6} {'max |diff|':>11}  note", file=file)
    first = next((r.events_per_s for r in results if r.events_per_s), None)
    for r in results:
        rate = f"{r.events_per_s:,.0f}" if r.events_per_s else "-"
        ratio = f"{r.events_per_s / first:.2f}x" if r.events_per_s and first else "-"
        seconds = f"{r.seconds:.1f}" if r.seconds else "-"
        rss = f"{r.peak_rss_bytes / 2**20:,.0f} MiB" if r.peak_rss_bytes else "-"
        diff = f"{r.max_abs_diff:.3g}" if r.max_abs_diff is not None else "-"
        print(f"{r.name:<34} {rate:>10} {ratio:>7} {seconds:>8} {rss:>10} {str(r.exact):>6} {diff:>11}  {_note(r, total)}", file=file)
    print(f"({total} events, start to quiescence; ratio against the first peer with a checked rate)", file=file)


def main(argv: list[str] | None = None) -> int:
    from standing.broker import EmbeddedBroker

    parser = argparse.ArgumentParser(prog="python -m standing.peers.run", description="the same-model peers on one embedded broker")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--rules", help="rules TOML (default: the shipped rules)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of: {', '.join(PEERS)}")
    parser.add_argument("--max-backlog-size", type=int, default=10_000, help="pathway-bounded's max_backlog_size")
    parser.add_argument("--json", help="also write the results here as JSON")
    args = parser.parse_args(argv)
    rules = load_rules(args.rules)
    wanted = [name.strip() for name in args.peers.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(prefix="standing-peers-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(port=free_port(), data_dir=workdir / "broker").start()
        try:
            _say(f"pre-producing {args.events} events of {args.users} users (seed {args.seed}) to {broker.address}")
            config = PopulationConfig(users=args.users, events=args.events, seed=args.seed)
            total, lines = preproduce(broker.address, config, args.partitions, rules)
            _say(f"{total} events pre-produced; solving the reference")
            expected = reference_scores(lines, rules)
            del lines
            results = run_peers(broker.address, args.partitions, total, rules, reference=expected, workdir=workdir,
                                peers=wanted, max_backlog_size=args.max_backlog_size)  # fmt: skip
        finally:
            broker.stop()
    print_table(results, total)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0 if all(r.exact for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
