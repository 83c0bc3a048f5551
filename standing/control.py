"""`standing wait` and `standing dump`: looking at a running system from outside.

The reading is ``streams.runtime.lookups`` (which says why committed == end
means nothing is in flight); here is what a person sees while waiting, and
the dump's file format.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from streams.runtime.lookups import GroupWatch, read_scores
from topology.settings import Settings


class ControlError(Exception):
    pass


async def wait_until_quiescent(
    settings: Settings,
    *,
    timeout: float = 600.0,
    no_worker_grace: float = 30.0,
    progress: TextIO | None = sys.stderr,
    poll: float = 0.2,
) -> float:
    """Return (seconds waited) once nothing is left to process.

    Raises ControlError at ``timeout``, or when records are waiting and no
    worker has been in the group for ``no_worker_grace`` seconds.
    """
    started = time.monotonic()
    last_print = 0.0
    no_worker_since: float | None = None
    async with GroupWatch(settings) as watch:
        while True:
            state = await watch.backlog()
            now = time.monotonic()
            if state.total == 0:
                if progress is not None and last_print:
                    prefix = "\r" if progress.isatty() else ""
                    print(f"{prefix}quiescent after {now - started:.1f} s{' ' * 40}", file=progress, flush=True)
                return now - started
            if state.members == 0:
                no_worker_since = no_worker_since or now
                if now - no_worker_since > no_worker_grace:
                    raise ControlError(
                        f"{state.total} records are waiting but no worker of group {settings.app_id!r} has been "
                        f"running for {no_worker_grace:.0f} s; start one with `standing worker --broker {settings.broker}`"
                    )
            else:
                no_worker_since = None
            if now - started > timeout:
                raise ControlError(f"still {state.total} records to process after {timeout:.0f} s ({state.per_topic})")
            interactive = progress is not None and progress.isatty()
            if progress is not None and now - last_print >= (0.5 if interactive else 5.0):
                detail = ", ".join(f"{topic} {count}" for topic, count in state.per_topic.items() if count)
                text = f"waiting: {state.total} records to process ({detail})"
                print("\r" + text + "   " if interactive else text, end="" if interactive else "\n", file=progress, flush=True)
                last_print = now
            await asyncio.sleep(poll)


def decayed(raw: float, valid_at: int, at: int, half_life_days: float) -> float:
    """A raw score valid at ``valid_at``, made valid at ``at`` (spec section 7: decay needs no work)."""
    if not half_life_days or at <= valid_at:
        return raw
    return raw * 2.0 ** (-(at - valid_at) / (half_life_days * 24 * 3600 * 1000))


def write_scores_jsonl(path: Path, scores: dict[str, dict], *, at: int = 0, half_life_days: float = 0.0, rules_by_version=None) -> int:
    """JSON Lines ``{"user_id", "raw", "score", "rules_version"}``, every score made valid at ``at``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rules_by_version = rules_by_version or {}
    with path.open("w") as out:
        for user_id in sorted(scores):
            score = scores[user_id]
            version = score.get("rules_version", "")
            rules = rules_by_version.get(version)
            # Each record decays with the half-life of the rules that made it.
            raw = decayed(score["raw"], score.get("as_of", 0), at, rules.half_life_days if rules is not None else half_life_days)
            shown = rules.display(raw) if rules is not None and raw != score["raw"] else score["score"]
            out.write(json.dumps({"user_id": user_id, "raw": raw, "score": shown, "rules_version": version}) + "\n")
    return len(scores)


async def dump(settings: Settings, out: Path, *, as_of: int | None = None) -> tuple[int, int]:
    """Write the current scores, valid at the stream time or at ``as_of`` (not earlier); returns (count, the time)."""
    from streams.runtime import rules_topic

    stream_time, half_life_days = await rules_topic.stream_time(settings)
    if as_of is not None and stream_time >= 0 and as_of < stream_time:
        raise ControlError(f"--as-of {as_of} is before the stream time {stream_time}: the scores of then are not kept")
    rules_by_version = {entry.version: entry.rules for entry in await rules_topic.history(settings)}
    at = as_of if as_of is not None else max(stream_time, 0)
    scores = await read_scores(settings)
    return write_scores_jsonl(out, scores, at=at, half_life_days=half_life_days, rules_by_version=rules_by_version), at
