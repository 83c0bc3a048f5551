"""The C path of friends' estimates (``Receiver`` in streams/_state_codec.c) gives what the Python path gives.

The Python path (``UserBatch.estimate``, ``finish`` and ``encode_user`` on a
decoded state) is the reference: on any stored state and any estimates, the C
path must leave the same bytes, send the same records and count the same,
byte for byte; where it declines (None) the Python path decides.
"""

from __future__ import annotations

import math
import random
import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import codec
from standing.population import PopulationConfig, generate_events
from streams import batch as core
from streams import state_codec
from streams.local import LocalPipeline
from streams.scoring import EPOCH_SHIFT
from streams.state import FriendEntry, UserExtra, UserState
from streams.rules import load_rules
from tests.streams import test_rights, test_time
from tests.streams.test_state_codec_native import damage
from topology import topics

native = state_codec.native

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="the C codec is built on little-endian hosts only")

TOPIC = topics.FRIEND_UPDATES


# --- whole flows: both paths, the same delivery order, the same bytes everywhere ----------------------------


def _both(lines, rules, seed, partitions, change=None, **options):
    """The pipeline run with the C path and without, in the same random order; both runs."""
    runs = []
    for native_receivers in (True, False):
        pipeline = LocalPipeline(
            rules, partitions=partitions, rng=random.Random(seed), native_receivers=native_receivers, **options
        )
        pipeline.produce_lines(lines[: len(lines) // 2])
        if change is not None:
            pipeline.publish_rules(change)
        pipeline.produce_lines(lines[len(lines) // 2 :])
        pipeline.run()
        runs.append(pipeline)
    return runs


def _assert_same(with_c: LocalPipeline, without: LocalPipeline) -> None:
    assert with_c.logs.keys() == without.logs.keys()
    for slot, records in without.logs.items():
        assert with_c.logs[slot] == records, slot  # every record sent, in order, byte for byte
    assert with_c.users.data == without.users.data  # every state, byte for byte
    assert with_c.pairs.data == without.pairs.data
    assert with_c.counts == without.counts


def test_the_receiver_is_built():
    assert native is not None, "streams._state_codec is not built: run `make install` (needs a C compiler)"
    state = UserState(own=1.0, friends={"a": FriendEntry(weight=1.0, estimate=2.0, has_estimate=True, version=1)})
    data = state_codec.encode_user(state)
    receiver = native.receive(data)
    assert receiver is not None and receiver.encode() == data


@pytest.mark.parametrize("rules_name", ["BLEND", "DECAY"])
def test_a_power_law_population_leaves_the_same_bytes_either_way(rules_name):
    rules = {"BLEND": test_rights.BLEND, "DECAY": test_time.DECAY}[rules_name]
    config = PopulationConfig(users=400, events=6000, seed=5, duplicate_share=0.02, invalid_share=0.01)
    lines = [line if isinstance(line, str) else codec_json(line) for line in generate_events(config, rules)]
    with_c, without = _both(lines, rules, seed=3, partitions=3, max_batch=400, duplicate_p=0.01, restart_p=0.01, crash_p=0.01)
    _assert_same(with_c, without)
    assert with_c.counts["updates_received", "applied"] > 10_000  # the C path did the work


def codec_json(item) -> str:
    import json

    return json.dumps(item)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=test_rights.event_files(),
    seed=st.integers(0, 2**32 - 1),
    partitions=st.integers(1, 4),
    lift=st.booleans(),
)
def test_retractions_and_erasures_leave_the_same_bytes_either_way(lines, seed, partitions, lift):
    rules = test_rights.LIFT if lift else test_rights.BLEND
    _assert_same(*_both(lines, rules, seed, partitions, max_batch=6, duplicate_p=0.1, restart_p=0.05, crash_p=0.03))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=test_time.event_files(),
    seed=st.integers(0, 2**32 - 1),
    partitions=st.integers(1, 4),
    rules=st.sampled_from(["DECAY", "DECAY_ONLY", "CHANGED"]),
    change=st.booleans(),
)
def test_decay_expiry_and_rules_changes_leave_the_same_bytes_either_way(lines, seed, partitions, rules, change):
    rules = getattr(test_time, rules)
    _assert_same(
        *_both(lines, rules, seed, partitions, change=test_time.CHANGED if change else None,
               max_batch=6, duplicate_p=0.05, restart_p=0.03, crash_p=0.03)
    )  # fmt: skip


# --- one batch, on any state: the arithmetic, the edges, and handing a user over to Python ----------------

ids = st.sampled_from(["a", "b", "c", "d", "é", "ü-1", "x" * 20, "日本"])
floats = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-5, 5) | st.sampled_from([0.0, -0.0, 1.0])
versions = st.integers(0, 6) | st.integers(0, 3).map(lambda epoch: epoch << EPOCH_SHIFT) | st.integers(-(2**40), 2**62)
times = st.integers(0, 10**6) | st.integers(10**12, 10**12 + 10**10)
#: what a foreign writer or a damaged record could send: ids the bytes cannot hold (empty, with NUL), times
#: at int64's ends (Python's ints do not overflow), offsets below -1
senders = ids | st.sampled_from(["", "a\x00b"])
update_times = times | st.sampled_from([-(2**63), -(2**63) + 5, -1, 2**63 - 1])
offsets = st.integers(0, 10**6) | st.integers(-3, -1)

friend_entries = st.builds(
    FriendEntry,
    weight=st.sampled_from([0.0, 1.0, 0.5, 2.0, -1.0]) | floats,
    estimate=floats,
    has_estimate=st.booleans(),
    version=versions,
    link_version=st.integers(0, 5),
    link_ts=times,
)
stored_states = st.builds(
    UserState,
    own=floats,
    own_by_rule=st.dictionaries(st.sampled_from(["purchase:groceries", "post:spam", "x"]), floats, max_size=3),
    published=floats,
    version=versions,
    friends=st.dictionaries(ids, friend_entries, max_size=6),
    recent_events=st.dictionaries(st.text(max_size=4), times, max_size=4),
    history=st.lists(st.tuples(times, floats), max_size=21),
    source_offsets=st.dictionaries(st.sampled_from([TOPIC, "purchases", "posts"]), st.integers(-1, 10**6), max_size=3),
    updated_ts=times,
    exists=st.booleans(),
    erased_ts=st.integers(-1, 10**6),
    as_of=times,
    extra=st.sampled_from([b"", state_codec.encode_extra(UserExtra(named_ts=5))]),
)
updates = st.dictionaries(senders, st.tuples(floats, versions, update_times, offsets), min_size=1, max_size=5)
link_updates = st.dictionaries(
    senders,
    st.tuples(
        st.sampled_from([1.0, 0.5, 2.0, 0.0, -0.0, -1.0, math.nan]),  # -1: voided by an erasure
        st.integers(0, 6),
        st.sampled_from([0]) | update_times,  # 0: a link re-sent after a crash (no event time)
        offsets,
    ),
    min_size=1,
    max_size=4,
)


@st.composite
def batches(draw):
    """Stored states of some users, then what reaches them: estimates and links, sometimes a purchase or an erasure."""
    users = draw(st.lists(st.sampled_from(["u1", "u2", "u3"]), min_size=1, max_size=3, unique=True))
    stored = {user: draw(stored_states) for user in users if draw(st.integers(0, 5))}  # some are new
    steps = []
    for _ in range(draw(st.integers(1, 6))):
        user = draw(st.sampled_from(users))
        kind = draw(st.sampled_from(["estimates", "estimates", "links", "links", "link", "points", "erasure"]))
        steps.append((kind, user, draw(link_updates if kind in ("links", "link") else updates)))
    return stored, steps


def _run_batch(stored: dict[str, bytes], steps, rules, epoch, clock, *, use_c: bool):
    user_batch = core.UserBatch(
        rules,
        lambda user: state_codec.decode_user(stored[user]) if user in stored else None,
        load_raw=(lambda user: stored.get(user)) if use_c else None,
        dedup_window_ms=1000,
        dedup_min_ids=4,
        epoch=epoch,
        clock=clock,
    )
    event_type = core.ev.CATALOG.by_name["purchase"]
    for n, (kind, user, update) in enumerate(steps):
        if kind == "estimates":
            user_batch.estimates(user, update, TOPIC)
        elif kind == "links":
            user_batch.links(user, update, TOPIC)
        elif kind == "link":  # the Python path, on a user the C path may hold
            sender, (weight, version, origin_ts, offset) = next(iter(update.items()))
            user_batch.link(user, sender, weight, version, origin_ts, TOPIC, offset)
        elif kind == "erasure":
            user_batch.erasure(core.ev.Erasure(f"x{n}", clock + n, user), "erasures", n)
        else:
            event = core.ev.Purchase(f"p{n}", clock + n, user, "groceries", 10.0)
            user_batch.points(event_type, event, "purchases", n)
    output = user_batch.finish(now_ms=77)
    states = {
        user: state.value if isinstance(state, core.Raw) else state_codec.encode_user(state)
        for user, state in output.states.items()
    }
    return (
        states,
        [repr(e) for e in output.estimates],
        [repr(s) for s in output.scores],
        repr(output.counts),
        user_batch.clock,
        user_batch._read,
        repr(user_batch._changed),
        repr(output.erased),
    )


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=batches(),
    rules=st.sampled_from([test_rights.BLEND, test_rights.LIFT, test_time.DECAY, test_time.DECAY_ONLY, test_time.CHANGED]),
    epoch=st.integers(0, 3),
    clock=times,
)
def test_any_batch_of_estimates_and_links_on_any_state_gives_what_the_python_path_gives(batch, rules, epoch, clock):
    stored_states, steps = batch
    stored = {user: state_codec.encode_user(state) for user, state in stored_states.items()}
    assert _run_batch(stored, steps, rules, epoch, clock, use_c=True) == _run_batch(
        stored, steps, rules, epoch, clock, use_c=False
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=stored_states)
def test_an_ordinary_state_is_taken_and_written_back_as_it_was(state):
    data = state_codec.encode_user(state)
    receiver = native.receive(data)
    assert receiver is not None
    assert receiver.encode() == data


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=stored_states, data=st.data())
def test_damaged_bytes_are_taken_only_as_the_python_path_would_read_and_write_them(state, data):
    damaged = damage(data, state_codec.encode_user(state))
    receiver = native.receive(damaged)
    if receiver is not None:
        # what the Python path would write after reading these bytes, changing nothing
        assert receiver.encode() == state_codec.encode_user(state_codec.decode_user_py(damaged))


def test_bytes_the_python_path_would_rewrite_are_left_to_it():
    state = UserState(own=1.0, recent_events={"e1": 5}, friends={"a": FriendEntry(weight=1.0)})
    data = state_codec.encode_user(state)
    assert native.receive(data) is not None
    # recent_events' count (1) written in two bytes: Python reads it, and writes it back in one
    at = data.index(b"\x02\x04e1")
    longer = data[:at] + b"\x82\x00" + data[at + 1 :]
    assert state_codec.decode_user_py(longer).recent_events == {"e1": 5}
    assert native.receive(longer) is None
    # an event id named twice in recent_events (a dict keeps one): few, and enough to be hashed
    for n in (2, 20):
        state = UserState(recent_events={f"e{i:02d}": i for i in range(n)})
        data = state_codec.encode_user(state)
        assert native.receive(data) is not None
        repeated = data.replace(b"e01", b"e00")
        assert len(state_codec.decode_user_py(repeated).recent_events) == n - 1
        assert native.receive(repeated) is None
    # a friend named twice: a dict keeps one
    twice = UserState(friends={"a": FriendEntry(weight=1.0), "b": FriendEntry(weight=2.0)})
    data = state_codec.encode_user(twice)
    assert native.receive(data.replace(b"\x06a\x00b", b"\x06a\x00a")) is None
    # an older version of the schema
    older = b"\x00" + struct.pack(">I", codec.schema_id("user_state") - 1) + data[5:]
    assert native.receive(older) is None


def test_an_unexpected_value_leaves_the_state_untouched_for_the_python_path():
    data = state_codec.encode_user(UserState(friends={"a": FriendEntry(weight=1.0)}))
    receiver = native.receive(data)
    assert receiver.estimates({"a": (1, 1, 0, 0)}, 0, 0.0, TOPIC) is None  # an int estimate: Python's to apply
    assert receiver.estimates({"a": (1.0, 2**64, 0, 0)}, 0, 0.0, TOPIC) is None
    assert receiver.encode() == data
