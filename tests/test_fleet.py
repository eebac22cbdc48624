"""Leases: VRAM packing, no oversubscription, and fencing by attempt number."""

from __future__ import annotations

import pytest

from spillway import aws
from spillway.dispatch import result_key_for, task_id_for
from spillway.fleet import Fleet, LeaseRefused, Task
from spillway.models import Pool

from conftest import Cloud
from helpers import beat, fleet_for

NOW = 1_000_000.0


def running_job(cloud: Cloud, job_id: str, attempt: int = 1) -> None:
    """A job record as the state machine leaves it when it opens an attempt."""
    aws.table(cloud.settings.jobs_table).put_item(
        Item={"job_id": job_id, "status": "RUNNING", "attempt": attempt,
              "attempts": [{"pool": "local", "started_at": "t"} for _ in range(attempt)]}
    )


def task(job_id: str, gpu_id: str, vram_mb: int, attempt: int = 1) -> Task:
    return Task(
        task_id=task_id_for(job_id, attempt), job_id=job_id, attempt=attempt, pool=Pool.LOCAL, gpu_id=gpu_id,
        gpu_url="http://x", service="remove_furniture", input_key="uploads/in.png",
        result_key=result_key_for(job_id, attempt), vram_mb=vram_mb, task_token="token", created_at=NOW,
        expires_at=int(NOW) + 3600,
    )


@pytest.fixture
def fleet(cloud: Cloud) -> Fleet:
    fleet = fleet_for(cloud.settings)
    fleet.heartbeat(beat("small", vram_mb=4000), now=NOW)
    fleet.heartbeat(beat("big", vram_mb=16000), now=NOW)
    return fleet


def test_first_heartbeat_registers_a_gpu_with_all_its_vram_free(fleet: Fleet) -> None:
    gpu = fleet.get("big")
    assert gpu is not None
    assert (gpu.pool, gpu.vram_total_mb, gpu.vram_free_mb, gpu.running) == (Pool.LOCAL, 16000, 16000, 0)


def test_candidates_are_best_fit_first_and_skip_what_cannot_take_the_task(fleet: Fleet) -> None:
    assert [g.gpu_id for g in fleet.candidates(Pool.LOCAL, "remove_furniture", 3000, NOW, 30)] == ["small", "big"]
    assert [g.gpu_id for g in fleet.candidates(Pool.LOCAL, "remove_furniture", 5000, NOW, 30)] == ["big"]
    assert fleet.candidates(Pool.LOCAL, "unknown_service", 100, NOW, 30) == []
    assert fleet.candidates(Pool.CLOUD, "remove_furniture", 100, NOW, 30) == []
    assert fleet.candidates(Pool.LOCAL, "remove_furniture", 100, NOW + 31, 30) == [], "stale agents get no work"


def test_draining_gpu_gets_no_new_work(fleet: Fleet) -> None:
    fleet.heartbeat(beat("big", vram_mb=16000, draining=True), now=NOW)
    assert [g.gpu_id for g in fleet.candidates(Pool.LOCAL, "remove_furniture", 100, NOW, 30)] == ["small"]


def test_a_gpu_is_never_oversubscribed(cloud: Cloud, fleet: Fleet) -> None:
    running_job(cloud, "j-1")
    running_job(cloud, "j-2")
    small = fleet.get("small")
    fleet.lease(small, task("j-1", "small", 3000))
    with pytest.raises(LeaseRefused) as refused:
        fleet.lease(small, task("j-2", "small", 3000))  # `small` is a stale snapshot: 4000 free no more
    assert refused.value.reason == "gpu_taken"
    assert fleet.get("small").vram_free_mb == 1000
    assert fleet.task(task_id_for("j-2", 1)) is None, "a refused lease writes nothing"


def test_a_duplicate_delivery_does_not_lease_twice(cloud: Cloud, fleet: Fleet) -> None:
    running_job(cloud, "j-1")
    fleet.lease(fleet.get("big"), task("j-1", "big", 3000))
    with pytest.raises(LeaseRefused) as refused:
        fleet.lease(fleet.get("big"), task("j-1", "big", 3000))
    assert refused.value.reason == "task_exists"
    assert fleet.get("big").vram_free_mb == 13000


def test_an_attempt_that_moved_on_is_not_leased(cloud: Cloud, fleet: Fleet) -> None:
    running_job(cloud, "j-1", attempt=2)
    with pytest.raises(LeaseRefused) as refused:
        fleet.lease(fleet.get("big"), task("j-1", "big", 3000, attempt=1))
    assert refused.value.reason == "attempt_moved_on"
    assert fleet.get("big").vram_free_mb == 16000


def test_lease_notes_the_gpu_on_the_jobs_attempt(cloud: Cloud, fleet: Fleet) -> None:
    running_job(cloud, "j-1")
    fleet.lease(fleet.get("big"), task("j-1", "big", 3000))
    attempt = cloud.job_item("j-1")["attempts"][0]
    assert (attempt["gpu_id"], attempt["task_id"]) == ("big", task_id_for("j-1", 1))


def test_release_gives_vram_back_exactly_once(cloud: Cloud, fleet: Fleet) -> None:
    running_job(cloud, "j-1")
    leased = task("j-1", "big", 3000)
    fleet.lease(fleet.get("big"), leased)
    assert fleet.release(leased, "succeeded") is True
    assert fleet.release(leased, "failed", "ModelError") is False
    gpu = fleet.get("big")
    assert (gpu.vram_free_mb, gpu.running) == (16000, 0)
    stored = fleet.task(leased.task_id)
    assert (stored.state, stored.outcome) == ("done", "succeeded")


def test_give_back_lets_the_attempt_lease_again(cloud: Cloud, fleet: Fleet) -> None:
    running_job(cloud, "j-1")
    leased = task("j-1", "big", 3000)
    fleet.lease(fleet.get("big"), leased)
    assert fleet.give_back(leased) is True
    assert fleet.task(leased.task_id) is None
    fleet.lease(fleet.get("small"), task("j-1", "small", 3000))
    assert fleet.get("big").vram_free_mb == 16000
    assert fleet.get("small").vram_free_mb == 1000
