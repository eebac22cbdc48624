"""The routing policy: where a job's next attempt goes, or why the job ends. Plain code over plain facts
(the job, its attempts so far, a snapshot of the fleet, the FaaS budget left, the rules), so the
Route step of the state machine, the tests and the simulator all run exactly this.

The rules, in order:
1. a bad input fails the job at once; so do `max_attempts` attempts that reached a GPU, and a passed
   deadline — each with every attempt's reason;
2. a GPU that failed the job (by a kind that blames the GPU) is never picked again for it, and a pool
   that failed it `pool_failures_before_moving_on` times is left for the next;
3. local first, then cloud (`pool_order`): the first pool with a healthy GPU that could run the job.
   It waits in that pool's room if need be; past its priority's bound, while another pool could
   start it, it spills on (`WaitExpired`, which is not an attempt) and the next pool comes next;
4. FaaS only for jobs of a FaaS segment, within the budget: when no other pool could start it now
   (FaaS answers in seconds, a queue does not), when no other pool can run it, and as the last resort
   for an eligible job's last attempt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, Field

from spillway.fleet import Gpu
from spillway.models import ErrorType, Pool, Priority, Segment
from spillway.routing.rules import FailureAction, RoutingRules


class RouteAction(StrEnum):
    RUN = "run"
    FAIL = "fail"


class Route(BaseModel):
    """The Route step's answer: an attempt opened on `pool`, or why the job fails."""

    action: RouteAction
    pool: Pool | None = None
    avoid_gpus: list[str] = Field(default_factory=list, description="GPUs that failed this job: never again")
    spill_to: Pool | None = Field(default=None, description="where it goes if it waits past its bound in `pool`")
    reason: str
    attempt: int = Field(ge=0, description="the attempt it opened (run), or the job's current one (fail): the fence "
                                           "of the execution's next write")
    faas_segment: str | None = None
    faas_budget_spent: bool = Field(default=False, description="FaaS would have taken it, but its budget is spent")
    queue_url: str | None = Field(default=None, description="the pool's queue, where the state machine sends the "
                                                            "attempt (the Router's, from the stack: not the policy's)")


@dataclass(frozen=True)
class JobFacts:
    service: str
    priority: Priority
    segment: Segment
    vram_mb: int
    compute: int
    deadline: float  # epoch seconds


@dataclass(frozen=True)
class PastAttempt:
    pool: Pool
    gpu_id: str | None
    error: ErrorType | None  # None: it succeeded, or is still open
    reason: str | None = None

    def line(self, number: int) -> str:
        where = f"{self.pool.value}/{self.gpu_id}" if self.gpu_id else self.pool.value
        return f"#{number} {where}: {self.error.value if self.error else 'open'}" + \
            (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class FleetSnapshot:
    """What routing needs to know of the fleet now: the GPUs that could take work, and how many tasks
    wait in each pool's room (counted up to a bound: routing only asks "is there a queue")."""

    gpus: list[Gpu]
    waiting: dict[Pool, int]
    now: float
    usable: set[str] = field(default_factory=set)  # gpu ids whose health takes work, heard from lately

    def candidates(self, pool: Pool, job: JobFacts, avoid: set[str]) -> list[Gpu]:
        """GPUs of the pool that could run the job at all: healthy, its service, enough VRAM and compute in all."""
        return [g for g in self.gpus if g.pool is pool and g.gpu_id in self.usable and g.gpu_id not in avoid
                and g.could_hold(job.service, job.vram_mb, job.compute)]

    def starts_now(self, pool: Pool, job: JobFacts, avoid: set[str]) -> bool:
        """A GPU of the pool has a slot, the VRAM and the compute for it, and no queue is ahead of it."""
        free = sum(g.free_slots for g in self.candidates(pool, job, avoid)
                   if g.fits(job.service, job.vram_mb, job.compute))
        return free > self.waiting.get(pool, 0)


@dataclass(frozen=True)
class FaasBudget:
    """Micro-dollars left today, for the whole FaaS pool and by segment (absent: no segment cap)."""

    left_micro: int
    segment_left_micro: dict[str, int] = field(default_factory=dict)
    enabled: bool = True  # False: the stack has no FaaS pool at all

    def affords(self, amount_micro: int, segment: str) -> bool:
        return amount_micro <= min(self.left_micro, self.segment_left_micro.get(segment, self.left_micro))


def decide(job: JobFacts, attempts: list[PastAttempt], fleet: FleetSnapshot, budget: FaasBudget,
           rules: RoutingRules, max_attempts: int, current_attempt: int, faas_refused: bool = False,
           max_legs: int | None = None) -> Route:
    """The next attempt of a job, or its end. `faas_refused`: the budget refused the reservation the
    last answer asked for (a race for the last dollars): decide again without FaaS. `max_legs` bounds
    attempts and spills together (the state machine's loop guard; default: two per attempt)."""
    def fail(reason: str) -> Route:
        return Route(action=RouteAction.FAIL, reason=reason, attempt=current_attempt)

    def run(pool: Pool, reason: str, segment: str | None = None) -> Route:
        return Route(action=RouteAction.RUN, pool=pool, avoid_gpus=sorted(avoid), reason=reason,
                     attempt=current_attempt, faas_segment=segment if pool is Pool.FAAS else None,
                     faas_budget_spent=budget_spent, spill_to=spill_target(pool))

    def spill_target(pool: Pool) -> Pool | None:
        """Past its wait bound in `pool`: the next pool that could run it, else FaaS if it may go there."""
        if pool is Pool.FAAS:
            return None
        later = serving[serving.index(pool) + 1:] if pool in serving else [p for p in serving if p is not pool]
        return later[0] if later else (Pool.FAAS if faas_open else None)

    budget_spent = False

    failed = [(n, a) for n, a in enumerate(attempts, start=1) if a.error is not None]
    history = "; ".join(a.line(n) for n, a in failed)
    last = attempts[-1] if attempts else None
    last_action = rules.action_for(last.error) if last and last.error else None
    if last_action is FailureAction.FAIL_JOB:
        return fail(f"{last.error.value}: {last.reason or 'the input cannot be used'}")
    counted = [a for _, a in failed if rules.action_for(a.error) is not FailureAction.NEXT_POOL]
    if len(counted) >= max_attempts:
        return fail(f"{len(counted)} attempts failed: {history}")
    if fleet.now >= job.deadline:
        return fail(f"its deadline passed before any attempt succeeded{': ' + history if history else ''}")
    if len(attempts) >= (max_legs or 2 * max_attempts):
        return fail(f"{len(attempts)} attempts and spills, the most a job gets: {history}")

    # Never again a GPU that failed the job (a pool may be tried again: same_pool, another_gpu).
    avoid = {a.gpu_id for a in counted if a.gpu_id and a.pool is not Pool.FAAS}
    pools = _pools_left(rules, counted)
    if last_action is FailureAction.NEXT_POOL and last.pool in pools:
        # It waited past its bound there, or was refused: on to the next pool (or, if none is left, back).
        pools = pools[pools.index(last.pool) + 1:] or [last.pool]
    elif last_action is FailureAction.SAME_POOL and last.pool in pools:
        pools = [last.pool] + [p for p in pools if p is not last.pool]
    why = f" (after {len(counted)} failed attempt{'s' if len(counted) > 1 else ''})" if counted else ""

    segment = rules.faas.segment_for(job.segment, job.service, job.priority) \
        if budget.enabled and rules.faas.holds(job.vram_mb) else None
    refused_before = any(a.pool is Pool.FAAS and a.error is not None
                         and rules.action_for(a.error) is FailureAction.NEXT_POOL for a in attempts)
    failed_there = any(a.pool is Pool.FAAS for a in counted)
    last_attempt = bool(counted) and len(counted) == max_attempts - 1
    faas_open = (segment is not None and not faas_refused and not refused_before
                 and (not failed_there or last_attempt)  # a FaaS failure: FaaS again only as the last resort
                 and budget.affords(rules.faas.reservation_micro, segment.name))

    def to_faas(because: str) -> Route:
        return run(Pool.FAAS, f"faas for segment {segment.name}: {because}{why}", segment.name)

    serving = [p for p in pools if fleet.candidates(p, job, avoid)]
    if rules.faas.last_resort and last_attempt:
        wants_faas = "its last attempt goes where it is most likely to succeed"
    elif not any(fleet.starts_now(p, job, avoid) for p in serving):
        wants_faas = "no other pool could start it now" if serving else "no other pool can run it"
    else:
        wants_faas = ""
    if segment is not None and wants_faas:
        if faas_open:
            return to_faas(wants_faas)
        if not (refused_before or failed_there):
            why += f" (FaaS would have taken it, but the budget of {segment.name} is spent)"
            budget_spent = True
    if serving:
        pool = serving[0]
        if last_action is FailureAction.NEXT_POOL and last.pool is not Pool.FAAS:
            because = f"spilled over from {last.pool.value}"
        elif pool is rules.pool_order[0]:
            because = "first choice" if not counted else "another of its GPUs"
        else:
            because = f"no healthy {_before(rules, pool)} GPU can run it"
        waits = "" if fleet.starts_now(pool, job, avoid) else "; it waits for a GPU"
        return run(pool, f"{pool.value}: {because}{waits}{why}")
    # Nothing healthy can take it now. Wait in the last pool that has such a GPU at all, down or not
    # (it holds the task until the deadline); if none has, no GPU ever could.
    reason = f"no healthy GPU of {', '.join(p.value for p in pools) or 'any pool'} runs {job.service} " \
             f"with {job.vram_mb} MB"
    registered = [p for p in pools if any(g.pool is p and g.could_hold(job.service, job.vram_mb, job.compute)
                                          and g.gpu_id not in avoid for g in fleet.gpus)]
    if registered:
        return run(registered[-1], f"{registered[-1].value}: {reason}; it waits for one to come back{why}")
    return fail(f"{reason}{why}")


def _pools_left(rules: RoutingRules, counted: Iterable[PastAttempt]) -> list[Pool]:
    """The pools in order, without those that failed the job too often already."""
    failures: dict[Pool, int] = {}
    for attempt in counted:
        failures[attempt.pool] = failures.get(attempt.pool, 0) + 1
    return [p for p in rules.pool_order if failures.get(p, 0) < rules.pool_failures_before_moving_on]


def _before(rules: RoutingRules, pool: Pool) -> str:
    return "/".join(p.value for p in rules.pool_order[:rules.pool_order.index(pool)]) or "no pool"
