"""The FaaS pool in simulation: the provider's workers, and the budget's counters the Route step reads."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy

from spillway.faas.billing import micro_for, seconds_for
from spillway.models import Pool
from spillway.routing.policy import FaasBudget
from spillway.routing.router import budget_left, faas_caps
from spillway.routing.rules import RoutingRules
from spillway_sim.run import Attempt
from spillway_sim.scenario import DAY, World
from spillway_sim.workload import SimJob


class FaasProvider:
    """The pay-per-request pool: `concurrency` workers, a cold start for a worker idle past `idle_seconds`,
    billed per second (rounded up) with the cold start, as the dispatcher settles it."""

    def __init__(self, env: simpy.Environment, world: World, rules: RoutingRules):
        faas = world.faas
        self.env = env
        self.workers = simpy.Resource(env, capacity=faas.concurrency if faas else 1)
        self.idle_since: list[float] = []  # warm workers, by when they went idle
        self.cold_s = faas.cold_start_seconds if faas else 0.0
        self.idle_s = faas.idle_seconds if faas else 0.0
        self.price = rules.faas.price_per_second_usd
        self.speed = world.scenario.timing.speed.get(Pool.FAAS, 1.0)

    def run(self, job: SimJob, attempt: Attempt) -> Generator[Any, Any, int]:
        """Run the job; returns its cost in micro-dollars."""
        with self.workers.request() as worker:
            yield worker
            now = self.env.now
            self.idle_since = [t for t in self.idle_since if now - t <= self.idle_s]
            cold = not self.idle_since
            if not cold:
                self.idle_since.pop()  # the most recently idle: the warmest
            run_s = job.run_s / self.speed
            attempt.started = now
            yield self.env.timeout(run_s + (self.cold_s if cold else 0.0))
            self.idle_since.append(self.env.now)
        return micro_for(seconds_for(run_s + (self.cold_s if cold else 0.0)), self.price)


class Ledger:
    """The FaaS budget's counters per day and scope (the day's, a segment's), in micro-dollars, as
    `budget.BudgetLedger` keeps them in DynamoDB: a reservation holds the worst case, settled to the cost."""

    def __init__(self) -> None:
        self.committed: dict[tuple[int, str | None], int] = {}

    def left(self, rules: RoutingRules, now: float) -> FaasBudget:
        day = int(now // DAY)
        return budget_left(rules, lambda scope: self.committed.get((day, scope), 0))

    def reserve(self, rules: RoutingRules, segment: str | None, now: float) -> tuple[int, int] | None:
        day, amount = int(now // DAY), rules.faas.reservation_micro
        caps = faas_caps(rules, segment)
        if any(self.committed.get((day, c.segment), 0) + amount > c.cap_micro for c in caps):
            return None
        for c in caps:
            self.committed[(day, c.segment)] = self.committed.get((day, c.segment), 0) + amount
        return day, amount

    def settle(self, rules: RoutingRules, segment: str | None, held: tuple[int, int], cost: int) -> None:
        day, amount = held
        for c in faas_caps(rules, segment):
            self.committed[(day, c.segment)] -= amount - cost
