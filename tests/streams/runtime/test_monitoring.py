"""The table key count behind standing_table_keys: exact, and never a large share of the worker's time."""

from __future__ import annotations

import asyncio

import pytest

from streams.runtime.monitoring import KEY_COUNT_INTERVAL_S, _count_keys, next_key_count_after


class _Keys:
    """What the count reads of a store: ``keys(partition)``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def keys(self, partition: int):
        return (f"u{i}".encode() for i in range(self.n))


def test_the_count_is_exact_and_gives_way_while_it_scans():
    async def scenario():
        others_ran = []

        async def other_task():
            while True:
                others_ran.append(1)
                await asyncio.sleep(0)

        running = asyncio.ensure_future(other_task())
        await asyncio.sleep(0)
        before = len(others_ran)
        counted, scanning = await _count_keys(_Keys(12_345), 0, chunk=1000)
        running.cancel()
        return counted, scanning, len(others_ran) - before

    counted, scanning, turns = asyncio.run(scenario())
    assert counted == 12_345
    assert 0 < scanning < 5
    assert turns >= 12  # one turn per 1000 keys


def test_a_long_scan_is_repeated_less_often_to_stay_near_one_percent_of_the_time():
    assert next_key_count_after(0.01) == KEY_COUNT_INTERVAL_S
    assert next_key_count_after(0.55) == pytest.approx(55.0)  # 100k users and 560k pairs: 1% instead of 3.7%
