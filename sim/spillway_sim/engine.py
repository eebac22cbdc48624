"""The simulated world (SimPy): GPUs behind links that drop, agents that die, a FaaS provider, and a
dispatcher per policy. Simulated time is seconds from the start; nothing here sleeps.

Spillway's policy runs the production code: each leg of a job asks `routing.policy.decide` over a
`FleetSnapshot` of `fleet.Gpu` records and a `FaasBudget`, with the scenario's `RoutingRules`; an
attempt waits in its pool's room ranked by `WaitingEntry.rank_for` (priority with aging), bounded
by `priorities.wait_bound`, and is placed by `placement` (best fit, spills pulled by the next pool,
the wait clock), as the pollers do. What stands in for AWS is only the plumbing: a list per room,
the GPU records in memory, the budget's counters.

The fleet and its health are `health`'s, the FaaS pool and its budget `faas`'s, the old design
`old_design`'s, what a run produced `run`'s.
"""

from __future__ import annotations

import bisect
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy

from spillway import placement
from spillway.credentials import task_id_for
from spillway.dispatch import LOOK_AHEAD, MAX_PASSES, SPILL_LOOK_AHEAD
from spillway.faas.billing import MICRO
from spillway.fleet import Gpu
from spillway.models import ErrorType, Pool
from spillway.priorities import PRIORITY_CLASSES, SPILLS_INTO, wait_bound
from spillway.routing.policy import JobFacts, PastAttempt, Route, RouteAction
from spillway.routing.router import fleet_snapshot, route_step
from spillway.routing.rules import RoutingRules
from spillway.waiting_room import WaitingEntry
from spillway_sim.faas import FaasProvider, Ledger
from spillway_sim.health import Health, SimGpu
from spillway_sim.old_design import PerGpuQueues
from spillway_sim.run import Attempt, Result, Run, Spend
from spillway_sim.scenario import DAY, Dispatch, World
from spillway_sim.workload import Crash, Outage, SimJob, Workload

SIM_KEY = b"simulation"  # task ids need a key; nothing here is secret


@dataclass(eq=False)
class Task:
    """An attempt on a pool of GPUs: in its room, then on a GPU."""

    job: SimJob
    entry: WaitingEntry
    deadline: float
    done: simpy.Event
    gpu: SimGpu | None = None
    attempt: Attempt | None = None


class Spillway:
    """The production routing policy and waiting rooms over the simulated fleet."""

    def __init__(self, sim: Simulation, rules: RoutingRules):
        self.sim = sim
        self.env = sim.env
        self.rules = rules
        self.limits = sim.world.limits
        self.rooms: dict[Pool, list[Task]] = {Pool.LOCAL: [], Pool.CLOUD: []}
        self.ledger = Ledger()
        self.faas = FaasProvider(self.env, sim.world, rules)
        self.faas_enabled = sim.world.faas is not None

    # -- a job's execution: the state machine's loop of Route and RunAttempt

    def job(self, job: SimJob) -> Generator[Any, Any, None]:
        result = self.sim.result(job)
        timing = self.sim.world.scenario.timing
        facts = JobFacts(service=job.service, priority=job.priority, segment=job.segment, vram_mb=job.vram_mb,
                         compute=job.compute,
                         deadline=job.at + PRIORITY_CLASSES[job.priority].deadline_s)
        past: list[PastAttempt] = []
        while True:
            route, held = self.route(facts, past)
            if route.action is RouteAction.FAIL:
                result.finished_at, result.reason = self.env.now, route.reason
                return
            yield self.env.timeout(timing.leg_seconds)
            attempt = Attempt(pool=route.pool, gpu_id=None, error=None)
            result.attempts.append(attempt)
            if route.pool is Pool.FAAS:
                cost = yield from self.faas.run(job, attempt)
                self.ledger.settle(self.rules, route.faas_segment, held, cost)
                self.sim.spent(Pool.FAAS, cost / MICRO)
            else:
                yield from self.attempt(job, route, len(past) + 1, facts.deadline, attempt)
            attempt.ended = self.env.now
            past.append(PastAttempt(pool=attempt.pool, gpu_id=attempt.gpu_id, error=attempt.error,
                                    reason=attempt.reason))
            if attempt.error is None:
                result.succeeded, result.finished_at = True, self.env.now
                return

    def route(self, facts: JobFacts, past: list[PastAttempt]) -> tuple[Route, tuple[int, int] | None]:
        """The Route step (`routing.router.route_step`) over the simulated fleet and ledger; the FaaS
        reservation it made, if any."""
        now = self.env.now
        snapshot = fleet_snapshot([g.gpu for g in self.sim.gpus.values()], now, self.limits.agent_stale_seconds,
                                  lambda pool, at_most: min(len(self.rooms[pool]), at_most))
        held: list[tuple[int, int]] = []

        def reserve(route: Route) -> bool:
            reservation = self.ledger.reserve(self.rules, route.faas_segment, now)
            held.extend([reservation] if reservation else [])
            return reservation is not None

        route = route_step(facts, past, len(past), snapshot, self.rules, lambda: self.ledger.left(self.rules, now),
                           reserve, faas_enabled=self.faas_enabled, max_attempts=self.limits.max_attempts,
                           max_legs=self.limits.max_legs)
        return route, held[0] if held else None

    # -- an attempt on a pool of GPUs: the poller's waiting room

    def attempt(self, job: SimJob, route: Route, number: int, deadline: float,
                attempt: Attempt) -> Generator[Any, Any, None]:
        now = self.env.now
        task_id = task_id_for(SIM_KEY, job.job_id, number)
        entry = WaitingEntry(
            pool=route.pool, rank=WaitingEntry.rank_for(job.priority, job.at, task_id), task_id=task_id,
            job_id=job.job_id, attempt=number, service=job.service, vram_mb=job.vram_mb, compute=job.compute,
            priority=job.priority,
            arrived_at=now, wait_until=wait_bound(job.priority, route.spill_to, now, deadline),
            avoid=route.avoid_gpus, spill_to=route.spill_to)
        task = Task(job=job, entry=entry, deadline=deadline, done=self.env.event(), attempt=attempt)
        room = self.rooms[route.pool]
        bisect.insort(room, task, key=lambda t: t.entry.rank)
        self.pump(route.pool)
        if task.gpu is None and not task.done.triggered:
            self.env.process(self._wait_clock(task))
        yield task.done

    def _wait_clock(self, task: Task) -> Generator[Any, Any, None]:
        due: float | None = task.entry.wait_until
        while due is not None:
            yield self.env.timeout(max(0.0, due - self.env.now))
            if task.gpu is not None or task.done.triggered:
                return
            due = placement.wait_clock(self.env.now, task.entry.wait_until, task.deadline, task.entry.spill_to,
                                       lambda pool: self._could_start(pool, task))
        self._expire(task)

    def _could_start(self, pool: Pool, task: Task) -> bool:
        return placement.could_start(pool, lambda: not self.rooms[pool], lambda: self._available(pool), task.entry)

    def _expire(self, task: Task) -> None:
        self.rooms[task.entry.pool].remove(task)
        waited = self.env.now - task.entry.arrived_at
        task.attempt.error = ErrorType.WAIT_EXPIRED
        task.attempt.reason = f"no {task.entry.pool.value} GPU could start it within {waited:.0f} s"
        task.done.succeed()

    def _available(self, pool: Pool) -> list[Gpu]:
        now = self.env.now
        return sorted((g.gpu for g in self.sim.gpus.values() if g.spec.pool is pool
                       and g.gpu.is_available(now, self.limits.agent_stale_seconds)), key=Gpu.fit_order)

    # -- the pump (`dispatch.Dispatcher.pump`)

    def pump(self, pool: Pool) -> None:
        shunned: set[str] = set()
        room_empty = True
        for _ in range(MAX_PASSES):
            assigned, room_empty = self._assign_front(pool, shunned)
            pushed = True
            for task in assigned:
                if task.gpu.spec.gpu_id in shunned:  # its GPU just failed a push: back to the room, in place
                    self._give_back(task)
                    pushed = False
                elif not self._push(task):
                    shunned.add(task.gpu.spec.gpu_id)
                    pushed = False
            if not assigned or pushed:
                break
        if room_empty and pool in SPILLS_INTO:
            self._take_spills(pool, shunned)

    def _assign_front(self, pool: Pool, excluded: set[str]) -> tuple[list[Task], bool]:
        room = self.rooms[pool]
        if not room:
            return [], True
        # The view is the fleet's own records: taking a slot in it is the lease.
        view = placement.PoolView(g for g in self._available(pool) if g.gpu_id not in excluded)
        assigned: list[Task] = []
        front = room[:LOOK_AHEAD]
        for task in front:
            if not view:
                return assigned, False
            fitting = view.best_fit(task.entry)
            if fitting:
                room.remove(task)
                task.gpu = self.sim.gpus[fitting[0].gpu_id]
                view.take(fitting[0], task.entry)
                assigned.append(task)
        return assigned, len(front) == len(assigned) and len(front) < LOOK_AHEAD

    def _take_spills(self, pool: Pool, excluded: set[str]) -> None:
        now = self.env.now
        view = placement.PoolView(g.model_copy() for g in self._available(pool) if g.gpu_id not in excluded)
        for source in SPILLS_INTO[pool]:
            for task in self.rooms[source][:SPILL_LOOK_AHEAD]:
                if not view:
                    return
                if not placement.pulled_by(task.entry, pool, now):
                    continue
                fitting = view.best_fit(task.entry)
                if fitting:
                    self._expire(task)
                    view.take(fitting[0], task.entry)

    def _give_back(self, task: Task) -> None:
        self._release(task)
        task.gpu = None
        bisect.insort(self.rooms[task.entry.pool], task, key=lambda t: t.entry.rank)

    def _release(self, task: Task) -> None:
        gpu = task.gpu.gpu
        gpu.vram_free_mb += task.job.vram_mb
        gpu.compute_free += task.job.compute
        gpu.running -= 1

    def _push(self, task: Task) -> bool:
        gpu = task.gpu
        task.attempt.gpu_id = gpu.spec.gpu_id
        if not gpu.reachable:
            self.sim.health.push_failed(gpu)
            self._release(task)
            self.env.process(self._fail_after(task, self.sim.world.scenario.timing.push_fail_seconds,
                                              f"{gpu.spec.gpu_id} unreachable: its link is cut"))
            return False
        gpu.tasks.append(task)
        task.attempt.started = self.env.now
        self.env.process(self._run(task))
        return True

    def _fail_after(self, task: Task, seconds: float, reason: str) -> Generator[Any, Any, None]:
        yield self.env.timeout(seconds)
        task.attempt.error, task.attempt.reason = ErrorType.GPU_UNREACHABLE, reason
        task.done.succeed()

    def _run(self, task: Task) -> Generator[Any, Any, None]:
        gpu = task.gpu
        run_s = task.job.run_s / self.sim.world.scenario.timing.speed.get(gpu.spec.pool, 1.0)
        yield self.env.timeout(run_s)
        if task not in gpu.tasks:  # its agent died: failed by its liveness timer
            return
        gpu.tasks.remove(task)
        self.sim.ran(gpu, task.attempt.started, self.env.now)
        self._release(task)
        self.sim.health.task_succeeded(gpu)
        task.done.succeed()
        self.pump(gpu.spec.pool)

    def agent_died(self, gpu: SimGpu) -> None:
        due = self.sim.health.agent_died(gpu)
        lost, gpu.tasks = gpu.tasks, []
        for task in lost:
            self.env.process(self._silent(task, due))

    def _silent(self, task: Task, due: float) -> Generator[Any, Any, None]:
        yield self.env.timeout(max(0.0, due - self.env.now))
        gpu = task.gpu
        self.sim.health.went_silent(gpu)
        self.sim.ran(gpu, task.attempt.started, self.env.now)
        self._release(task)
        task.attempt.error = ErrorType.GPU_UNREACHABLE
        task.attempt.reason = f"{gpu.spec.gpu_id} went silent: its agent has not reported"
        task.done.succeed()
        self.pump(gpu.spec.pool)

    def on_usable(self, pool: Pool) -> None:
        self.pump(pool)

    def link_cut(self, gpu: SimGpu) -> None:
        """A cut tunnel blocks pushes, not the agent's calls out: running tasks go on and report."""


# ---- one run --------------------------------------------------------------------------------------


class Simulation:
    def __init__(self, world: World, workload: Workload, policy: str):
        spec = world.scenario.policies[policy]
        self.world = world
        self.workload = workload
        self.policy = policy
        self.env = simpy.Environment()
        self.gpus = {g.gpu_id: SimGpu(g) for g in world.gpus if g.pool in spec.pools}
        rules = world.rules(policy)
        self.rules = rules
        self.dispatcher = Spillway(self, rules) if spec.dispatch is Dispatch.SPILLWAY else PerGpuQueues(self, rules)
        self.health = Health(self.env, world, self.dispatcher.on_usable)
        self.results: list[Result] = []
        self.spend: list[Spend] = []
        self.busy: dict[str, list[tuple[float, float]]] = {g: [] for g in self.gpus}

    def result(self, job: SimJob) -> Result:
        result = Result(job)
        self.results.append(result)
        return result

    def spent(self, pool: Pool, usd: float) -> None:
        if usd:
            self.spend.append(Spend(self.env.now, pool, usd))

    def ran(self, gpu: SimGpu, start: float | None, end: float) -> None:
        """A task held the GPU from start to end: its utilization, and its price if the pool has one."""
        if start is None:
            return
        self.busy[gpu.spec.gpu_id].append((start, end))
        self.spent(gpu.spec.pool, (end - start) * self.rules.gpu_hour_usd.get(gpu.spec.pool, 0.0) / 3600)

    def run(self, until: float | None = None) -> Run:
        for job in self.workload.jobs:
            self.env.process(self._arrive(job))
        for outage in self.workload.outages:
            self.env.process(self._outage(outage))
        for crash in self.workload.crashes:
            if crash.gpu_id in self.gpus:
                self.env.process(self._crash(crash))
        last = max((j.at for j in self.workload.jobs), default=0.0)
        self.env.run(until=until or last + 2 * DAY)  # every job is answered by its deadline (24 h at most)
        office = tuple(g for g, gpu in self.gpus.items() if gpu.spec.pool is Pool.LOCAL)
        return Run(self.policy, self.results, self.spend, self.busy, office, self.rules, self.world.scenario.seconds)

    def _arrive(self, job: SimJob) -> Generator[Any, Any, None]:
        yield self.env.timeout(job.at)
        yield from self.dispatcher.job(job)

    def _outage(self, outage: Outage) -> Generator[Any, Any, None]:
        yield self.env.timeout(outage.start)
        cut = [self.gpus[g] for g in outage.gpu_ids if g in self.gpus]
        for gpu in cut:
            gpu.cuts += 1
            if gpu.cuts == 1:
                self.dispatcher.link_cut(gpu)
        yield self.env.timeout(outage.end - outage.start)
        for gpu in cut:  # the control plane learns it from its probes (Health), not from here
            gpu.cuts -= 1

    def _crash(self, crash: Crash) -> Generator[Any, Any, None]:
        yield self.env.timeout(crash.at)
        gpu = self.gpus[crash.gpu_id]
        gpu.deaths += 1
        if gpu.deaths == 1:
            self.dispatcher.agent_died(gpu)
        yield self.env.timeout(crash.back_at - crash.at)
        gpu.deaths -= 1
        if gpu.deaths == 0:
            self.health.agent_back(gpu)


def simulate(world: World, workload: Workload, policies: list[str] | None = None) -> list[Run]:
    """Each policy over the same workload, in the scenario's order."""
    return [Simulation(world, workload, name).run() for name in (policies or list(world.scenario.policies))]


