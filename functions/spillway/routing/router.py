"""The Route step: gathers the facts the routing policy decides on, asks it, reserves the FaaS budget
of a FaaS route, and opens the attempt on the job (its route names the pool's queue, where the state
machine sends it) — or, when the policy ends the job, writes it FAILED with why and counts its end.
Admission runs it for the first attempt (so the happy path's execution starts at RunAttempt), the state
machine's Route step after each attempt.

The facts are read fresh each time: the job's attempts (its record), the fleet (every GPU, and how
many tasks wait in each pool's room), and today's FaaS spend — except that admission reads the fleet once
for a whole batch of jobs (`SharedFleet`). The reservation is made under the id of
the attempt about to open, so a retried Route step never reserves twice; the FaaS dispatcher settles
it to the billed cost, or releases it if the call is never made.

`route_step` is the step's decision over facts already read, with no AWS in it: the Router feeds it
from DynamoDB, the simulator (`spillway simulate`) from its simulated fleet and budget.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from aws_lambda_powertools import Logger

from spillway.budget import BudgetLedger, Cap
from spillway.credentials import faas_task_id
from spillway.endings import JobEndings
from spillway.faas.billing import MICRO
from spillway.fleet import Fleet, Gpu
from spillway.jobs import Attempt, JobRecord, JobStore, iso_at
from spillway.metrics import Metric, emit
from spillway.models import JobStatus, Pool
from spillway.priorities import job_clock
from spillway.routing.policy import FaasBudget, FleetSnapshot, JobFacts, PastAttempt, Route, RouteAction, decide
from spillway.routing.rules import RoutingRules

logger = Logger(child=True)

QUEUE_PEEK = 50  # routing asks whether a pool has a queue, not how long it is


def faas_caps(rules: RoutingRules, segment: str | None) -> list[Cap]:
    """The caps a FaaS call of `segment` is held to: the day's, and the segment's own if it has one."""
    caps = [Cap(cap_micro=round(rules.faas.daily_budget_usd * MICRO))]
    rule = next((r for r in rules.faas.segments if r.name == segment), None)
    if rule is not None and rule.daily_budget_usd is not None:
        caps.append(Cap(segment=rule.name, cap_micro=round(rule.daily_budget_usd * MICRO)))
    return caps


def faas_eligible(rules: RoutingRules, facts: JobFacts, faas_enabled: bool) -> bool:
    """Only a job of a FaaS segment that its GPU can hold may spend: the budget is read (and a reservation looked
    for) for it alone."""
    return faas_enabled and rules.faas.holds(facts.vram_mb) \
        and rules.faas.segment_for(facts.segment, facts.service, facts.priority) is not None


def budget_left(rules: RoutingRules, committed: Callable[[str | None], int]) -> FaasBudget:
    """Today's FaaS budget left, from what is `committed` (settled and reserved) in each scope: the day's
    (None) and each segment with a cap of its own."""
    segments = {rule.name: round(rule.daily_budget_usd * MICRO) - committed(rule.name)
                for rule in rules.faas.segments if rule.daily_budget_usd is not None}
    return FaasBudget(left_micro=round(rules.faas.daily_budget_usd * MICRO) - committed(None),
                      segment_left_micro=segments)


def fleet_snapshot(gpus: list[Gpu], now: float, stale_after: float, depth: Callable[[Pool, int], int]) -> FleetSnapshot:
    """The fleet as routing sees it: every GPU, the healthy ones, and each room's depth up to QUEUE_PEEK."""
    return FleetSnapshot(gpus=gpus, now=now, usable={g.gpu_id for g in gpus if g.accepts_work(now, stale_after)},
                         waiting={pool: depth(pool, QUEUE_PEEK) for pool in (Pool.LOCAL, Pool.CLOUD)})


class SharedFleet:
    """One read of the fleet for a batch of routes (an admission batch): taken by the batch's first route that
    decides, and each attempt the batch opens in a pool counted in that pool's room, as the batch's next job will
    find it there. A burst of submits then reads the fleet once per batch, not once per job."""

    def __init__(self, read: Callable[[], FleetSnapshot]):
        self._read = read
        self._snapshot: FleetSnapshot | None = None

    def snapshot(self) -> FleetSnapshot:
        if self._snapshot is None:
            self._snapshot = self._read()
        return self._snapshot

    def opened(self, pool: Pool) -> None:
        """An attempt of the batch opened in `pool`: it is ahead of the next job there."""
        if self._snapshot is not None and pool in self._snapshot.waiting:
            waiting = self._snapshot.waiting | {pool: self._snapshot.waiting[pool] + 1}
            self._snapshot = dataclasses.replace(self._snapshot, waiting=waiting)


def route_step(facts: JobFacts, attempts: list[PastAttempt], current_attempt: int, fleet: FleetSnapshot,
               rules: RoutingRules, budget: Callable[[], FaasBudget], reserve: Callable[[Route], bool], *,
               faas_enabled: bool, max_attempts: int, max_legs: int) -> Route:
    """The policy's answer, its FaaS budget reserved: `budget` is read for a FaaS-eligible job only;
    `reserve` holds a FaaS route's worst case and says whether the caps took it. Refused (another call
    took the last dollars since the budget was read), the policy decides again without FaaS."""
    left = budget() if faas_eligible(rules, facts, faas_enabled) else FaasBudget(left_micro=0, enabled=faas_enabled)

    def decide_now(faas_refused: bool = False) -> Route:
        return decide(facts, attempts, fleet, left, rules, max_attempts, current_attempt, faas_refused, max_legs)

    route = decide_now()
    if route.pool is Pool.FAAS and not reserve(route):
        route = decide_now(faas_refused=True)
    return route


class Router:
    def __init__(self, jobs: JobStore, fleet: Fleet, budget: BudgetLedger, rules: Callable[[], RoutingRules],
                 queue_urls: dict[Pool, str], max_attempts: int, max_legs: int, stale_after: float,
                 faas_enabled: bool, clock: Callable[[], float] = time.time, endings: JobEndings | None = None):
        self._jobs = jobs
        self._queue_urls = queue_urls  # each pool's queue: on every route opened, for the state machine's send
        self._endings = endings or JobEndings(jobs, clock=clock)
        self._fleet = fleet
        self._budget = budget
        self._rules = rules
        self._max_attempts = max_attempts
        self._max_legs = max_legs
        self._stale_after = stale_after
        self._faas_enabled = faas_enabled  # a stack without a FaaS endpoint never routes there
        self._clock = clock

    def shared_fleet(self) -> SharedFleet:
        """A fleet read that a batch of routes shares (see `SharedFleet`); read when the first of them decides."""
        return SharedFleet(self._read_fleet)

    def _read_fleet(self) -> FleetSnapshot:
        return fleet_snapshot(self._fleet.all_gpus(), self._clock(), self._stale_after,
                              lambda pool, at_most: self._fleet.waiting_room.depth(pool, at_most=at_most))

    def route(self, job_id: str, after: int, fleet: SharedFleet | None = None) -> Route:
        """Where the attempt after `after` goes, opened on the job (the fence: the job is still on `after`);
        or why the job ends, written. Admission asks for the first (after 0), the Route step after each attempt
        closed. A retried step or a redelivered admission whose attempt opened already gets it again. `fleet`:
        a read shared with the other routes of a batch; none, the fleet is read for this route alone."""
        job = self._jobs.get(job_id)
        if job is None:
            raise LookupError(f"no job {job_id}: its execution runs for a record that does not exist")
        if job.status.final:
            return Route(action=RouteAction.FAIL, reason=f"the job is {job.status.value} already", attempt=job.attempt)
        if job.attempt == after + 1 and job.attempts and job.attempts[-1].outcome is None:
            return self._to_queue(opened_route(job.attempts[-1], job.attempt))
        route = self._decide(job, after, fleet or self.shared_fleet())
        _report(route, job)
        if route.action is RouteAction.FAIL:
            self.fail(job_id, route.reason, attempt=route.attempt)
        return self._to_queue(route)

    def fail(self, job_id: str, reason: str, attempt: int | None = None) -> bool:
        """The job FAILED with why (fenced by `attempt` if given), its end counted and told: the one place a
        route ends a job, and admission out of tries, and RoutingFailed (the Route step failed past its retries).
        False if it was final already or moved on."""
        return self._endings.close(job_id, JobStatus.FAILED, iso_at(self._clock()), error=reason,
                                   attempt=attempt) is not None

    def _to_queue(self, route: Route) -> Route:
        """A run route names its pool's queue: the state machine's one RunAttempt sends there."""
        if route.pool is None or route.action is not RouteAction.RUN:
            return route
        return route.model_copy(update={"queue_url": self._queue_urls[route.pool]})

    def _decide(self, job: JobRecord, after: int, shared: SharedFleet) -> Route:
        now = self._clock()
        rules = self._rules()
        _, deadline = job_clock(job.priority, job.created_at, job.deadline_at, now)
        facts = JobFacts(service=job.service, priority=job.priority, segment=job.segment, vram_mb=job.vram_mb,
                         compute=job.compute,
                         deadline=deadline)
        attempts = [PastAttempt(pool=a.pool, gpu_id=a.gpu_id, error=a.error_type, reason=a.reason)
                    for a in job.attempts]
        fleet = dataclasses.replace(shared.snapshot(), now=now)  # the batch's GPUs and rooms, this route's clock
        reservation_id = faas_task_id(job.job_id, after + 1)  # the FaaS attempt about to open

        def reserve(route: Route) -> bool:
            caps = faas_caps(rules, route.faas_segment)
            return self._budget.reserve(reservation_id, rules.faas.reservation_micro, caps) is not None

        route = route_step(facts, attempts, job.attempt, fleet, rules,
                           lambda: budget_left(rules, lambda segment: self._budget.view(segment).committed_micro),
                           reserve, faas_enabled=self._faas_enabled, max_attempts=self._max_attempts,
                           max_legs=self._max_legs)
        opened = route.action is RouteAction.RUN and self._open(job.job_id, after, route, iso_at(now))
        if opened and route.pool is not None:
            shared.opened(route.pool)
        eligible = faas_eligible(rules, facts, self._faas_enabled)
        held = self._budget.reservation(reservation_id) if eligible and not (opened and route.pool is Pool.FAAS) \
            else None
        if held is not None:  # reserved for FaaS by a try that decided otherwise, or whose attempt did not open
            self._budget.release(held)
        if route.action is RouteAction.RUN and not opened:
            return Route(action=RouteAction.FAIL, attempt=after,
                         reason=f"attempt {after + 1} could not open: the job moved on, or ran out of legs")
        return route.model_copy(update={"attempt": after + 1}) if opened else route

    def _open(self, job_id: str, after: int, route: Route, at: str) -> bool:
        """Open the routed attempt on the job, keeping its whole route (a retry answers it again)."""
        assert route.pool is not None
        entry = Attempt(pool=route.pool, route=route.reason, started_at=at, avoid_gpus=route.avoid_gpus,
                        spill_to=route.spill_to, faas_segment=route.faas_segment)
        return self._jobs.open_attempt(job_id, after, entry, self._max_legs)

def opened_route(attempt: Attempt, number: int) -> Route:
    """The route of an attempt opened already, as it was decided."""
    return Route(action=RouteAction.RUN, pool=attempt.pool, avoid_gpus=attempt.avoid_gpus, spill_to=attempt.spill_to,
                 reason=attempt.route or "", attempt=number, faas_segment=attempt.faas_segment)


def _report(route: Route, job: JobRecord) -> None:
    """A route decided: logged and counted."""
    logger.info("routed", job_id=job.job_id, action=route.action.value, pool=route.pool and route.pool.value,
                reason=route.reason, attempt=route.attempt)
    emit(Metric.ATTEMPTS_ROUTED, Pool=route.pool.value if route.pool else "none")
    if route.faas_budget_spent:  # the FaasBudgetSpent alarm watches it
        logger.warning("faas budget spent: routed elsewhere", job_id=job.job_id, reason=route.reason)
        emit(Metric.FAAS_BUDGET_SPENT)
