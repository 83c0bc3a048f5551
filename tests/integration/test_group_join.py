"""A member the group leader leaves out of an assignment joins again (streams/runtime/group_join.py).

The leader here is a real aiokafka consumer whose assignor leaves the other
member out once, as a leader does that computed the assignment from a member
list without it; the broker then answers that member's SyncGroup with zero
bytes. Unpatched, aiokafka's coordination task dies on them and the member
never owns a partition.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.consumer import group_coordinator
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from streams.runtime import group_join
from tests.helpers import free_port

TAG_LEFT_OUT = b"left-out"


class _LeavesOneOutOnce(RoundRobinPartitionAssignor):
    """Round-robin, except that the first time two members join it assigns only the untagged one."""

    name = "standing-test-leaves-one-out"
    tag = b""
    left_out_once = False

    @classmethod
    def metadata(cls, topics):
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), cls.tag)

    @classmethod
    def assign(cls, cluster, member_metadata):
        assignment = super().assign(cluster, member_metadata)
        tagged = [member for member, metadata in member_metadata.items() if metadata.user_data == TAG_LEFT_OUT]
        if tagged and not _LeavesOneOutOnce.left_out_once:
            _LeavesOneOutOnce.left_out_once = True
            # The leader's SyncGroup carries no assignment for it at all.
            return {member: value for member, value in assignment.items() if member not in tagged}
        return assignment


class _TaggedMember(_LeavesOneOutOnce):
    tag = TAG_LEFT_OUT


@pytest.fixture
def installed():
    for patch in group_join.PATCHES:
        patch.apply()
    yield
    for patch in group_join.PATCHES:
        patch.remove()
    group_join.on_membership_lost(None)


async def _join_with_one_member_left_out(address: str) -> tuple[set, bool]:
    """(the left-out member's partitions after the second join, whether its coordination task still runs)."""
    topic = f"group-join-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    finally:
        await admin.close()
    _LeavesOneOutOnce.left_out_once = False
    group = f"group-join-{uuid.uuid4().hex[:8]}"
    options = dict(bootstrap_servers=address, group_id=group, enable_auto_commit=False, retry_backoff_ms=100)
    leader = AIOKafkaConsumer(topic, partition_assignment_strategy=(_LeavesOneOutOnce,), **options)
    member = AIOKafkaConsumer(topic, partition_assignment_strategy=(_TaggedMember,), **options)
    await leader.start()
    try:
        # The first member alone in the group becomes its leader.
        while not leader.assignment():
            await leader.getmany(timeout_ms=100)
        try:
            # start() waits for the first assignment: it raises if the member's coordination ended.
            await member.start()
            deadline = asyncio.get_running_loop().time() + 30
            while not member.assignment() and asyncio.get_running_loop().time() < deadline:
                await asyncio.gather(leader.getmany(timeout_ms=100), member.getmany(timeout_ms=100))
        except KafkaError:  # the member's coordination ended: it will never be assigned anything
            pass
        try:
            task = member._coordinator._coordination_task
            if task.done() and not task.cancelled():
                # Retrieved here, so asyncio does not log it from a finalizer later: formatting
                # its traceback there can run inside another ast.parse, and CPython 3.11 then
                # fails that one ("AST constructor recursion depth mismatch").
                task.exception()
            return set(member.assignment()), not task.done()
        finally:
            await member.stop()
    finally:
        await leader.stop()


def test_a_member_left_out_of_the_assignment_joins_again_and_gets_partitions(broker, installed):
    partitions, coordinating = asyncio.run(_join_with_one_member_left_out(broker.address))
    assert _LeavesOneOutOnce.left_out_once  # the leader did leave it out once
    assert partitions, "the left-out member never got a partition"
    assert coordinating


def test_a_coordination_that_dies_is_reported(broker, installed, monkeypatch):
    # Without the rejoin above, the same join ends aiokafka's coordination task.
    monkeypatch.setattr(
        group_coordinator.CoordinatorGroupRebalance, "_send_sync_group_request", group_join.SYNC_GROUP.original
    )
    lost: list[BaseException] = []
    group_join.on_membership_lost(lost.append)
    partitions, coordinating = asyncio.run(_join_with_one_member_left_out(broker.address))
    assert not partitions and not coordinating
    assert len(lost) == 1 and "unpack requires a buffer" in str(lost[0])


WORKER_LOSING_ITS_GROUP = textwrap.dedent(
    """
    import asyncio, sys, threading
    import faust
    from streams.runtime import group_join
    from streams.runtime.worker import crash_when_membership_is_lost

    app = faust.App("membership-lost", broker="kafka://{broker}", web_host="127.0.0.1", web_port={web_port},
                    store="memory://", datadir=sys.argv[1])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    crash_when_membership_is_lost(app, loop)

    @app.timer(interval=1.0)
    async def lose_the_group():
        # As aiokafka's coordination task does when it ends: from the consumer's thread.
        threading.Thread(target=group_join._membership_lost, args=(RuntimeError("coordination ended"),)).start()

    faust.Worker(app, loop=loop, loglevel="warning", quiet=True).execute_from_commandline()
    """
)


def test_a_worker_whose_group_membership_is_lost_exits_with_status_1(broker, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER_LOSING_ITS_GROUP.format(broker=broker.address, web_port=free_port()))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "left its group for good" in done.stderr
