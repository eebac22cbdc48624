"""Priority classes as data: how each ranks in a waiting room, how long it waits, when it is due.

The waiting room orders tasks by a *virtual arrival time*: the real arrival minus the class's head
start. Under contention a new high task (head start 5 min) goes before a normal one that arrived
less than 4 min before it, and before every low one that arrived less than 5 min before it; a low
task that has waited longer than that outranks every newcomer, so nothing starves.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from spillway.models import Pool, Priority


class PriorityClass(BaseModel, frozen=True):
    head_start_s: float = Field(ge=0, description="ranks as if it had arrived this much earlier")
    spill_after_s: float = Field(gt=0, description="longest wait for an office GPU before the next pool")
    deadline_s: float = Field(gt=0, description="a job of this class is answered within this, from submit")


PRIORITY_CLASSES: dict[Priority, PriorityClass] = {
    Priority.HIGH: PriorityClass(head_start_s=300, spill_after_s=5, deadline_s=10 * 60),
    Priority.NORMAL: PriorityClass(head_start_s=60, spill_after_s=30, deadline_s=60 * 60),
    Priority.LOW: PriorityClass(head_start_s=0, spill_after_s=10 * 60, deadline_s=24 * 60 * 60),
}


def virtual_arrival(priority: Priority, arrived_at: float) -> float:
    """The waiting room's sort key: earlier goes first."""
    return arrived_at - PRIORITY_CLASSES[priority].head_start_s


def deadline_for(priority: Priority, submitted_at: datetime) -> datetime:
    return submitted_at + timedelta(seconds=PRIORITY_CLASSES[priority].deadline_s)


def job_clock(priority: Priority, submitted_at: str | None, deadline_at: str | None, now: float) -> tuple[float, float]:
    """(submitted, deadline) in epoch seconds; a job from before deadlines counts from `now`."""
    submitted = datetime.fromisoformat(submitted_at).timestamp() if submitted_at else now
    if deadline_at:
        return submitted, datetime.fromisoformat(deadline_at).timestamp()
    return submitted, submitted + PRIORITY_CLASSES[priority].deadline_s


# Where a task goes when it waited past its spill bound; the last pool holds it until the deadline.
NEXT_POOL: dict[Pool, Pool] = {Pool.LOCAL: Pool.CLOUD}
SPILLS_INTO: dict[Pool, tuple[Pool, ...]] = {
    target: tuple(p for p, n in NEXT_POOL.items() if n is target) for target in set(NEXT_POOL.values())
}


def wait_bound(priority: Priority, spill_to: Pool | None, arrived_at: float, deadline_at: float) -> float:
    """Until when a task may wait for a GPU of its pool (epoch seconds).

    A task with somewhere to spill to (the next pool, or FaaS: routing says which) waits at most its
    class's spill bound; one with nowhere to go is held until the job's deadline. Never the attempt's
    heartbeat.
    """
    if spill_to is not None:
        return min(arrived_at + PRIORITY_CLASSES[priority].spill_after_s, deadline_at)
    return max(deadline_at, arrived_at + 1)
