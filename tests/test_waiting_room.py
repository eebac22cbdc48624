"""The waiting room: who starts first, what a freed slot pulls in, and the two clocks (the wait for a
GPU, the liveness of a task on one). Time is an injected clock; timers are delivered by a fake of
the timers queue when the test's time reaches them, as SQS would (never more than 15 min late).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import httpx
import pytest
from botocore.exceptions import ClientError

from spillway import aws
from spillway.dispatch import Dispatcher, Limits
from spillway.fleet import Fleet, Task
from spillway.health import GpuHealth
from spillway.jobs import JobStore
from spillway.models import Pool, PoolTask, Priority, TaskHeartbeat, TaskResult, TaskState, Timer, TimerKind
from spillway.priorities import PRIORITY_CLASSES
from spillway.reports import TaskReports
from spillway.timers import MAX_DELAY_SECONDS

from conftest import Cloud
from helpers import (
    CONTROL_KEY,
    Clock,
    FakeAgents,
    FakeTimers,
    RecordingStepFunctions,
    beat,
    emptied,
    fleet_for,
    job_id_for,
    pool_task,
    running_job,
    task_id_for,
    task_secret,
    token_for,
)
from test_fleet import NOW

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW
HEAD_START = {p: c.head_start_s for p, c in PRIORITY_CLASSES.items()}
SPILL_AFTER = {p: c.spill_after_s for p, c in PRIORITY_CLASSES.items()}
DEADLINE = {p: c.deadline_s for p, c in PRIORITY_CLASSES.items()}


@dataclass
class Room:
    """A pool's waiting room with its dispatcher, agents, reports and clocks; tasks named by labels."""

    cloud: Cloud
    fleet: Fleet
    dispatcher: Dispatcher
    reports: TaskReports
    agents: FakeAgents
    sfn: RecordingStepFunctions
    timers: FakeTimers
    clock: Clock
    ids: dict[str, str] = field(default_factory=dict)  # label -> task id
    sent: dict[str, PoolTask] = field(default_factory=dict)  # label -> what the state machine sent
    gpus: dict[str, tuple[Pool, int, int]] = field(default_factory=dict)
    silenced: set[str] = field(default_factory=set)  # GPUs whose agent no longer reports (killed, frozen)

    # ---- the world moves

    def gpu(self, gpu_id: str, vram_mb: int = 8000, slots: int = 1, pool: Pool = Pool.LOCAL) -> None:
        self.gpus[gpu_id] = (pool, vram_mb, slots)
        self.fleet.heartbeat(beat(gpu_id, pool, vram_mb, slots), now=self.clock.now)

    def advance(self, seconds: float) -> None:
        """Time passes; the agents keep reporting their GPUs (tasks beat only when told: `beat`), each the
        tasks it holds, except those `silenced`."""
        self.clock.advance(seconds)
        for gpu_id in self.gpus:
            if gpu_id not in self.silenced:
                self.kept_reporting(gpu_id)
                self.report(gpu_id)

    def kept_reporting(self, gpu_id: str) -> None:
        """Time jumps here, but a live agent reports every few seconds: its last beat was a moment ago (not
        one jump ago, which would make it silent for the jump)."""
        aws.table(self.cloud.settings.fleet_table).update_item(
            Key={"gpu_id": gpu_id}, UpdateExpression="SET last_heartbeat = :then",
            ExpressionAttributeValues={":then": Decimal(str(self.clock.now - 1))})

    def report(self, gpu_id: str, running: list[str] | None = None) -> bool:
        """The agent's fleet heartbeat, as the callback route handles it; True if it pumped the pool."""
        pool, vram_mb, slots = self.gpus[gpu_id]
        held = running if running is not None else [t.task_id for t in self.fleet.open_tasks(pool)
                                                    if t.gpu_id == gpu_id and t.state is not TaskState.DONE]
        report = beat(gpu_id, pool, vram_mb, slots, running=held)
        if self.dispatcher.on_heartbeat(report):
            self.dispatcher.pump(pool)
            return True
        return False

    def arrive(self, label: str, priority: Priority = NORMAL, pool: Pool = Pool.LOCAL,
               vram_mb: int = 2500, avoid: tuple[str, ...] = (), compute: int = 0) -> dict[str, str]:
        """The state machine opens attempt 1 of a new job on `pool` and sends it to the pool's queue."""
        job_id = job_id_for(len(self.ids) + 1)
        self.ids[label] = task_id_for(job_id, 1)
        running_job(self.cloud.settings, job_id, pool=pool)
        self.sent[label] = pool_task(job_id, self.clock.now, pool=pool, priority=priority, vram_mb=vram_mb,
                                     avoid_gpus=avoid, compute=compute)
        return self.redeliver(label)

    def arrive_together(self, *labels: str) -> dict[str, str]:
        """Attempts of new jobs in one poller batch (local pool, normal priority)."""
        for label in labels:
            job_id = job_id_for(len(self.ids) + 1)
            self.ids[label] = task_id_for(job_id, 1)
            running_job(self.cloud.settings, job_id)
            self.sent[label] = pool_task(job_id, self.clock.now)
        outcomes = self.dispatcher.enqueue_batch([self.sent[label] for label in labels])
        return {self.label(task_id): outcome for task_id, outcome in outcomes.items()}

    def redeliver(self, label: str) -> dict[str, str]:
        """SQS delivers the pool queue's message (again)."""
        outcomes = self.dispatcher.enqueue(self.sent[label])
        return {self.label(task_id): outcome for task_id, outcome in outcomes.items()}

    def finish(self, label: str) -> None:
        """The agent reports success (the callback route, with `freed` pumping the pool as in production)."""
        task = self.task(label)
        assert task.gpu_id is not None, f"{label} is not on a GPU"
        self.reports.result(task.task_id, TaskResult(gpu_id=task.gpu_id, outcome="succeeded", duration_ms=1),
                            task_secret(task.task_id))

    def beat(self, label: str) -> bool:
        task = self.task(label)
        return self.reports.heartbeat(task.task_id, TaskHeartbeat(gpu_id=task.gpu_id or "none"),
                                      task_secret(task.task_id)).current

    def deliver(self) -> list[tuple[str, str]]:
        """Deliver every timer due by now; (label, outcome) of each, in order."""
        delivered: list[tuple[str, str]] = []
        for _ in range(10):  # a delivery may set a timer that is due at once
            due = self.timers.take_due(self.clock.now)
            if not due:
                return delivered
            delivered += [(self.label(t.task_id), self.dispatcher.on_timer(t)) for t in due]
        raise AssertionError(f"timers keep coming due at once: {delivered}")

    # ---- what is

    def task(self, label: str) -> Task:
        task = self.fleet.task(self.ids[label])
        assert task is not None
        return task

    def label(self, task_id: str) -> str:
        return next(label for label, known in self.ids.items() if known == task_id)

    def started(self) -> list[str]:
        """Labels of the tasks pushed to an agent, in push order."""
        return [self.label(task_id) for task_id in self.agents.task_ids()]

    def waiting(self, pool: Pool = Pool.LOCAL) -> list[str]:
        return [self.label(e.task_id) for e in self.fleet.waiting_room.front(pool)]

    def on_gpu(self, gpu_id: str) -> list[str]:
        """Labels of the tasks assigned to or running on the GPU."""
        pool = self.gpus[gpu_id][0]
        return sorted(self.label(t.task_id) for t in self.fleet.open_tasks(pool)
                      if t.gpu_id == gpu_id and t.state in (TaskState.ASSIGNED, TaskState.RUNNING))

    def free(self, gpu_id: str) -> tuple[int, int]:
        gpu = self.fleet.get(gpu_id)
        assert gpu is not None
        return gpu.vram_free_mb, gpu.running

    def failures(self) -> list[tuple[str, str, str]]:
        """(label, error, cause) of every SendTaskFailure, in order."""
        by_token = {token_for(self.task(label).job_id): label for label in self.ids}
        return [(by_token[c["taskToken"]], c["error"], c["cause"]) for name, c in self.sfn.calls if name == "failure"]


def make_room(stack: Cloud, heartbeat_seconds: int | None = None, attempt_timeout_seconds: int | None = None) -> Room:
    cloud = emptied(stack)
    s = cloud.settings
    clock, agents, sfn, timers = Clock(NOW), FakeAgents(), RecordingStepFunctions(), FakeTimers()
    fleet = fleet_for(s)
    dispatcher = Dispatcher(
        fleet=fleet, timers=timers, s3=aws.client("s3"), sfn=sfn, http=agents.client(), bucket=s.images_bucket,
        limits=Limits(heartbeat_seconds=heartbeat_seconds or s.heartbeat_seconds,
                      attempt_timeout_seconds=attempt_timeout_seconds or s.attempt_timeout_seconds,
                      agent_stale_seconds=s.agent_stale_seconds),
        control_key=lambda: CONTROL_KEY, clock=clock,
    )
    reports = TaskReports(fleet, sfn, JobStore(aws.table(s.jobs_table)), freed=lambda task: dispatcher.pump(task.pool),
                          clock=clock)
    return Room(cloud, fleet, dispatcher, reports, agents, sfn, timers, clock)


@pytest.fixture
def room(shared_stack: Cloud) -> Room:
    return make_room(shared_stack)


@pytest.fixture
def heartbeat_s(shared_stack: Cloud) -> int:
    return shared_stack.settings.heartbeat_seconds


# ---- ordering: priority with aging


def start_order(room: Room, arrivals: list[tuple[str, Priority, float]]) -> list[str]:
    """Every arrival waits (no GPU yet); then one GPU with one slot works through the room, each
    result pulling in the next. The cloud pool, whose tasks wait until their deadline: none expires."""
    for label, priority, at in sorted(arrivals, key=lambda a: a[2]):
        room.clock.now = NOW + at
        assert room.arrive(label, priority, Pool.CLOUD) == {}
    room.gpu("cloud-0", slots=1, pool=Pool.CLOUD)
    room.dispatcher.pump(Pool.CLOUD)
    for _ in arrivals:
        room.finish(room.started()[-1])
    return room.started()


H, N, L = HEAD_START[HIGH], HEAD_START[NORMAL], HEAD_START[LOW]

ORDERING = {
    # under contention, the class decides
    "high-before-normal-before-low": ([("low", LOW, 0), ("normal", NORMAL, 1), ("high", HIGH, 2)],
                                      ["high", "normal", "low"]),
    "high-before-low-that-came-just-before": ([("low", LOW, 0), ("high", HIGH, 1)], ["high", "low"]),
    # within a class, first come first served
    "fcfs-high": ([("h1", HIGH, 0), ("h2", HIGH, 1), ("h3", HIGH, 2)], ["h1", "h2", "h3"]),
    "fcfs-normal": ([("n1", NORMAL, 0), ("n2", NORMAL, 0.5), ("n3", NORMAL, 30)], ["n1", "n2", "n3"]),
    "fcfs-low": ([("l1", LOW, 0), ("l2", LOW, 1), ("l3", LOW, 2)], ["l1", "l2", "l3"]),
    "fcfs-within-each-class": ([("l1", LOW, 0), ("h1", HIGH, 1), ("l2", LOW, 2), ("h2", HIGH, 3)],
                               ["h1", "h2", "l1", "l2"]),
    # aging: a head start is worth so many seconds of waiting, no more
    "high-within-its-head-start-over-normal": ([("normal", NORMAL, 0), ("high", HIGH, H - N - 1)],
                                               ["high", "normal"]),
    "normal-waited-longer-than-the-head-start-gap": ([("normal", NORMAL, 0), ("high", HIGH, H - N + 1)],
                                                     ["normal", "high"]),
    "high-within-its-head-start-over-low": ([("low", LOW, 0), ("high", HIGH, H - L - 1)], ["high", "low"]),
    "low-waited-longer-than-the-high-head-start": ([("low", LOW, 0), ("high", HIGH, H - L + 1)], ["low", "high"]),
    "low-waited-longer-than-the-normal-head-start": ([("low", LOW, 0), ("normal", NORMAL, N - L + 1)],
                                                     ["low", "normal"]),
    "an-aged-low-outranks-every-newcomer": (
        [("low", LOW, 0), ("normal", NORMAL, H - L + 1), ("high", HIGH, H - L + 1), ("high2", HIGH, H - L + 2)],
        ["low", "high", "high2", "normal"]),
}


@pytest.mark.parametrize(("arrivals", "expected"), ORDERING.values(), ids=ORDERING.keys())
def test_the_room_starts_tasks_by_class_with_aging_first_come_first_served_within_a_class(
    room: Room, arrivals: list[tuple[str, Priority, float]], expected: list[str]
) -> None:
    assert start_order(room, arrivals) == expected
    assert room.waiting(Pool.CLOUD) == []
    assert room.sfn.failures() == []


# ---- pumping by capacity


def test_a_release_starts_the_next_waiting_task_at_once(room: Room) -> None:
    room.gpu("local-0", slots=1)
    assert room.arrive("a") == {"a": "pushed"}
    assert room.arrive("b") == {}, "the only slot is taken"
    assert room.waiting() == ["b"]
    room.advance(2)
    room.finish("a")  # the callback route; nobody polls, no timer fires
    assert room.started() == ["a", "b"]
    assert (room.waiting(), room.task("b").state, room.task("b").running_at) == ([], TaskState.RUNNING, NOW + 2)
    assert room.free("local-0") == (8000 - 2500, 1)


PLACEMENTS = {
    "too-big-for-the-free-gpu-does-not-block-a-small-one": (
        [("local-0", 6000, 2)], [("big", 8000), ("small", 2000)], {"big": None, "small": "local-0"}),
    "too-big-for-what-is-left-holds-its-gpu-for-itself": (
        [("local-0", 6000, 3)], [("filler", 4000), ("mid", 3000), ("small", 2000)],
        {"filler": "local-0", "mid": None, "small": None}),
    "a-small-one-goes-around-the-gpu-held-for-a-bigger-one": (
        [("local-0", 6000, 3), ("local-1", 3000, 2)], [("filler", 4000), ("mid", 5000), ("small", 2000)],
        {"filler": "local-0", "mid": None, "small": "local-1"}),
    "best-fit-keeps-the-big-gpu-for-the-big-image": (
        [("local-big", 16000, 1), ("local-small", 4000, 1)], [("small", 3000), ("big", 10000)],
        {"small": "local-small", "big": "local-big"}),
    "small-tasks-fill-the-small-gpu-first": (
        [("local-big", 16000, 2), ("local-small", 4000, 2)], [("s1", 2000), ("s2", 2000), ("s3", 2000)],
        {"s1": "local-small", "s2": "local-small", "s3": "local-big"}),
}


@pytest.mark.parametrize(("gpus", "arrivals", "placed"), PLACEMENTS.values(), ids=PLACEMENTS.keys())
def test_tasks_are_packed_by_free_vram_and_one_that_fits_nowhere_now_holds_only_the_gpu_it_waits_for(
    room: Room, gpus: list[tuple[str, int, int]], arrivals: list[tuple[str, int]], placed: dict[str, str | None]
) -> None:
    for gpu_id, vram_mb, slots in gpus:
        room.gpu(gpu_id, vram_mb, slots)
    for label, vram_mb in arrivals:
        room.arrive(label, vram_mb=vram_mb)
        room.advance(1)
    assert {label: room.task(label).gpu_id for label in placed} == placed
    assert room.waiting() == [label for label, gpu_id in placed.items() if gpu_id is None]
    for gpu_id, vram_mb, _ in gpus:
        used = sum(v for label, v in arrivals if placed[label] == gpu_id)
        assert room.free(gpu_id) == (vram_mb - used, len(room.on_gpu(gpu_id)))


def test_a_task_waits_for_compute_on_a_gpu_with_the_vram_and_a_slot_free(room: Room) -> None:
    room.gpu("local-0", vram_mb=8000, slots=2)
    room.arrive("a", compute=60)
    room.arrive("b", compute=60)
    assert (room.started(), room.waiting(), room.free("local-0")) == (["a"], ["b"], (8000 - 2500, 1))
    room.finish("a")
    assert (room.started(), room.waiting()) == (["a", "b"], [])
    assert room.fleet.get("local-0").compute_free == 40


def test_a_big_task_at_the_head_is_not_overtaken_by_small_ones_for_the_room_it_waits_for(room: Room) -> None:
    room.gpu("local-0", vram_mb=8000, slots=4)
    room.arrive("s1", vram_mb=3000)
    room.arrive("s2", vram_mb=3000)
    room.advance(1)
    room.arrive("big", vram_mb=6000)  # 2000 MB free: it waits, and holds local-0
    room.advance(1)
    room.arrive("s3", vram_mb=1000)  # would fit in what is free, but behind the big one
    assert (room.started(), room.waiting()) == (["s1", "s2"], ["big", "s3"])
    room.finish("s1")
    assert room.waiting() == ["big", "s3"], "5000 MB free: not yet the big one's, and nobody else's"
    room.finish("s2")
    assert (room.started(), room.waiting()) == (["s1", "s2", "big", "s3"], [])
    assert room.free("local-0") == (1000, 2)


def test_a_full_front_of_tasks_that_fit_nowhere_does_not_block_a_small_one_behind_it(room: Room) -> None:
    for n in range(30):  # more than a page of the room
        room.arrive(f"big-{n}", vram_mb=20_000)  # no GPU yet; none of the pool's GPUs will ever fit these
        room.advance(0.01)
    room.arrive("small", vram_mb=2000)
    room.gpu("local-0", vram_mb=8000)
    room.dispatcher.pump(Pool.LOCAL)
    assert room.started() == ["small"]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_an_agent_never_gets_more_tasks_than_its_slots(room: Room, slots: int) -> None:
    room.gpu("local-0", vram_mb=80_000, slots=slots)  # VRAM for all of them: only the slots limit
    labels = [f"t{n}" for n in range(slots + 3)]
    for n, label in enumerate(labels, start=1):
        room.arrive(label, vram_mb=1000)
        assert len(room.on_gpu("local-0")) == min(n, slots)
        room.advance(1)
    while room.started()[-1] != labels[-1] or room.on_gpu("local-0"):
        room.finish(room.on_gpu("local-0")[0])
        assert len(room.on_gpu("local-0")) <= slots
        assert room.free("local-0")[1] == len(room.on_gpu("local-0")) <= slots
    assert room.started() == labels, "and first come, first served"
    assert room.free("local-0") == (80_000, 0)


# ---- the wait for a GPU is bounded


WAITS = [(Pool.LOCAL, p, SPILL_AFTER[p]) for p in Priority] + [(Pool.CLOUD, p, DEADLINE[p]) for p in Priority]


@pytest.mark.parametrize(("pool", "priority", "wait_s"), WAITS,
                         ids=[f"{pool.value}-{p.value}" for pool, p, _ in WAITS])
def test_a_task_past_its_wait_bound_leaves_the_room_with_wait_expired(
    room: Room, pool: Pool, priority: Priority, wait_s: float
) -> None:
    if pool is Pool.LOCAL:
        room.gpu("cloud-0", pool=Pool.CLOUD)  # the next pool could start it: past the bound it spills
    assert room.arrive("a", priority, pool) == {}, "no GPU in the pool"
    (timer,) = room.timers.of(room.ids["a"])
    assert (timer.kind, timer.due_at) == (TimerKind.WAIT_EXPIRY, NOW + wait_s)
    deliveries = []
    while room.clock.now < NOW + wait_s:  # SQS delivers a long timer early, every 15 minutes at most
        room.advance(min(NOW + wait_s, room.clock.now + MAX_DELAY_SECONDS) - room.clock.now)
        deliveries += room.deliver()
    # Its timer expires it; or, in this world where agents report only as time jumps, cloud-0's beat after a
    # long silence brings it back (probation), and the cloud's pump takes the task past its bound first.
    assert deliveries[-1] in (("a", "WaitExpired"), ("a", "over"))
    assert {outcome for _, outcome in deliveries[:-1]} <= {"not_due"}
    ((label, error, cause),) = room.failures()
    assert (label, error) == ("a", "Spillway.WaitExpired")
    assert pool.value in cause and f"{wait_s:.0f} s" in cause, cause
    assert room.waiting(pool) == []
    task = room.task("a")
    assert (task.state, task.outcome, task.error_type) == (TaskState.DONE, "failed", "WaitExpired")
    assert room.fleet.open_tasks(pool) == []


def mine(delivered: list[tuple[str, str]], label: str = "a") -> list[str]:
    return [outcome for of, outcome in delivered if of == label]


def test_past_its_spill_bound_a_task_waits_on_until_the_next_pool_has_room_and_pulls_it(room: Room) -> None:
    """Spilling to a pool that is just as full only adds an attempt: the task waits on, without polling,
    and the cloud pulls it as soon as a slot frees there."""
    room.gpu("cloud-0", pool=Pool.CLOUD, slots=1)
    room.arrive("cloud-job", HIGH, Pool.CLOUD)  # takes the only cloud slot
    room.arrive("a", HIGH)  # no office GPU at all
    room.advance(SPILL_AFTER[HIGH])
    assert room.beat("cloud-job")
    assert mine(room.deliver()) == ["waiting"], "the cloud could not start it either"
    (timer,) = [t for t in room.timers.of(room.ids["a"])]
    assert timer.due_at == NOW + DEADLINE[HIGH], "no polling: its next timer is its deadline"
    assert room.failures() == []
    room.finish("cloud-job")  # the cloud's slot frees; its room is empty: it pulls "a"
    ((label, error, cause),) = room.failures()
    assert (label, error) == ("a", "Spillway.WaitExpired") and "local" in cause


def test_the_next_pool_pulls_only_what_waits_past_its_bound_front_first_as_many_as_fit(
    room: Room, heartbeat_s: int
) -> None:
    room.gpu("cloud-0", pool=Pool.CLOUD, slots=2)
    room.arrive("cloud-1", HIGH, Pool.CLOUD)
    room.arrive("cloud-2", HIGH, Pool.CLOUD)  # the cloud is full
    room.arrive("old-normal")
    room.arrive("high", HIGH)
    while room.clock.now < NOW + SPILL_AFTER[Priority.NORMAL]:  # the cloud tasks run on, beating
        room.advance(min(heartbeat_s - 1, NOW + SPILL_AFTER[Priority.NORMAL] - room.clock.now))
        assert room.beat("cloud-1") and room.beat("cloud-2")
        room.deliver()
    room.arrive("fresh")  # within its bound
    room.finish("cloud-1")  # one cloud slot frees: one task moves, the front one past its bound
    assert [label for label, _, _ in room.failures()] == ["high"]
    room.finish("cloud-2")
    assert [label for label, _, _ in room.failures()] == ["high", "old-normal"]
    assert room.waiting() == ["fresh"]


def test_a_task_with_nowhere_to_go_fails_at_its_deadline_with_a_reason(room: Room) -> None:
    room.gpu("cloud-0", pool=Pool.CLOUD, slots=1)
    room.arrive("cloud-job", LOW, Pool.CLOUD)  # holds the only cloud slot throughout
    room.arrive("a", HIGH)
    while room.clock.now < NOW + DEADLINE[HIGH]:
        room.advance(min(MAX_DELAY_SECONDS, NOW + DEADLINE[HIGH] - room.clock.now))
        assert room.beat("cloud-job")  # the cloud job keeps running, beating
        outcomes = {outcome for label, outcome in room.deliver() if label == "a"}
        assert outcomes <= {"waiting", "WaitExpired"}
    ((label, error, cause),) = room.failures()
    assert (label, error) == ("a", "Spillway.WaitExpired") and "its deadline" in cause, cause


def test_a_task_started_before_its_wait_timer_fires_is_left_alone(room: Room, heartbeat_s: int) -> None:
    room.gpu("local-0", slots=1)
    room.arrive("first")
    room.arrive("second")  # waits for the only slot
    wait_until = room.task("second").wait_until
    room.advance(1)
    room.finish("first")  # "second" starts
    while room.clock.now < wait_until:  # its agent beats, a little more often than the liveness window
        room.advance(min(heartbeat_s - 1, wait_until - room.clock.now))
        assert room.beat("second") is True
        delivered = room.deliver()
        assert {outcome for label, outcome in delivered if label == "second"} <= {"alive", "started"}, delivered
    assert room.clock.now == wait_until
    assert Timer(kind=TimerKind.WAIT_EXPIRY, task_id=room.ids["second"], due_at=wait_until) in [
        timer for timer, _ in room.timers.log], "it was set when second had to wait"
    assert TimerKind.WAIT_EXPIRY not in {t.kind for t in room.timers.of(room.ids["second"])}, "and was delivered"
    assert room.failures() == []
    assert room.task("second").state is TaskState.RUNNING
    assert room.fleet.waiting_room.depth(Pool.LOCAL) == 0


def test_a_task_whose_first_delivery_died_before_its_timer_is_still_held_to_its_wait_bound(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    room.gpu("cloud-0", pool=Pool.CLOUD)  # past its bound it has somewhere to go
    def throttled(*args: object, **kwargs: object) -> list:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "Query")

    with monkeypatch.context() as patch:
        patch.setattr(room.fleet, "available", throttled)
        with pytest.raises(ClientError):
            room.arrive("a", HIGH)  # in the room, then the pump died: the poller's message comes back
    assert room.redeliver("a") == {}, "no GPU: it waits"
    assert room.task("a").state is TaskState.WAITING
    room.advance(SPILL_AFTER[HIGH])
    assert room.deliver() == [("a", "WaitExpired")]
    assert [error for _, error, _ in room.failures()] == ["Spillway.WaitExpired"]


def test_a_task_handed_back_by_a_refusing_agent_is_still_held_to_its_wait_bound(shared_stack: Cloud) -> None:
    room = make_room(shared_stack, heartbeat_seconds=60)  # the template's default, past a high task's spill bound
    room.gpu("cloud-0", pool=Pool.CLOUD)  # past its bound it has somewhere to go
    room.gpu("local-0")
    room.agents.answer = 503  # draining
    assert room.arrive("a", HIGH) == {"a": "refused"}
    assert room.waiting() == ["a"]
    room.advance(SPILL_AFTER[HIGH])
    assert room.deliver() == [("a", "WaitExpired")]


def test_a_timer_delivered_early_is_set_again_for_the_rest(room: Room) -> None:
    room.arrive("a", NORMAL, Pool.CLOUD)
    (timer,) = room.timers.of(room.ids["a"])
    room.clock.now = timer.due_at - 2
    assert room.dispatcher.on_timer(timer) == "not_due"
    assert room.timers.log[-1] == (timer, timer.due_at - 2)
    assert room.timers.of(room.ids["a"]) == [timer, timer]  # the original (not yet taken) and the new one
    assert room.task("a").state is TaskState.WAITING
    assert room.failures() == []


# ---- liveness: a task on a GPU beats, or its GPU went silent


def test_a_silent_task_fails_as_gpu_unreachable_frees_its_gpu_and_the_next_task_starts(
    room: Room, heartbeat_s: int
) -> None:
    room.gpu("cloud-0", slots=1, pool=Pool.CLOUD)
    assert room.arrive("silent", NORMAL, Pool.CLOUD) == {"silent": "pushed"}
    assert room.arrive("next", NORMAL, Pool.CLOUD) == {}, "the only slot is taken"
    room.advance(heartbeat_s - 1)
    assert room.deliver() == [], "not yet"
    room.advance(1)
    assert room.deliver() == [("silent", "GpuUnreachable")]
    ((label, error, cause),) = room.failures()
    assert (label, error) == ("silent", "Spillway.GpuUnreachable")
    assert f"cloud-0 went silent: no heartbeat for {heartbeat_s} s" in cause, cause
    task = room.task("silent")
    assert (task.state, task.outcome, task.error_type) == (TaskState.DONE, "failed", "GpuUnreachable")
    assert room.started() == ["silent", "next"], "its slot went to the next waiting task at once"
    assert room.task("next").state is TaskState.RUNNING
    assert room.free("cloud-0") == (8000 - 2500, 1)


@pytest.mark.parametrize("windows", [1, 4])
def test_a_task_that_keeps_beating_is_left_alone_until_it_stops(room: Room, heartbeat_s: int, windows: int) -> None:
    room.gpu("cloud-0", pool=Pool.CLOUD)
    room.arrive("a", NORMAL, Pool.CLOUD)
    for _ in range(windows * heartbeat_s):  # a beat every second, for `windows` liveness windows
        room.advance(1)
        assert room.beat("a") is True
        assert {outcome for _, outcome in room.deliver()} <= {"alive"}
    assert room.task("a").state is TaskState.RUNNING and room.failures() == []
    room.advance(heartbeat_s - 1)  # then it stops beating
    assert {outcome for _, outcome in room.deliver()} <= {"alive"}
    room.advance(1)
    assert ("a", "GpuUnreachable") in room.deliver()
    assert f"no heartbeat for {heartbeat_s} s" in room.failures()[0][2]


def test_an_assigned_task_whose_push_was_lost_is_pushed_again_by_its_timer(room: Room, heartbeat_s: int) -> None:
    room.gpu("cloud-0", pool=Pool.CLOUD)
    room.agents.answer = RuntimeError("the poller's invocation died between lease and push")
    with pytest.raises(RuntimeError):
        room.arrive("a", NORMAL, Pool.CLOUD)
    room.agents.answer = 202
    assert (room.task("a").state, room.started()) == (TaskState.ASSIGNED, [])
    room.advance(heartbeat_s - 1)
    assert room.deliver() == []
    room.advance(1)
    assert room.deliver() == [("a", "pushed")]
    assert room.started() == ["a"]
    assert room.task("a").state is TaskState.RUNNING
    assert room.free("cloud-0") == (8000 - 2500, 1), "the same lease, not a second one"


def test_a_task_pushed_again_by_its_timer_is_still_held_to_its_liveness_clock(room: Room, heartbeat_s: int) -> None:
    room.gpu("cloud-0", pool=Pool.CLOUD)
    room.agents.answer = RuntimeError("the poller's invocation died between lease and push")
    with pytest.raises(RuntimeError):
        room.arrive("a", NORMAL, Pool.CLOUD)  # the cloud pool: its wait timer is an hour away
    room.agents.answer = 202
    room.advance(heartbeat_s)
    assert dict(room.deliver())["a"] == "pushed"
    room.advance(heartbeat_s)  # the agent never beats
    assert ("a", "GpuUnreachable") in room.deliver()


@pytest.mark.parametrize("answer", [500, httpx.ConnectError("tunnel down")], ids=["broken", "unreachable"])
def test_a_slot_freed_by_a_failed_push_again_starts_the_next_waiting_task(
    room: Room, heartbeat_s: int, answer: int | Exception
) -> None:
    room.gpu("cloud-0", pool=Pool.CLOUD, slots=1)
    room.agents.answer = RuntimeError("the poller's invocation died between lease and push")
    with pytest.raises(RuntimeError):
        room.arrive("a", NORMAL, Pool.CLOUD)
    room.agents.answer = 202
    assert room.arrive("next", NORMAL, Pool.CLOUD) == {}, "the only slot is a's"
    room.agents.script = [answer]  # the push again fails; the agent takes the next one
    room.advance(heartbeat_s)
    assert room.deliver() == [("a", "GpuUnreachable")]
    # A GPU a push could not reach (or that answered a 5xx) is suspect, heartbeats or not: no new work yet.
    assert "next" not in room.started() and room.waiting(Pool.CLOUD) == ["next"]
    room.advance(1)  # its agent's next beat brings a probe, which reaches it: healthy, its room pumped
    assert room.started()[-1] == "next"
    assert room.task("next").state is TaskState.RUNNING


def test_a_task_never_goes_to_a_gpu_that_failed_its_job(room: Room) -> None:
    room.gpu("local-0", vram_mb=6000)  # the best fit ...
    room.gpu("local-1", vram_mb=12000)
    room.arrive("again", avoid=("local-0",))  # ... but it failed this job before
    assert room.on_gpu("local-1") == ["again"] and room.on_gpu("local-0") == []
    room.arrive("only-there", avoid=("local-0", "local-1"))
    assert room.waiting() == ["only-there"], "no GPU it may use: it waits (its bound spills it on)"


def test_a_gpu_a_push_could_not_reach_gets_no_work_until_a_probe_reaches_it(room: Room) -> None:
    room.gpu("local-0", vram_mb=6000)
    room.gpu("local-1", vram_mb=12000)
    room.agents.script = [httpx.ConnectError("tunnel down")]
    room.arrive("a")  # best fit: local-0, whose link is cut
    assert room.failures()[0][:2] == ("a", "Spillway.GpuUnreachable")
    room.arrive("b")
    room.arrive("c")
    assert room.on_gpu("local-1") == ["b"] and room.waiting() == ["c"], "local-0 is suspect, heartbeats or not"
    room.dispatcher.sweep()
    assert room.waiting() == ["c"], "time alone does not bring it back"
    room.advance(1)
    assert room.on_gpu("local-0") == ["c"], "its agent's beat brought a probe, which reached it"


def test_a_task_routing_lets_spill_to_faas_leaves_a_room_with_no_gpu_for_it_at_its_bound(room: Room) -> None:
    room.gpu("cloud-0", pool=Pool.CLOUD)
    room.agents.answers["cloud-0"] = httpx.ConnectError("cut")
    room.agents.unreachable = {"cloud-0"}  # its probes fail too
    room.arrive("first", HIGH, Pool.CLOUD)  # fails: cloud-0 is suspect now, the only cloud GPU
    job_id = job_id_for(len(room.ids) + 1)
    room.ids["eligible"] = task_id_for(job_id, 1)
    running_job(room.cloud.settings, job_id, pool=Pool.CLOUD)
    room.sent["eligible"] = pool_task(job_id, room.clock.now, pool=Pool.CLOUD, priority=HIGH).model_copy(
        update={"spill_to": Pool.FAAS})
    room.redeliver("eligible")
    assert room.waiting(Pool.CLOUD) == ["eligible"]
    room.advance(SPILL_AFTER[HIGH])
    assert ("eligible", "WaitExpired") in room.deliver(), "past its bound it goes to FaaS, not to its deadline"


def test_a_gpu_whose_push_failed_gets_no_second_task_from_the_same_pump(room: Room) -> None:
    room.gpu("local-0", vram_mb=12000, slots=2)  # room for both: the pump assigns both at once
    room.agents.answers["local-0"] = httpx.ConnectError("tunnel down")
    outcomes = room.arrive_together("a", "b")
    assert sorted(outcomes.values()) == ["GpuUnreachable", "refused"], outcomes
    assert len(room.failures()) == 1, "one failed push, not one per slot"
    assert room.waiting() == [label for label, outcome in outcomes.items() if outcome == "refused"]


def test_a_suspect_gpu_is_probed_on_its_beats_and_takes_work_only_once_a_probe_reaches_it(room: Room) -> None:
    room.gpu("local-0", vram_mb=6000)
    room.gpu("local-1", vram_mb=12000)
    room.agents.script = [httpx.ConnectError("tunnel down")]
    room.arrive("a")  # best fit: local-0, whose link is cut; its agent still beats
    room.agents.unreachable = {"local-0"}
    room.advance(room.cloud.settings.suspect_seconds)  # its agent beats: each beat probes it, in vain
    assert room.fleet.get("local-0").health.state is GpuHealth.SUSPECT, "still cut: it stays suspect"
    room.arrive("b")
    room.arrive("c")
    assert room.on_gpu("local-1") == ["b"] and room.on_gpu("local-0") == [] and room.waiting() == ["c"]
    room.agents.unreachable = set()  # the link is back
    assert room.report("local-0"), "reachable: no longer suspect, its pool pumped"
    assert room.on_gpu("local-0") == ["c"]
    room.report("local-1")
    assert set(room.agents.probed) == {"local-0"}, "a GPU that is not suspect is not probed"


def test_a_gpu_whose_agent_is_not_ready_gets_no_work_until_a_probe_finds_it_ready(room: Room) -> None:
    """Its agent runs and answers, but its model server is down: the agent's beat says so, it is suspect at once,
    and a probe answering 503 (reachable, not ready) keeps it out; ready again, it takes work."""
    room.gpu("local-0")  # the best fit
    room.gpu("local-1", vram_mb=12000)
    room.agents.not_ready.add("local-0")
    room.dispatcher.on_heartbeat(beat("local-0", vram_mb=8000, slots=1, not_ready="the model server answered 503"))
    gpu = room.fleet.get("local-0")
    assert gpu is not None and gpu.health.state is GpuHealth.SUSPECT, gpu.health
    assert gpu.health.reason == "its agent is not ready: the model server answered 503"
    assert room.agents.probed == ["local-0"], "probed at once: reachable, but not ready"
    room.arrive("a")
    assert room.on_gpu("local-1") == ["a"] and room.on_gpu("local-0") == [], "no work while it is not ready"
    room.agents.not_ready.clear()  # the model server is back
    assert room.report("local-0"), "ready: healthy, its pool pumped"
    assert room.fleet.get("local-0").health.state is GpuHealth.HEALTHY
    room.arrive("b")
    assert room.on_gpu("local-0") == ["b"]


def test_a_task_on_a_gpu_whose_agent_went_silent_fails_a_stale_window_after_its_last_report(
    shared_stack: Cloud,
) -> None:
    heartbeat_s = 60  # the template's default: a task's own liveness window
    room = make_room(shared_stack, heartbeat_seconds=heartbeat_s)
    room.gpu("local-0")
    room.arrive("a")
    room.beat("a")
    room.silenced.add("local-0")  # SIGKILL: neither the fleet nor the task heartbeats come any more
    stale = room.cloud.settings.agent_stale_seconds
    assert stale < heartbeat_s, "the point: sooner than the task's own liveness window"
    room.advance(stale - 1)
    assert room.deliver() in ([], [("a", "alive")])
    room.advance(2)
    assert room.deliver() == [("a", "GpuUnreachable")]
    assert "its agent has not reported" in room.failures()[0][2]
    assert room.free("local-0") == (8000, 0), "its VRAM and slot are back"


def test_a_task_leased_after_its_agents_last_report_fails_a_stale_window_after_that_report(
    shared_stack: Cloud,
) -> None:
    """Its agent's last beat, not the lease, starts the clock: a task leased a beat interval after it does not
    wait a stale window more (found by bench/faults.py: SIGKILL was detected 5 s late)."""
    room = make_room(shared_stack, heartbeat_seconds=60)
    room.gpu("local-0")  # its last report
    room.silenced.add("local-0")  # SIGKILL just after it
    room.clock.advance(4)  # a heartbeat interval later, a task is leased on it
    room.arrive("a")
    stale = room.cloud.settings.agent_stale_seconds
    room.advance(stale - 4)
    assert room.deliver() in ([], [("a", "alive")])
    room.advance(2)  # a stale window and 2 s after its last report
    assert room.deliver() == [("a", "GpuUnreachable")]


def test_leases_the_agent_does_not_report_end_after_a_stale_window(room: Room) -> None:
    room.gpu("local-0", vram_mb=8000, slots=2)
    room.arrive("a", compute=40)
    room.arrive("b", compute=30)
    assert room.on_gpu("local-0") == ["a", "b"]
    room.report("local-0", running=[room.ids["a"]])  # restarted? it does not report b
    assert room.failures() == [], "within a stale window: the report may predate the push"
    room.advance(room.cloud.settings.agent_stale_seconds + 1)
    assert room.report("local-0", running=[room.ids["a"]]), "a lease ended: its pool is pumped"
    ((label, error, cause),) = room.failures()
    assert (label, error) == ("b", "Spillway.GpuUnreachable") and "no longer has it" in cause
    assert room.free("local-0") == (8000 - 2500, 1), "b's VRAM and slot are back; a runs on"
    assert room.fleet.get("local-0").compute_free == 100 - 40, "and its compute"


# ---- the sweep: a safety net for lost timers


def silent_running(room: Room, heartbeat_s: int) -> None:  # and another task waits for its slot
    room.arrive("a")
    room.arrive("next")
    room.advance(heartbeat_s)


def beating(room: Room, heartbeat_s: int) -> None:
    room.arrive("a")
    room.advance(heartbeat_s - 1)
    room.beat("a")
    room.advance(1)


def lost_push(room: Room, heartbeat_s: int) -> None:
    room.agents.answer = RuntimeError("the poller's invocation died between lease and push")
    with pytest.raises(RuntimeError):
        room.arrive("a")
    room.agents.answer = 202
    room.advance(heartbeat_s)


def waiting_past_bound(room: Room, heartbeat_s: int) -> None:
    room.gpus.clear()
    room.fleet.heartbeat(beat("local-0", draining=True), now=room.clock.now)  # takes no work
    room.arrive("a", HIGH)
    room.advance(SPILL_AFTER[HIGH])
    room.gpu("cloud-0", pool=Pool.CLOUD)  # the next pool has room: past its bound it goes there


def waiting_within_bound(room: Room, heartbeat_s: int) -> None:
    room.gpus.clear()
    room.fleet.heartbeat(beat("local-0", draining=True), now=room.clock.now)
    room.arrive("a", LOW)
    room.advance(SPILL_AFTER[LOW] - 1)


SWEEPS = {
    "silent-running": (silent_running, {"GpuUnreachable": 1, "waiting": 1}, TaskState.DONE, ["a", "next"]),
    "beating-running": (beating, {"alive": 1}, TaskState.RUNNING, ["a"]),
    "assigned-push-lost": (lost_push, {"pushed": 1}, TaskState.RUNNING, ["a"]),
    "waiting-past-its-bound": (waiting_past_bound, {"WaitExpired": 1}, TaskState.DONE, []),
    "waiting-within-its-bound": (waiting_within_bound, {"waiting": 1}, TaskState.WAITING, []),
}


@pytest.mark.parametrize(("setup", "counts", "state", "started"), SWEEPS.values(), ids=SWEEPS.keys())
def test_the_sweep_holds_an_open_task_whose_timer_was_lost_to_its_clock(
    room: Room, heartbeat_s: int, setup, counts: dict[str, int], state: TaskState, started: list[str]
) -> None:
    room.gpu("local-0", slots=1)
    setup(room, heartbeat_s)
    room.timers.lose()
    assert room.dispatcher.sweep() == counts
    assert room.task("a").state is state
    assert room.started() == started
    expected_errors = [e for e in ("GpuUnreachable", "WaitExpired") if e in counts]
    assert [(label, error) for label, error, _ in room.failures()] == [
        ("a", f"Spillway.{e}") for e in expected_errors]


# ---- what the review found: lost notices, endless runs, returning GPUs, throttled transactions


def test_a_failure_notice_lost_on_the_way_is_sent_again_by_the_timer_and_the_sweep(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    room.gpu("cloud-0", pool=Pool.CLOUD)
    room.arrive("a", HIGH)  # no office GPU: past its bound it leaves the room
    room.advance(SPILL_AFTER[HIGH])
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "SendTaskFailure")
    with monkeypatch.context() as patch:
        patch.setattr(room.sfn, "send_task_failure", lambda **_: (_ for _ in ()).throw(throttled))
        with pytest.raises(ClientError):
            room.deliver()  # the timer's invocation fails: SQS will deliver the message again
    task = room.task("a")
    assert (task.state, task.open_pool) == (TaskState.DONE, "local"), "done, its execution not told yet"
    assert [t.task_id for t in room.fleet.open_tasks(Pool.LOCAL)] == [task.task_id], "the sweep still sees it"
    assert room.dispatcher.sweep() == {"told": 1}
    ((label, error, cause),) = room.failures()
    assert (label, error) == ("a", "Spillway.WaitExpired") and "local" in cause
    assert room.fleet.open_tasks(Pool.LOCAL) == [] and room.task("a").open_pool is None


def test_a_task_that_beats_but_never_ends_fails_at_the_attempt_timeout(shared_stack: Cloud, heartbeat_s: int) -> None:
    # Ten beats' worth instead of the template's 15 minutes: each beat is a round of DynamoDB calls.
    room = make_room(shared_stack, attempt_timeout_seconds=10 * heartbeat_s)
    room.gpu("local-0", slots=1)
    room.arrive("a")
    room.arrive("next")
    timeout_s = room.dispatcher._limits.attempt_timeout_seconds
    while room.clock.now < NOW + timeout_s:
        room.advance(min(heartbeat_s - 1, NOW + timeout_s - room.clock.now))
        assert room.beat("a")  # its agent is alive: only the model hangs
        room.deliver()
    ((label, error, cause),) = room.failures()
    assert (label, error) == ("a", "Spillway.ModelError") and "attempt timeout" in cause, cause
    assert room.on_gpu("local-0") == ["next"], "its slot went to the next task"


@pytest.mark.parametrize(("before", "after", "pulls", "health"), [
    (None, {}, True, GpuHealth.HEALTHY),
    ({}, {}, False, GpuHealth.HEALTHY),
    ({"draining": True}, {}, True, GpuHealth.PROBATION),  # its agent restarted after a drain: one canary first
    ({}, {"draining": True}, False, GpuHealth.DRAINING),
    ({"silent_for": 31}, {}, True, GpuHealth.PROBATION),
], ids=["new", "fresh-again", "no-longer-draining", "starts-draining", "back-from-silence"])
def test_a_gpu_that_can_take_work_again_says_so_on_its_heartbeat(
    room: Room, before: dict | None, after: dict, pulls: bool, health: GpuHealth
) -> None:
    if before is not None:
        room.fleet.heartbeat(beat("local-0", draining=before.get("draining", False)), now=NOW)
        room.clock.advance(before.get("silent_for", 1))
    assert room.dispatcher.on_heartbeat(beat("local-0", **after)) is pulls
    assert room.fleet.get("local-0").health.state is health


def test_a_throttled_transaction_is_an_error_not_a_refusal(room: Room, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a failed condition is a refusal: a throttled enqueue must fail its delivery (SQS retries it),
    not pass for "already there" and drop the attempt."""
    cancelled = ClientError({"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"},
                             "CancellationReasons": [{"Code": "ThrottlingError"}, {"Code": "None"}]},
                            "TransactWriteItems")
    monkeypatch.setattr(room.fleet._ddb, "transact_write_items", lambda **_: (_ for _ in ()).throw(cancelled))
    with pytest.raises(ClientError):
        room.arrive("a")


def test_a_task_whose_first_push_failed_is_over_not_held_to_a_wait_bound(room: Room) -> None:
    room.gpu("local-0")
    room.agents.answer = httpx.ConnectError("connection refused")
    assert room.arrive("a") == {"a": "GpuUnreachable"}
    assert TimerKind.WAIT_EXPIRY not in {t.kind for t in room.timers.of(room.ids["a"])}
    assert [(label, error) for label, error, _ in room.failures()] == [("a", "Spillway.GpuUnreachable")]
