"""The Route step: gathers the facts the routing policy decides on, asks it, and reserves the FaaS
budget of a FaaS route before the state machine opens the attempt.

The facts are read fresh each time: the job's attempts (its record), the fleet (every GPU, and how
many tasks wait in each pool's room), and today's FaaS spend. The reservation is made under the id of
the attempt about to open, so a retried Route step never reserves twice; the FaaS dispatcher settles
it to the billed cost, or releases it if the call is never made.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from spillway.budget import BudgetLedger, Cap
from spillway.dispatch import task_id_for
from spillway.faas.billing import MICRO
from spillway.fleet import Fleet
from spillway.jobs import JobStore
from spillway.models import Pool
from spillway.priorities import job_clock
from spillway.routing.policy import FaasBudget, FleetSnapshot, JobFacts, PastAttempt, Route, RouteAction, decide
from spillway.routing.rules import RoutingRules

QUEUE_PEEK = 50  # routing asks whether a pool has a queue, not how long it is


def faas_caps(rules: RoutingRules, segment: str | None) -> list[Cap]:
    """The caps a FaaS call of `segment` is held to: the day's, and the segment's own if it has one."""
    caps = [Cap(cap_micro=round(rules.faas.daily_budget_usd * MICRO))]
    rule = next((r for r in rules.faas.segments if r.name == segment), None)
    if rule is not None and rule.daily_budget_usd is not None:
        caps.append(Cap(segment=rule.name, cap_micro=round(rule.daily_budget_usd * MICRO)))
    return caps


class Router:
    def __init__(self, jobs: JobStore, fleet: Fleet, budget: BudgetLedger, rules: Callable[[], RoutingRules],
                 max_attempts: int, max_legs: int, stale_after: float, faas_enabled: bool,
                 clock: Callable[[], float] = time.time):
        self._jobs = jobs
        self._fleet = fleet
        self._budget = budget
        self._rules = rules
        self._max_attempts = max_attempts
        self._max_legs = max_legs
        self._stale_after = stale_after
        self._faas_enabled = faas_enabled  # a stack without a FaaS endpoint never routes there
        self._clock = clock

    def route(self, job_id: str) -> Route:
        job = self._jobs.get(job_id)
        if job is None:
            raise LookupError(f"no job {job_id}: its execution runs for a record that does not exist")
        if job.status.final:
            return Route(action=RouteAction.FAIL, reason=f"the job is {job.status.value} already", attempt=job.attempt)
        now = self._clock()
        rules = self._rules()
        _, deadline = job_clock(job.priority, job.created_at, job.deadline_at, now)
        facts = JobFacts(service=job.service, priority=job.priority, segment=job.segment, vram_mb=job.vram_mb,
                         deadline=deadline)
        attempts = [PastAttempt(pool=a.pool, gpu_id=a.gpu_id, error=a.error_type, reason=a.reason)
                    for a in job.attempts]
        fleet = self._snapshot(now)
        # Only a job of a FaaS segment may spend: the budget is read (and a reservation looked for) for it alone.
        eligible = self._faas_enabled and rules.faas.segment_for(job.segment, job.service, job.priority) is not None
        budget = self._budget_left(rules) if eligible else FaasBudget(left_micro=0, enabled=self._faas_enabled)

        def decide_now(faas_refused: bool = False) -> Route:
            return decide(facts, attempts, fleet, budget, rules, self._max_attempts, job.attempt, faas_refused,
                          self._max_legs)

        reservation_id = task_id_for(job_id, job.attempt + 1)  # the attempt about to open
        route = decide_now()
        if route.pool is Pool.FAAS:
            reservation = self._budget.reserve(reservation_id, rules.faas.reservation_micro,
                                               faas_caps(rules, route.faas_segment))
            if reservation is None:  # another call took the last dollars since the budget was read
                route = decide_now(faas_refused=True)
        held = self._budget.reservation(reservation_id) if route.pool is not Pool.FAAS and eligible else None
        if held is not None:  # a retried Route step reserved for FaaS the first time and decided otherwise now
            self._budget.release(held)
        return route

    def _snapshot(self, now: float) -> FleetSnapshot:
        gpus = self._fleet.all_gpus()
        return FleetSnapshot(
            gpus=gpus, now=now, usable={g.gpu_id for g in gpus if g.is_healthy(now, self._stale_after)},
            waiting={pool: self._fleet.waiting_room.depth(pool, at_most=QUEUE_PEEK)
                     for pool in (Pool.LOCAL, Pool.CLOUD)},
        )

    def _budget_left(self, rules: RoutingRules) -> FaasBudget:
        day = round(rules.faas.daily_budget_usd * MICRO) - self._budget.view().committed_micro
        segments = {rule.name: round(rule.daily_budget_usd * MICRO) - self._budget.view(rule.name).committed_micro
                    for rule in rules.faas.segments if rule.daily_budget_usd is not None}
        return FaasBudget(left_micro=day, segment_left_micro=segments)
