"""The users table's C codec (streams/_state_codec.c) writes and reads exactly what the Python codec does.

The Python codec (``encode_user_py`` / ``decode_user_py``) is the reference:
on any state the C codec must give the same bytes, on any bytes the same
state, and where it declines (None) the Python codec decides, errors included.
"""

from __future__ import annotations

import math
import resource
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import codec
from streams import state_codec
from streams.state import FriendEntry, UserState

native = state_codec.native

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="the C codec is built on little-endian hosts only")


def test_the_c_codec_is_built_and_used():
    # A missing build would only be a warning at run time (and a 5x slower
    # worker); here it fails, so CI sees it.
    assert native is not None, "streams._state_codec is not built: run `make install` (needs a C compiler)"
    state = UserState(own=1.0, friends={"a": FriendEntry(weight=1.0)})
    assert native.encode_user(state) == state_codec.encode_user_py(state)
    assert native.decode_user(state_codec.encode_user_py(state)) == state
    # UserState and FriendEntry are plain slotted dataclasses: built by filling their slots
    assert native.builds_by_slots() == (True, True)


def damage(data, raw: bytes) -> bytes:
    """``raw`` with one to three bytes flipped, inserted, or the rest cut off, as ``data`` draws."""
    damaged = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(damaged) - 1)))
        if kind == "flip" and damaged:
            damaged[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del damaged[at:]
        else:
            damaged[at:at] = bytes([data.draw(st.integers(0, 255))])
    damaged = bytes(damaged)
    return damaged


ids = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
keys = st.text(max_size=12)  # surrogates included: neither codec can write them
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**60), 2**60)
longs = st.integers(-(2**63), 2**63 - 1) | st.integers(-(2**70), 2**70)
small = st.integers(0, 300) | st.integers(0, 2**33) | st.integers(-5, 5) | st.integers(-(2**63), 2**63 - 1)

friend_entries = st.builds(
    FriendEntry,
    weight=numbers,
    estimate=numbers,
    has_estimate=st.booleans() | st.integers(-1, 256),
    version=small,
    link_version=small,
)
user_states = st.builds(
    UserState,
    own=numbers,
    own_by_rule=st.dictionaries(keys, numbers, max_size=4),
    published=numbers,
    version=longs,
    friends=st.dictionaries(ids, friend_entries, max_size=15),
    recent_events=st.dictionaries(keys, longs, max_size=6),
    history=st.lists(st.tuples(longs, numbers), max_size=22),
    source_offsets=st.dictionaries(keys, longs, max_size=3),
    updated_ts=longs,
)


def _python_encoding(state: UserState) -> bytes | type:
    try:
        return state_codec.encode_user_py(state)
    except Exception as error:  # noqa: BLE001 - the reference's outcome, whatever it is
        return type(error)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user_states)
def test_any_state_is_written_as_the_python_codec_writes_it(state):
    reference = _python_encoding(state)
    written = native.encode_user(state)
    if isinstance(reference, bytes):
        assert written is None or written == reference
        if all(isinstance(v, float) or (isinstance(v, int) and -(2**63) <= v < 2**63) for v in _numbers_of(state)):
            assert written == reference  # ordinary states never fall back
        assert state_codec.encode_user(state) == reference
    else:
        assert written is None  # the Python codec raises; the C codec must not write anything
        with pytest.raises(reference):
            state_codec.encode_user(state)


def _numbers_of(state: UserState):
    yield from (state.own, state.published, state.version, state.updated_ts)
    yield from state.own_by_rule.values()
    yield from state.recent_events.values()
    yield from state.source_offsets.values()
    for ts, raw in state.history:
        yield ts
        yield raw
    for entry in state.friends.values():
        yield from (entry.weight, entry.estimate, entry.version, entry.link_version)
        if not isinstance(entry.has_estimate, bool) and not 0 <= entry.has_estimate <= 255:
            yield None  # bytes() refuses it: a fallback is expected
    for key in (*state.own_by_rule, *state.recent_events, *state.source_offsets):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in key):
            yield None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user_states)
def test_any_written_state_is_read_as_the_python_codec_reads_it(state):
    reference = _python_encoding(state)
    if not isinstance(reference, bytes):
        return
    decoded = native.decode_user(reference)
    assert decoded is not None
    assert repr(decoded) == repr(state_codec.decode_user_py(reference))
    assert all(type(entry) is FriendEntry for entry in decoded.friends.values())


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user_states, st.data())
def test_damaged_bytes_are_read_as_the_python_codec_reads_them_or_left_to_it(state, data):
    reference = _python_encoding(state)
    if not isinstance(reference, bytes):
        return
    damaged = damage(data, reference)
    try:
        expected = repr(state_codec.decode_user_py(damaged))
    except Exception:  # noqa: BLE001 - the Python codec's verdict: not a state
        expected = None
    decoded = native.decode_user(damaged)
    if expected is None:
        assert decoded is None
    elif decoded is not None:
        assert repr(decoded) == expected


def test_older_versions_and_foreign_bytes_are_left_to_the_python_codec():
    state = UserState(own=2.0, friends={"a": FriendEntry(weight=1.0, estimate=3.0, has_estimate=True)})
    current = state_codec.encode_user_py(state)
    older = current[:1] + (7).to_bytes(4, "big") + current[5:]  # schema id 7 is user_state version 1
    assert native.decode_user(older) is None
    assert native.decode_user(b"") is None
    assert native.decode_user(bytearray(current)) is None  # only bytes are taken
    assert native.decode_user(current + b"\x00") is None
    pair = codec.encode("pair_state", {"user_a": "a", "user_b": "b", "weight": 1.0, "version": 1,
                                      "recent_events": {}, "source_offset": 3})  # fmt: skip
    assert native.decode_user(pair) is None
    with pytest.raises(codec.DecodeError):
        state_codec.decode_user(pair)


def test_states_of_other_types_are_left_to_the_python_codec():
    class Derived(UserState):
        __slots__ = ()

    assert native.encode_user(Derived()) is None
    state = UserState(friends={"a": {"weight": 1.0}})  # not a FriendEntry
    assert native.encode_user(state) is None
    state = UserState(own=math.pi, history=[[1, 2.0]])  # a list, not a tuple: the Python codec writes it
    assert native.encode_user(state) is None
    assert state_codec.decode_user(state_codec.encode_user(state)).history == [(1, 2.0)]


def test_reading_and_writing_many_states_does_not_grow_memory():
    state = UserState(
        own=1.5, own_by_rule={"purchase:books": 1.5}, published=1.0, version=3,
        friends={f"u{i:06d}": FriendEntry(1.0, i / 7, True, i, 1) for i in range(12)},
        recent_events={f"e{i}": i for i in range(8)}, history=[(i, i / 3) for i in range(20)],
        source_offsets={"purchases": 5}, updated_ts=9,
    )  # fmt: skip
    data = native.encode_user(state)
    damaged = data[:-3]

    def churn(times: int) -> None:
        for _ in range(times):
            native.decode_user(native.encode_user(native.decode_user(data)))
            native.decode_user(damaged)

    churn(20_000)  # warm up allocators
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    churn(200_000)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    # A leak of one small object per call would be tens of MiB here.
    assert grown_kib < 8 * 1024, f"peak RSS grew {grown_kib} KiB over 200k round trips"
