"""The same-model peers of `make bench` (issue 17) score a small population within the bound of the reference.

Each peer runs as its own process on events pre-produced to a broker of this
module, duplicates included, and must put every user within
epsilon / (1 - alpha) of `standing reference`. The peers are a bench-only
extra (`pip install -e '.[bench]'`); without them these tests are skipped.
"""

from __future__ import annotations

import pytest

from standing.broker import EmbeddedBroker
from standing.peers.common import free_port
from standing.peers.run import preproduce, reference_scores, run_pathway, run_quixstreams
from standing.population import PopulationConfig
from streams.rules import load_rules

PARTITIONS = 4


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """A broker holding 3,000 events of 300 users (2% sent twice), and their reference scores."""
    broker = EmbeddedBroker(port=free_port(), data_dir=tmp_path_factory.mktemp("peers-broker")).start()
    try:
        rules = load_rules()
        config = PopulationConfig(users=300, events=3000, seed=7, duplicate_share=0.02)
        total, lines = preproduce(broker.address, config, PARTITIONS, rules)
        yield broker.address, total, rules, reference_scores(lines, rules)
    finally:
        broker.stop()


def _check(result, expected_users: int) -> None:
    assert result.exact, result.detail
    assert result.max_abs_diff is not None and result.max_abs_diff <= load_rules().error_bound
    assert result.events_per_s and result.events_per_s > 0
    assert result.peak_rss_bytes and result.peak_rss_bytes > 10 * 2**20
    assert f"{expected_users} users compared" in result.detail


@pytest.mark.timeout(150)
def test_quixstreams_peer_is_within_the_bound(scenario, tmp_path):
    pytest.importorskip("quixstreams")
    broker, total, rules, expected = scenario
    result = run_quixstreams(broker, PARTITIONS, total, rules, reference=expected, workdir=tmp_path, idle_timeout=3.0)
    _check(result, len(expected))
    assert result.extra["messages_processed"] > total  # friend updates travelled through the inbox topic


@pytest.mark.timeout(90)
@pytest.mark.parametrize("max_backlog_size", [None, 500], ids=["defaults", "bounded-backlog"])
def test_pathway_peer_is_within_the_bound(scenario, tmp_path, max_backlog_size):
    pytest.importorskip("pathway")
    broker, total, rules, expected = scenario
    result = run_pathway(broker, PARTITIONS, total, rules, reference=expected, workdir=tmp_path, max_backlog_size=max_backlog_size)
    _check(result, len(expected))
    if max_backlog_size is not None:
        assert result.extra["minibatches"] > 1  # maintained incrementally, not solved once
