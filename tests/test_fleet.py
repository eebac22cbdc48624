"""The fleet: VRAM and slot packing, no oversubscription, fencing by attempt number, exactly-once ends."""

from __future__ import annotations

import pytest

from spillway import aws, health
from spillway.dispatch import result_key_for
from spillway.fleet import ATTEMPT_MOVED_ON, ENTRY_GONE, GPU_TAKEN, Fleet, Refused, Task
from spillway.health import GpuHealth
from spillway.models import Pool, Priority, TaskState
from spillway.waiting_room import WaitingEntry

from conftest import Cloud
from helpers import beat, fleet_for, job_id_for, running_job, task_id_for

NOW = 1_000_000.0
STALE = 30  # agent_stale_seconds, as the tests pass it


def waiting_task(job: int, vram_mb: int = 3000, attempt: int = 1, arrived_at: float = NOW,
                 priority: Priority = Priority.NORMAL, pool: Pool = Pool.LOCAL, compute: int = 30) -> Task:
    """A task as the dispatcher writes it when its attempt enters the pool's waiting room."""
    job_id = job_id_for(job)
    task_id = task_id_for(job_id, attempt)
    return Task(
        task_id=task_id, job_id=job_id, attempt=attempt, pool=pool, service="remove_furniture",
        input_key="uploads/in.png", result_key=result_key_for(job_id, attempt), vram_mb=vram_mb,
        compute=compute, priority=priority, task_token=f"token-{job}",
        rank=WaitingEntry.rank_for(priority, arrived_at, task_id),
        arrived_at=arrived_at, wait_until=arrived_at + 60, deadline=arrived_at + 3600, open_pool=pool.value,
        expires_at=int(NOW) + 86_400,
    )


@pytest.fixture
def cloud(shared_cloud: Cloud) -> Cloud:
    """One stack for the module, emptied before each test (see conftest)."""
    return shared_cloud


@pytest.fixture
def fleet(cloud: Cloud) -> Fleet:
    fleet = fleet_for(cloud.settings)
    fleet.heartbeat(beat("small", vram_mb=4000), now=NOW)
    fleet.heartbeat(beat("big", vram_mb=16000), now=NOW)
    return fleet


def enqueued(cloud: Cloud, fleet: Fleet, job: int, vram_mb: int = 3000, attempt: int = 1,
             arrived_at: float = NOW, compute: int = 30) -> Task:
    """A task in the room, for a job whose state machine has opened that attempt."""
    task = waiting_task(job, vram_mb, attempt, arrived_at, compute=compute)
    running_job(cloud.settings, task.job_id, attempt)
    assert fleet.enqueue(task) is True
    return task


def gpu(fleet: Fleet, gpu_id: str) -> tuple[int, int]:
    """(free VRAM, running tasks) of a GPU, as stored."""
    stored = fleet.get(gpu_id)
    assert stored is not None
    return stored.vram_free_mb, stored.running


def compute_free(fleet: Fleet, gpu_id: str) -> int:
    stored = fleet.get(gpu_id)
    assert stored is not None
    return stored.compute_free


# ---- agents report in


def test_first_heartbeat_registers_a_gpu_with_all_its_vram_and_slots_free(fleet: Fleet) -> None:
    big = fleet.get("big")
    assert big is not None
    assert (big.pool, big.vram_total_mb, big.vram_free_mb, big.slots, big.running) == (Pool.LOCAL, 16000, 16000, 2, 0)
    assert (big.compute_total, big.compute_free) == (100, 100), "an agent that does not say: a reference GPU's"
    fleet.heartbeat(beat("h100", compute=250), now=NOW)
    h100 = fleet.get("h100")
    assert h100 is not None and (h100.compute_total, h100.compute_free) == (250, 250)


def test_a_later_heartbeat_keeps_what_is_leased(cloud: Cloud, fleet: Fleet) -> None:
    task = enqueued(cloud, fleet, 1)
    fleet.assign(fleet.get("big"), task.waiting_entry(), NOW)
    fleet.heartbeat(beat("big", vram_mb=16000, slots=3), now=NOW + 5)
    big = fleet.get("big")
    assert (big.vram_free_mb, big.running, big.slots, big.last_heartbeat) == (13000, 1, 3, NOW + 5)
    assert (big.compute_total, big.compute_free) == (100, 70)


@pytest.mark.parametrize(
    ("change", "now", "pool", "expected"),
    [
        (None, NOW, Pool.LOCAL, ["small", "big"]),  # best fit first: the least free VRAM
        (None, NOW + STALE, Pool.LOCAL, ["small", "big"]),
        (None, NOW + STALE + 1, Pool.LOCAL, []),  # stale agents get no work
        (None, NOW, Pool.CLOUD, []),
        (beat("big", vram_mb=16000, draining=True), NOW, Pool.LOCAL, ["small"]),
        (beat("small", vram_mb=4000, slots=1), NOW, Pool.LOCAL, ["small", "big"]),
    ],
    ids=["best-fit", "just-fresh", "stale", "other-pool", "draining", "one-slot"],
)
def test_available_gpus_are_fresh_not_draining_with_a_free_slot_best_fit_first(
    fleet: Fleet, change, now: float, pool: Pool, expected: list[str]
) -> None:
    if change is not None:
        fleet.heartbeat(change, now=NOW)
    assert [g.gpu_id for g in fleet.available(pool, now, STALE)] == expected


def test_a_suspect_gpu_is_unavailable_heartbeats_or_not_until_a_probe_reaches_it(fleet: Fleet) -> None:
    fleet.change_health("small", lambda g: health.push_failed(g.health, NOW, "link down"))
    assert fleet.get("small").health.state is GpuHealth.SUSPECT
    fleet.heartbeat(beat("small", vram_mb=4000), now=NOW + 5)  # a beat says nothing of the link
    assert [g.gpu_id for g in fleet.available(Pool.LOCAL, NOW + 5, STALE)] == ["big"]
    fleet.change_health("small", lambda g: health.probed(g.health, True, NOW + 6, fleet.health_policy))
    assert [g.gpu_id for g in fleet.available(Pool.LOCAL, NOW + 6, STALE)] == ["small", "big"]
    assert fleet.change_health("gone", lambda g: health.push_failed(g.health, NOW, "x")) is None, "never registered"


def test_a_health_write_that_lost_a_race_decides_again_on_what_the_other_wrote(fleet: Fleet) -> None:
    """Two writers read the same revision: the second's conditional write fails, it reads the first's
    transition and decides on that, so neither transition is lost."""
    calls = []

    def decide(gpu):
        calls.append(gpu.health.state)
        if len(calls) == 1:  # another writer gets in between this read and this write
            fleet.change_health("small", lambda g: health.push_failed(g.health, NOW, "link down"))
        return health.operator(gpu.health, health.OperatorAction.DRAIN, NOW + 1)

    fleet.change_health("small", decide)
    stored = fleet.get("small").health
    assert calls == [GpuHealth.HEALTHY, GpuHealth.SUSPECT]
    assert [(e.from_, e.to) for e in stored.events[1:]] == [
        (GpuHealth.HEALTHY, GpuHealth.SUSPECT), (GpuHealth.SUSPECT, GpuHealth.DRAINING)]
    assert stored.rev == 2


def test_a_draining_beat_drains_and_a_silent_agent_is_down_at_its_next_beat(fleet: Fleet) -> None:
    _, after = fleet.heartbeat(beat("big", vram_mb=16000, draining=True), now=NOW + 1)
    assert after.health.state is GpuHealth.DRAINING
    _, after = fleet.heartbeat(beat("small", vram_mb=4000), now=NOW + STALE + 10)
    assert (after.health.state, after.health.reason) == (GpuHealth.DOWN, "silent: no heartbeat for 40 s")
    assert after.last_heartbeat == NOW + STALE + 10


@pytest.mark.parametrize("state", [GpuHealth.SUSPECT, GpuHealth.QUARANTINED, GpuHealth.DRAINING, GpuHealth.DOWN])
def test_a_gpu_whose_health_refuses_work_takes_nothing_even_from_a_fresh_snapshot(
    cloud: Cloud, fleet: Fleet, state: GpuHealth
) -> None:
    big = fleet.get("big")  # read while healthy
    fleet.change_health("big", lambda g: health.move(g.health, state, "test", NOW))
    task = enqueued(cloud, fleet, 1)
    with pytest.raises(Refused) as refused:
        fleet.assign(big, task.waiting_entry(), NOW)
    assert refused.value.reason == GPU_TAKEN
    assert gpu(fleet, "big") == (16000, 0)


def test_a_gpu_on_probation_holds_one_task_at_a_time(cloud: Cloud, fleet: Fleet) -> None:
    fleet.change_health("big", lambda g: health.move(g.health, GpuHealth.PROBATION, "test", NOW))
    first, second = enqueued(cloud, fleet, 1), enqueued(cloud, fleet, 2)
    big = fleet.get("big")
    assert big.free_slots == 1
    canary = fleet.assign(big, first.waiting_entry(), NOW)
    assert fleet.available(Pool.LOCAL, NOW, STALE) == [fleet.get("small")]
    with pytest.raises(Refused):
        fleet.assign(big, second.waiting_entry(), NOW)  # a stale snapshot: the write checks it
    fleet.release(canary, "succeeded", now=NOW + 1)
    assert fleet.get("big").health.state is GpuHealth.HEALTHY, "its canary succeeded"


def test_model_errors_in_a_row_quarantine_a_gpu_and_a_success_resets_the_count(cloud: Cloud, fleet: Fleet) -> None:
    def run(job: int, outcome: str, error: str | None = None) -> None:
        task = fleet.assign(fleet.get("big"), enqueued(cloud, fleet, job).waiting_entry(), NOW)
        fleet.release(task, outcome, error, now=NOW + job)

    run(1, "failed", "ModelError")
    run(2, "failed", "ModelError")
    run(3, "succeeded")
    assert fleet.get("big").model_errors == 0
    run(4, "failed", "InputUnavailable")  # not the model's fault: counts neither way
    for job in (5, 6, 7):
        run(job, "failed", "ModelError")
    big = fleet.get("big")
    assert (big.health.state, big.health.until, big.model_errors) == (GpuHealth.QUARANTINED, NOW + 7 + 120, 0)
    assert big.health.events[-1].detect_s == 2.0, "from the first of the three ModelErrors"


def test_a_gpu_with_every_slot_taken_is_not_available(cloud: Cloud, fleet: Fleet) -> None:
    fleet.heartbeat(beat("small", vram_mb=4000, slots=1), now=NOW)
    task = enqueued(cloud, fleet, 1, vram_mb=100)
    fleet.assign(fleet.get("small"), task.waiting_entry(), NOW)
    assert [g.gpu_id for g in fleet.available(Pool.LOCAL, NOW, STALE)] == ["big"]


@pytest.mark.parametrize(
    ("service", "vram_mb", "compute", "fits"),
    [("remove_furniture", 4000, 100, True), ("remove_furniture", 4001, 10, False),
     ("remove_furniture", 100, 101, False), ("unknown_service", 100, 10, False)],
)
def test_a_gpu_fits_a_service_it_serves_within_its_free_vram_and_compute(fleet: Fleet, service: str, vram_mb: int,
                                                                        compute: int, fits: bool) -> None:
    assert fleet.get("small").fits(service, vram_mb, compute) is fits


# ---- entering the room, and leaving it for a GPU


def test_enqueue_writes_the_task_and_its_place_in_the_room(cloud: Cloud, fleet: Fleet) -> None:
    task = enqueued(cloud, fleet, 1)
    stored = fleet.task(task.task_id)
    assert stored is not None and stored.state is TaskState.WAITING
    assert list(fleet.waiting_room.front(Pool.LOCAL)) == [task.waiting_entry()]
    assert "task_token" not in aws.table(cloud.settings.waiting_room_table).scan()["Items"][0], \
        "tokens stay in the tasks table"


def test_a_duplicate_delivery_never_enters_twice_nor_leases_twice(cloud: Cloud, fleet: Fleet) -> None:
    task = enqueued(cloud, fleet, 1)
    assert fleet.enqueue(task) is False, "the same attempt again: a redelivery"
    assert fleet.waiting_room.depth(Pool.LOCAL) == 1
    fleet.assign(fleet.get("big"), task.waiting_entry(), NOW)
    with pytest.raises(Refused) as refused:
        fleet.assign(fleet.get("small"), task.waiting_entry(), NOW)
    assert refused.value.reason == ENTRY_GONE
    assert fleet.enqueue(task) is False, "nor back into the room once assigned"
    assert (gpu(fleet, "big"), gpu(fleet, "small")) == ((13000, 1), (4000, 0))
    assert fleet.waiting_room.depth(Pool.LOCAL) == 0


def test_assign_moves_the_task_out_of_the_room_onto_the_gpu_and_notes_it_on_the_job(
    cloud: Cloud, fleet: Fleet
) -> None:
    task = enqueued(cloud, fleet, 1)
    assigned = fleet.assign(fleet.get("big"), task.waiting_entry(), NOW + 2)
    assert (assigned.state, assigned.gpu_id, assigned.gpu_url, assigned.assigned_at) == (
        TaskState.ASSIGNED, "big", "https://big.agents.test:9000", NOW + 2)
    assert fleet.waiting_room.depth(Pool.LOCAL) == 0
    assert gpu(fleet, "big") == (13000, 1)
    attempt = cloud.job_item(task.job_id)["attempts"][0]
    assert (attempt["gpu_id"], attempt["task_id"]) == ("big", task.task_id)
    assert attempt["assigned_at"].startswith("1970-01-12T13:46:42")


@pytest.mark.parametrize(("slots", "vram_mb", "compute"), [(2, 3000, 30), (1, 100, 30), (3, 100, 60)],
                         ids=["vram", "slots", "compute"])
def test_a_gpu_is_never_oversubscribed(cloud: Cloud, fleet: Fleet, slots: int, vram_mb: int, compute: int) -> None:
    fleet.heartbeat(beat("small", vram_mb=4000, slots=slots), now=NOW)
    first, second = enqueued(cloud, fleet, 1, vram_mb, compute=compute), enqueued(cloud, fleet, 2, vram_mb,
                                                                                  compute=compute)
    small = fleet.get("small")
    fleet.assign(small, first.waiting_entry(), NOW)
    with pytest.raises(Refused) as refused:
        fleet.assign(small, second.waiting_entry(), NOW)  # `small` is a stale snapshot: no room any more
    assert refused.value.reason == GPU_TAKEN
    assert gpu(fleet, "small") == (4000 - vram_mb, 1) and compute_free(fleet, "small") == 100 - compute
    assert fleet.task(second.task_id).state is TaskState.WAITING, "a refused assignment writes nothing"
    assert list(fleet.waiting_room.front(Pool.LOCAL)) == [second.waiting_entry()]
    assert "gpu_id" not in cloud.job_item(second.job_id)["attempts"][0]


@pytest.mark.parametrize(("job_attempt", "status"), [(2, "RUNNING"), (1, "SUCCEEDED"), (1, "FAILED")])
def test_an_attempt_that_moved_on_is_never_assigned(cloud: Cloud, fleet: Fleet, job_attempt: int, status: str) -> None:
    task = waiting_task(1, attempt=1)
    assert fleet.enqueue(task)
    running_job(cloud.settings, task.job_id, attempt=job_attempt)
    aws.table(cloud.settings.jobs_table).update_item(
        Key={"job_id": task.job_id}, UpdateExpression="SET #s = :s", ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": status})
    with pytest.raises(Refused) as refused:
        fleet.assign(fleet.get("big"), task.waiting_entry(), NOW)
    assert refused.value.reason == ATTEMPT_MOVED_ON
    assert gpu(fleet, "big") == (16000, 0)
    assert fleet.task(task.task_id).state is TaskState.WAITING, "all or nothing: the dispatcher cleans it up"


# ---- a task on a GPU


def test_mark_running_starts_the_liveness_clock_once(cloud: Cloud, fleet: Fleet) -> None:
    task = enqueued(cloud, fleet, 1)
    assigned = fleet.assign(fleet.get("big"), task.waiting_entry(), NOW)
    assert fleet.mark_running(assigned, NOW + 1) is True
    assert fleet.mark_running(assigned, NOW + 2) is False, "running already"
    stored = fleet.task(task.task_id)
    assert (stored.state, stored.running_at, stored.beat_at) == (TaskState.RUNNING, NOW + 1, NOW + 1)
    assert cloud.job_item(task.job_id)["attempts"][0]["running_at"].startswith("1970-01-12T13:46:41")


def test_beats_count_only_from_the_gpu_that_has_the_task_and_only_while_it_is_open(
    cloud: Cloud, fleet: Fleet
) -> None:
    task = enqueued(cloud, fleet, 1)
    assert fleet.beat(task.task_id, "big", NOW) is False, "not on a GPU yet"
    assigned = fleet.assign(fleet.get("big"), task.waiting_entry(), NOW)
    fleet.mark_running(assigned, NOW)
    assert fleet.beat(task.task_id, "big", NOW + 3) is True
    assert fleet.beat(task.task_id, "small", NOW + 4) is False
    assert fleet.task(task.task_id).beat_at == NOW + 3
    fleet.release(assigned, "succeeded")
    assert fleet.beat(task.task_id, "big", NOW + 5) is False, "over: the agent should stop"


def test_release_gives_vram_compute_and_the_slot_back_exactly_once(cloud: Cloud, fleet: Fleet) -> None:
    task = enqueued(cloud, fleet, 1)
    assigned = fleet.assign(fleet.get("big"), task.waiting_entry(), NOW)
    assert compute_free(fleet, "big") == 70
    assert fleet.release(assigned, "succeeded") is True
    assert fleet.release(assigned, "failed", "ModelError") is False
    assert gpu(fleet, "big") == (16000, 0) and compute_free(fleet, "big") == 100
    stored = fleet.task(task.task_id)
    assert (stored.state, stored.outcome, stored.error_type, stored.open_pool) == (
        TaskState.DONE, "succeeded", None, None)
    assert fleet.open_tasks(Pool.LOCAL) == []


def test_give_back_puts_the_task_back_in_its_place_and_frees_the_gpu(cloud: Cloud, fleet: Fleet) -> None:
    first, second = enqueued(cloud, fleet, 1), enqueued(cloud, fleet, 2, arrived_at=NOW + 1)
    assigned = fleet.assign(fleet.get("big"), first.waiting_entry(), NOW)
    assert fleet.give_back(assigned) is True
    assert fleet.give_back(assigned) is False, "once"
    assert gpu(fleet, "big") == (16000, 0)
    back = fleet.task(first.task_id)
    assert (back.state, back.gpu_id, back.rank) == (TaskState.WAITING, None, first.rank)
    assert [e.task_id for e in fleet.waiting_room.front(Pool.LOCAL)] == [first.task_id, second.task_id]
    fleet.assign(fleet.get("small"), back.waiting_entry(), NOW + 1)
    assert (gpu(fleet, "big"), gpu(fleet, "small")) == ((16000, 0), (1000, 1)), "and can be assigned again"


def test_close_waiting_ends_a_task_that_never_got_a_gpu_once(cloud: Cloud, fleet: Fleet) -> None:
    task = enqueued(cloud, fleet, 1)
    closed = fleet.close_waiting(task.waiting_entry(), "failed", "WaitExpired")
    assert closed is not None
    assert (closed.state, closed.outcome, closed.error_type) == (TaskState.DONE, "failed", "WaitExpired")
    assert fleet.close_waiting(task.waiting_entry(), "failed", "WaitExpired") is None
    assert fleet.waiting_room.depth(Pool.LOCAL) == 0
    with pytest.raises(Refused):
        fleet.assign(fleet.get("big"), task.waiting_entry(), NOW)
    assert gpu(fleet, "big") == (16000, 0)


def test_close_waiting_leaves_an_assigned_task_alone(cloud: Cloud, fleet: Fleet) -> None:
    task = enqueued(cloud, fleet, 1)
    fleet.assign(fleet.get("big"), task.waiting_entry(), NOW)
    assert fleet.close_waiting(task.waiting_entry(), "failed", "WaitExpired") is None
    assert fleet.task(task.task_id).state is TaskState.ASSIGNED
    assert gpu(fleet, "big") == (13000, 1)


def test_open_tasks_are_every_task_of_the_pool_not_done(cloud: Cloud, fleet: Fleet) -> None:
    waiting, assigned, done = enqueued(cloud, fleet, 1), enqueued(cloud, fleet, 2), enqueued(cloud, fleet, 3)
    fleet.assign(fleet.get("big"), assigned.waiting_entry(), NOW)
    fleet.release(fleet.assign(fleet.get("big"), done.waiting_entry(), NOW), "succeeded")
    assert sorted(t.task_id for t in fleet.open_tasks(Pool.LOCAL)) == sorted([waiting.task_id, assigned.task_id])
    assert fleet.open_tasks(Pool.CLOUD) == []


def test_a_gpu_recorded_before_compute_was_packed_leases_and_releases_compute_as_a_reference_gpu(
    cloud: Cloud, fleet: Fleet
) -> None:
    aws.table(cloud.settings.fleet_table).update_item(Key={"gpu_id": "big"},
                                                      UpdateExpression="REMOVE compute_total, compute_free")
    old = fleet.get("big")
    assert old is not None and (old.compute_total, old.compute_free) == (100, 100)
    task = enqueued(cloud, fleet, 1)
    assigned = fleet.assign(old, task.waiting_entry(), NOW)
    assert compute_free(fleet, "big") == 70
    fleet.release(assigned, "succeeded")
    assert compute_free(fleet, "big") == 100
