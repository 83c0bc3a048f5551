"""The stalled-partition check puts a partition Faust left out of its fetch set back."""

from __future__ import annotations

from aiokafka import TopicPartition
from faust.types import TP

from streams.runtime import metrics
from streams.friend_updates import ESTIMATE
from streams.runtime.stall_watch import _held_while_applied, _resume_if_left_out
from streams.waiting import WaitingUpdates


class _FaustConsumerState:
    """The slice of faust.transport.consumer.Consumer the check reads and repairs."""

    def __init__(self, assigned: set[TP], active: set[TP], paused: set[TP] = frozenset(), buffered: set[TP] = frozenset()):
        self._assigned = assigned
        self._active_partitions = set(active)
        self._paused_partitions = set(paused)
        self._buffered_partitions = set(buffered)

    def assignment(self) -> set[TP]:
        return self._assigned

    def _get_active_partitions(self) -> set[TP]:
        return self._active_partitions

    # the same two lines as Faust's Consumer.resume_partitions
    def resume_partitions(self, tps) -> None:
        self._active_partitions.update(tps)
        self._paused_partitions.difference_update(tps)


class _Flag:
    def __init__(self, value: bool) -> None:
        self.value = value

    def is_set(self) -> bool:
        return self.value

    def is_active(self) -> bool:
        return self.value

    def resume(self) -> None:
        self.value = True


class _App:
    """The slice of faust.App the check reads: consumer, flow control, recovery."""

    def __init__(self, consumer, *, flow: bool = True, recovered: bool = True) -> None:
        self.consumer = consumer
        consumer.flow_active = flow
        consumer.resume_flow = lambda: setattr(consumer, "flow_active", True)
        self.flow_control = _Flag(flow)
        self.tables = type("Tables", (), {})()
        self.tables.recovery = type("Recovery", (), {"completed": _Flag(recovered), "in_recovery": not recovered})()


def _resumed() -> float:
    return metrics.PARTITIONS_RESUMED._value.get()


def test_a_partition_left_out_after_a_buffer_full_is_put_back():
    stuck, other = TP("friend-updates", 3), TP("friend-updates", 0)
    consumer = _FaustConsumerState({stuck, other}, active={other}, buffered={stuck})
    before = _resumed()
    _resume_if_left_out(_App(consumer), TopicPartition("friend-updates", 3), lag=64, stalled_s=25)
    assert stuck in consumer._active_partitions and stuck not in consumer._buffered_partitions
    assert _resumed() == before + 1


def test_a_paused_partition_is_resumed():
    stuck = TP("purchases", 1)
    consumer = _FaustConsumerState({stuck}, active=set(), paused={stuck})
    _resume_if_left_out(_App(consumer), TopicPartition("purchases", 1), lag=5, stalled_s=25)
    assert stuck in consumer._active_partitions and not consumer._paused_partitions


def test_an_active_partition_is_left_alone():
    tp = TP("posts", 2)
    consumer = _FaustConsumerState({tp}, active={tp})
    before = _resumed()
    _resume_if_left_out(_App(consumer), TopicPartition("posts", 2), lag=5, stalled_s=25)
    assert consumer._active_partitions == {tp} and _resumed() == before


def test_a_partition_no_longer_assigned_is_left_alone():
    consumer = _FaustConsumerState(set(), active=set())
    before = _resumed()
    _resume_if_left_out(_App(consumer), TopicPartition("posts", 2), lag=5, stalled_s=25)
    assert _resumed() == before


def test_a_flow_left_suspended_after_recovery_is_resumed():
    tp = TP("friend-updates", 1)
    consumer = _FaustConsumerState({tp}, active={tp})
    app = _App(consumer, flow=False)
    before = _resumed()
    _resume_if_left_out(app, TopicPartition("friend-updates", 1), lag=55, stalled_s=25)
    assert app.flow_control.is_active() and consumer.flow_active and _resumed() == before + 1


def test_a_flow_suspended_during_recovery_is_left_alone():
    tp = TP("friend-updates", 1)
    consumer = _FaustConsumerState({tp}, active={tp})
    app = _App(consumer, flow=False, recovered=False)
    _resume_if_left_out(app, TopicPartition("friend-updates", 1), lag=55, stalled_s=25)
    assert not app.flow_control.is_active() and not consumer.flow_active


def test_a_friend_updates_partition_whose_commit_the_worker_holds_is_not_stalled():
    """A long propagation wave holds the commit while every batch applies some of it."""
    scorer = type("Scorer", (), {"waiting_updates": WaitingUpdates()})()
    scorer.waiting_updates.add(2, 40, [(ESTIMATE, "a", "b", 1.0, 1, 0)])
    assert _held_while_applied(scorer, TopicPartition("friend-updates", 2))
    assert not _held_while_applied(scorer, TopicPartition("friend-updates", 3)), "nothing held there"
    assert not _held_while_applied(scorer, TopicPartition("posts", 2)), "only friend updates wait"


class _Progress:
    def __init__(self) -> None:
        self.processed: dict = {}

    def position(self, tp):
        return self.processed.get(tp)


def _scorer(app) -> object:
    scorer = type("Scorer", (), {})()
    scorer.app, scorer.ready, scorer.progress, scorer.waiting_updates = app, True, _Progress(), WaitingUpdates()
    return scorer


def test_a_partition_the_worker_processes_is_not_stalled_while_its_commit_waits(caplog):
    """In a large backlog a lane's commits can trail what it processed: that is progress, and nothing is said."""
    import asyncio

    from streams.runtime.stall_watch import STALL_S, StallWatch

    tp, faust_tp = TopicPartition("friendships", 1), TP("friendships", 1)
    scorer = _scorer(_App(_FaustConsumerState({faust_tp}, active={faust_tp})))
    watch = StallWatch(scorer)
    caplog.set_level("INFO", logger="streams.runtime.stall_watch")
    for step in range(6):
        scorer.progress.processed[faust_tp] = 100 * step  # processed moves, committed stays at 0
        asyncio.run(watch.observe(tp, 0, 75_000, now=step * STALL_S))
    assert not caplog.records

    for step in range(6, 8):  # neither moves now: checked, said at INFO (nothing left out: nothing done)
        asyncio.run(watch.observe(tp, 0, 75_000, now=step * STALL_S))
    checks = [r for r in caplog.records if "no progress" in r.getMessage()]
    assert checks and all(r.levelname == "INFO" for r in checks)
