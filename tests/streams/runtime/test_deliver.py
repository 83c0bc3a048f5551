"""A batch whose writes fail midway for its own fault (a state that does not encode: a bug meeting a
record) is put back as it was, so that its records count when read again and the one to blame is
found. Nothing of it was sent: nothing is kept."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from streams import batch as core
from streams.rules import load_rules
from streams.runtime.agents import Scorer
from streams.runtime.app import create_app
from streams.state import UserState
from topology.settings import Settings


def test_a_state_that_does_not_encode_puts_the_batch_s_states_back(tmp_path):
    settings = replace(Settings(), data_dir=tmp_path, metrics_port=0)
    scorer = Scorer(create_app(settings), settings, load_rules())
    users = scorer.users
    users.put(0, "ann", UserState(own=1.0))
    was = users.load_raw(0, "ann")
    broken = UserState(own=2.0)
    broken.own = "not a number"
    result = core.BatchResult(writes=[(0, "ann", UserState(own=5.0)), (1, "bob", UserState(own=3.0)), (2, "cid", broken)])
    with pytest.raises(ValueError):  # the error itself: a record's fault, to be isolated (not Held)
        asyncio.run(scorer._deliver("score_users", users, result))
    assert users.load_raw(0, "ann") == was and users.load(0, "ann").own == 1.0
    assert users.load_raw(1, "bob") is None and users.load_raw(2, "cid") is None
    assert not scorer._undelivered, "nothing of it was sent: nothing to send first next time"
