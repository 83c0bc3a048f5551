"""A real worker process on the real broker: bad records from any producer never
stop it and are never dropped silently; the query API explains scores."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.error
import urllib.request

import pytest
from aiokafka import AIOKafkaProducer

from schemas import codec
from standing import processes
from standing.control import wait_until_quiescent
from streams.runtime.lookups import read_scores
from standing.reference import compute_reference
from streams import events as ev
from streams.rules import load_rules
from topology.routing import pair_key
from tests.helpers import read_dead_letters, wait_until_ready

RULES = load_rules()


@pytest.fixture
def worker(fresh_settings, tmp_path):
    log_path = tmp_path / "worker.log"
    process = processes.start_worker_process(fresh_settings, log_path=log_path)
    try:
        processes.wait_for_metrics(fresh_settings.metrics_port, process, log_path=log_path)
        yield process
    finally:
        processes.stop_process(process)


GOOD = [
    ev.Friendship("f1", 1, "ann", "bob", "add", 1.0),
    ev.Purchase("p1", 2, "ann", "groceries", 200.0),
    ev.Post("q1", 3, "bob", "x", ("spam",)),
    ev.Post("q2", 4, "cid", "y", ("helpful",)),
]


def _bad_records(rng: random.Random) -> list[tuple[str, bytes | None, bytes, str]]:
    """(topic, key, value, expected reason)"""
    purchase = ev.to_bytes(GOOD[1])
    bad = [
        ("purchases", b"ann", b"", "not_decodable"),
        ("purchases", b"ann", b"\x00\x00\x00\x00\x01garbage", "not_decodable"),
        ("posts", b"bob", b"\x00\x00\x00\x30\x39" + purchase[5:], "unknown_schema_id"),
        ("posts", b"bob", purchase, "wrong_schema"),
        ("purchases", b"ann", codec.encode("purchase", {**ev.to_record(GOOD[1])[1], "event_id": "neg", "amount": -4.0}), "bad_amount"),
        ("friendships", pair_key("ann", "ann").encode(), codec.encode("friendship", {**ev.to_record(GOOD[0])[1], "user_b": "ann"}), "self_friendship"),
        ("friendships", pair_key("ann", "bob").encode(), codec.encode("friendship", {**ev.to_record(GOOD[0])[1], "event_id": "w", "weight": 0.0}), "bad_weight"),
        ("friendships", pair_key("ann", "bob").encode(), codec.encode("friendship", {**ev.to_record(GOOD[0])[1], "event_id": "z", "action": "poke"}), "unknown_action"),
    ]
    # random and mutated bytes on every input topic (the fuzz part)
    for topic in ("purchases", "posts", "friendships"):
        for _ in range(15):
            if rng.random() < 0.5:
                value = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
            else:
                value = bytearray(purchase)
                for _ in range(rng.randrange(1, 4)):
                    value[rng.randrange(5, len(value))] = rng.randrange(256)
                value = bytes(value)
            bad.append((topic, b"ann" if topic != "friendships" else pair_key("ann", "bob").encode(), value, ""))
    return bad


async def _send(settings, records) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def test_bad_records_from_any_producer_go_to_dead_letters_and_the_worker_goes_on(fresh_settings, worker):
    rng = random.Random(42)
    bad = _bad_records(rng)
    good = [(ev.topic_for(e), ev.key_for(e).encode(), ev.to_bytes(e)) for e in GOOD]
    mixed = [(t, k, v) for t, k, v, _ in bad] + good
    rng.shuffle(mixed)
    asyncio.run(_send(fresh_settings, mixed))
    asyncio.run(wait_until_quiescent(fresh_settings, timeout=120, progress=None))
    assert worker.poll() is None, "the worker is still running"

    # Every record either scored or was dead-lettered with where it came from.
    letters = asyncio.run(read_dead_letters(fresh_settings))
    samples = processes.scrape_metrics(fresh_settings.metrics_port)
    accepted = processes.sum_samples(samples, "standing_events_accepted_total")
    duplicates = processes.sum_samples(samples, "standing_events_duplicate_total")
    rejected = processes.sum_samples(samples, "standing_events_rejected_total")
    assert accepted + duplicates + rejected == len(mixed)
    assert rejected == len(letters) >= len([b for b in bad if b[3]])
    originals = {(letter["topic"], letter["original"]) for letter in letters}
    for topic, key, value, reason in bad:
        if reason:
            assert (topic, value) in originals, reason
            assert any(l["reason"] == reason and l["original"] == value for l in letters), reason
    for letter in letters:
        assert letter["source"] == "worker" and letter["offset"] is not None and letter["partition"] is not None
        assert letter["reason"] in ev.REASONS and letter["detail"]

    # Scores are exactly the reference's for what was valid: the good events plus
    # any mutated record that still decodes to a valid event under its key.
    # (in the order sent: a mutated copy may share an event_id with a good event,
    # and the first one applied wins)
    valid = []
    for topic, key, value in mixed:
        try:
            event = ev.from_bytes(topic, value)
        except ev.Rejected:
            continue
        if ev.key_for(event).encode() == key:
            valid.append(event)
    expected = compute_reference([json.dumps(ev.to_json_dict(e)) for e in valid], RULES).raw
    scores = asyncio.run(read_scores(fresh_settings))
    assert set(scores) == set(expected)
    for user, raw in expected.items():
        assert abs(scores[user]["raw"] - raw) <= RULES.error_bound


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_query_api_explains_scores(fresh_settings, worker, tmp_path):
    events = [
        ev.Friendship("f1", 1, "ann", "bob", "add", 1.0),
        ev.Friendship("f2", 2, "ann", "cid", "add", 3.0),
        ev.Purchase("p1", 3, "bob", "groceries", 300.0),
        ev.Post("q1", 4, "cid", "x", ("spam", "spam")),
        ev.Post("q2", 5, "ann", "y", ("helpful",)),
    ]
    asyncio.run(_send(fresh_settings, [(ev.topic_for(e), ev.key_for(e).encode(), ev.to_bytes(e)) for e in events]))
    asyncio.run(wait_until_quiescent(fresh_settings, timeout=120, progress=None))
    base = f"http://127.0.0.1:{fresh_settings.web_port}"

    status, ann = _get(f"{base}/users/ann")
    assert status == 200
    assert set(ann) >= {"score", "band", "raw", "own", "network", "reasons", "history"}
    assert ann["own"] == 2.0 and ann["friends"] == 2
    assert RULES.display_min <= ann["score"] <= RULES.display_max
    # the network is one reason: nobody else's id or score (spec section 5)
    kinds = {(r["kind"], r.get("code")) for r in ann["reasons"]}
    assert kinds == {("network", None), ("rule", "post:helpful")}
    assert abs(sum(r["contribution"] for r in ann["reasons"]) - ann["raw"]) <= RULES.error_bound
    network = next(r for r in ann["reasons"] if r["kind"] == "network")
    assert network["friends"] == 2 and "bob" not in json.dumps(ann) and "cid" not in json.dumps(ann)

    assert _get(f"{base}/users/nobody") == (
        404, {"error": "unknown user", "user_id": "nobody", "detail": "no accepted event names this user"}
    )  # fmt: skip
    assert _get(f"{base}/users/{'x' * 300}")[0] == 400
    assert _get(f"{base}/health") == (200, {"status": "ok"})
    assert _get(f"{base}/ready") == (200, {"status": "ready"})
    request = urllib.request.Request(f"{base}/users/ann", method="POST", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 405

    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "standing", "explain", "ann", "--api", base], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "ann:" in done.stdout and "friends' scores, together (2 friends)" in done.stdout and "post:helpful" in done.stdout
    assert "cid" not in done.stdout
    for bad, said in (("", "user_id is empty"), ("a\nb", "control characters")):
        done = subprocess.run(
            [sys.executable, "-m", "standing", "explain", bad, "--api", base], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr

    # The operator's choice (STANDING_EXPLAIN_FRIENDS=1): the same state, explained friend by friend.
    processes.stop_process(worker)
    detailed = fresh_settings.with_overrides(explain_friends=True)
    again = processes.start_worker_process(detailed, log_path=tmp_path / "detailed.log")
    try:
        processes.wait_for_metrics(detailed.metrics_port, again, log_path=tmp_path / "detailed.log")
        wait_until_ready(detailed)
        status, ann = _get(f"{base}/users/ann")
        assert status == 200, ann
        friends = {r["user_id"]: r for r in ann["reasons"] if r["kind"] == "friend"}
        assert set(friends) == {"bob", "cid"} and not [r for r in ann["reasons"] if r["kind"] == "network"]
        assert friends["bob"]["friend_raw"] > 0 > friends["cid"]["friend_raw"]
    finally:
        processes.stop_process(again)


@pytest.mark.timeout(600)
def test_a_celebrity_whose_state_outgrows_kafkas_default_record_size(fresh_settings, worker):
    """45,000 friends make one user's state (a changelog record) ~1.2 MB, over
    Kafka's 1 MB default; their publish reaches every friend. The worker goes
    on and the scores match the batch reference."""
    fans = 45_000
    events = [ev.Friendship(f"c{i}", 1 + i, "celebrity", f"fan{i:05d}", "add", 1.0) for i in range(fans)]
    events += [ev.Purchase("buy", fans + 10, "celebrity", "groceries", 400.0), ev.Post("fanpost", fans + 11, "fan00007", "p", ("helpful",))]
    asyncio.run(_send(fresh_settings, [(ev.topic_for(e), ev.key_for(e).encode(), ev.to_bytes(e)) for e in events]))
    asyncio.run(wait_until_quiescent(fresh_settings, timeout=540, progress=None))
    assert worker.poll() is None, "the worker died"
    scores = asyncio.run(read_scores(fresh_settings))
    expected = compute_reference([json.dumps(ev.to_json_dict(e)) for e in events], RULES)
    assert set(scores) == set(expected.raw)
    worst = max(abs(scores[user]["raw"] - raw) for user, raw in expected.raw.items())
    assert worst <= RULES.error_bound, worst
