"""The simulated world (SimPy): GPUs behind links that drop, agents that die, a FaaS provider, and a
dispatcher per policy. Simulated time is seconds from the start; nothing here sleeps.

Spillway's policy runs the production code: each leg of a job asks `routing.policy.decide` over a
`FleetSnapshot` of `fleet.Gpu` records and a `FaasBudget`, with the scenario's `RoutingRules`; an
attempt waits in its pool's room ranked by `WaitingEntry.rank_for` (priority with aging), bounded
by `priorities.wait_bound`, and is placed by `placement` (best fit, spills pulled by the next pool,
the wait clock), as the pollers do. What stands in for AWS is only the plumbing: a list per room,
the GPU records in memory, the budget's counters.

Fleet health is today's (`fleet.Gpu.is_healthy` decides): a push that cannot connect fails its
attempt after `push_fail_seconds` and makes the GPU suspect; while suspect its agent's beats probe
it through its link and the first that gets through clears it; a dead agent's GPU is stale a stale
window after its last beat, and its tasks fail `GpuUnreachable` then. `Health` holds those
transitions in one place, so that a pure fleet-health state machine can take them over.

The old design: a queue per GPU, each job on the shortest queue of the GPUs whose worker is
connected, one worker per GPU; a link that drops (or a worker that dies) fails the job it runs and
every job queued behind it.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

from spillway import placement
from spillway.dispatch import LOOK_AHEAD, MAX_PASSES, SPILL_LOOK_AHEAD, task_id_for
from spillway.faas.billing import micro_for, seconds_for
from spillway.fleet import Gpu
from spillway.models import ErrorType, Pool
from spillway.priorities import PRIORITY_CLASSES, SPILLS_INTO, wait_bound
from spillway.routing.policy import FaasBudget, JobFacts, PastAttempt, Route, RouteAction
from spillway.routing.router import budget_left, faas_caps, fleet_snapshot, route_step
from spillway.routing.rules import RoutingRules
from spillway.waiting_room import WaitingEntry
from spillway_embedded.fleet_file import GpuSpec
from spillway_sim.scenario import DAY, Dispatch, World
from spillway_sim.workload import Crash, Outage, SimJob, Workload

MICRO = 1_000_000


@dataclass
class Attempt:
    pool: Pool
    gpu_id: str | None
    error: ErrorType | None
    reason: str | None = None
    started: float | None = None  # on a GPU (or a FaaS worker)
    ended: float | None = None


@dataclass
class Result:
    """One job's end, as `GET /v1/jobs/{id}` would tell it."""

    job: SimJob
    succeeded: bool = False
    finished_at: float | None = None
    reason: str | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def pool(self) -> Pool | None:
        return self.attempts[-1].pool if self.succeeded else None

    @property
    def latency(self) -> float | None:
        return self.finished_at - self.job.at if self.finished_at is not None else None


@dataclass(frozen=True)
class Spend:
    at: float
    pool: Pool
    usd: float


@dataclass
class Run:
    """What one policy did with the workload."""

    policy: str
    results: list[Result]
    spend: list[Spend]
    busy: dict[str, list[tuple[float, float]]]  # gpu id -> intervals it ran a task (office and cloud)
    rules: RoutingRules
    seconds: float


# ---- the fleet ------------------------------------------------------------------------------------


class SimGpu:
    """A GPU as the control plane knows it (`gpu`, the production record) and as it is (link, agent)."""

    def __init__(self, spec: GpuSpec):
        self.spec = spec
        # Its agent beats all along (never stale) until it dies; then its last beat is when it died.
        self.gpu = Gpu(gpu_id=spec.gpu_id, pool=spec.pool, url=f"sim://{spec.gpu_id}", vram_total_mb=spec.vram_mb,
                       vram_free_mb=spec.vram_mb, slots=spec.slots, services=list(spec.services),
                       last_heartbeat=math.inf)
        self.cuts = 0  # outages covering its link now
        self.deaths = 0  # crashes of its agent not yet restarted
        self.probing = False
        self.tasks: list[Task] = []  # running on it (a list: the same order in every process)

    @property
    def reachable(self) -> bool:
        return self.cuts == 0 and self.deaths == 0


class Health:
    """Today's fleet-health transitions, on the production `Gpu` record: suspect after a failed push,
    cleared by a probe that gets through, stale while the agent is dead."""

    def __init__(self, env: simpy.Environment, world: World, on_usable: Callable[[Pool], None]):
        self.env = env
        self.suspect_s = world.limits.suspect_seconds
        self.stale_s = world.limits.agent_stale_seconds
        self.beat_s = world.scenario.timing.heartbeat_seconds
        self.on_usable = on_usable  # a GPU can take work again: pump its pool

    def push_failed(self, gpu: SimGpu) -> None:
        gpu.gpu.suspect_until = self.env.now + self.suspect_s
        if not gpu.probing:
            gpu.probing = True
            self.env.process(self._probe(gpu))

    def _probe(self, gpu: SimGpu) -> Generator[Any, Any, None]:
        """Each beat of its agent probes it through its link (a dead agent does not beat)."""
        while gpu.gpu.suspect_until > 0:
            yield self.env.timeout(self.beat_s)
            if gpu.deaths:
                continue
            if gpu.cuts == 0:
                gpu.gpu.suspect_until = 0
                self.on_usable(gpu.spec.pool)
            else:
                gpu.gpu.suspect_until = self.env.now + self.suspect_s
        gpu.probing = False

    def agent_died(self, gpu: SimGpu) -> float:
        """When its tasks fail: a stale window (and a second) after its last beat."""
        gpu.gpu.last_heartbeat = self.env.now - (self.env.now % self.beat_s)
        return gpu.gpu.last_heartbeat + self.stale_s + 1

    def agent_back(self, gpu: SimGpu) -> None:
        gpu.gpu.last_heartbeat = math.inf
        self.on_usable(gpu.spec.pool)  # a beat after silence: its pool is pumped


# ---- Spillway -------------------------------------------------------------------------------------


@dataclass(eq=False)
class Task:
    """An attempt on a pool of GPUs: in its room, then on a GPU."""

    job: SimJob
    entry: WaitingEntry
    deadline: float
    done: simpy.Event
    gpu: SimGpu | None = None
    attempt: Attempt | None = None


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

    # -- a job's execution: the state machine's loop of Route and Try*

    def job(self, job: SimJob) -> Generator[Any, Any, None]:
        result = self.sim.result(job)
        timing = self.sim.world.scenario.timing
        facts = JobFacts(service=job.service, priority=job.priority, segment=job.segment, vram_mb=job.vram_mb,
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
        task_id = task_id_for(job.job_id, number)
        entry = WaitingEntry(
            pool=route.pool, rank=WaitingEntry.rank_for(job.priority, job.at, task_id), task_id=task_id,
            job_id=job.job_id, attempt=number, service=job.service, vram_mb=job.vram_mb, priority=job.priority,
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
        return placement.could_start(pool, lambda: not self.rooms[pool], lambda: self._available(pool),
                                     task.job.service, task.job.vram_mb, task.entry.avoid)

    def _expire(self, task: Task) -> None:
        self.rooms[task.entry.pool].remove(task)
        waited = self.env.now - task.entry.arrived_at
        task.attempt.error = ErrorType.WAIT_EXPIRED
        task.attempt.reason = f"no {task.entry.pool.value} GPU could start it within {waited:.0f} s"
        task.done.succeed()

    def _available(self, pool: Pool) -> list[Gpu]:
        now = self.env.now
        return sorted((g.gpu for g in self.sim.gpus.values() if g.spec.pool is pool
                       and g.gpu.is_available(now, self.limits.agent_stale_seconds)), key=lambda g: g.best_fit)

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
        gpus = {g.gpu_id: g for g in self._available(pool) if g.gpu_id not in excluded}
        assigned: list[Task] = []
        front = room[:LOOK_AHEAD]
        for task in front:
            if not gpus:
                return assigned, False
            fitting = placement.best_fit(task.entry, gpus.values())
            if fitting:
                room.remove(task)
                task.gpu = self.sim.gpus[fitting[0].gpu_id]
                placement.take_slot(gpus, fitting[0], task.job.vram_mb)
                assigned.append(task)
        return assigned, len(front) == len(assigned) and len(front) < LOOK_AHEAD

    def _take_spills(self, pool: Pool, excluded: set[str]) -> None:
        now = self.env.now
        gpus = {g.gpu_id: g.model_copy() for g in self._available(pool) if g.gpu_id not in excluded}
        for source in SPILLS_INTO[pool]:
            for task in self.rooms[source][:SPILL_LOOK_AHEAD]:
                if not gpus:
                    return
                if not placement.pulled_by(task.entry, pool, now):
                    continue
                fitting = placement.best_fit(task.entry, gpus.values())
                if fitting:
                    self._expire(task)
                    placement.take_slot(gpus, fitting[0], task.job.vram_mb)

    def _give_back(self, task: Task) -> None:
        self._release(task)
        task.gpu = None
        bisect.insort(self.rooms[task.entry.pool], task, key=lambda t: t.entry.rank)

    def _release(self, task: Task) -> None:
        gpu = task.gpu.gpu
        gpu.vram_free_mb += task.job.vram_mb
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


# ---- the old design -------------------------------------------------------------------------------


class PerGpuQueues:
    """A queue per GPU, the shortest one of a connected worker, one worker per GPU. A dropped link (or a
    dead worker) fails the job it runs; the broker notices `detect_seconds` later, and fails every job
    queued behind it meanwhile (unless the link is back by then)."""

    def __init__(self, sim: Simulation, rules: RoutingRules):
        self.sim = sim
        self.env = sim.env
        self.rules = rules
        self.detect_s = sim.world.scenario.policies[sim.policy].detect_seconds
        self.queues: dict[str, deque[Result]] = {g: deque() for g in sim.gpus}
        self.running: dict[str, Result | None] = dict.fromkeys(sim.gpus)
        self.lost_at: dict[str, float] = dict.fromkeys(sim.gpus, -math.inf)

    def job(self, job: SimJob) -> Generator[Any, Any, None]:
        result = self.sim.result(job)
        yield self.env.timeout(self.sim.world.scenario.timing.leg_seconds)
        workers = [g for g in self.sim.gpus.values() if self._connected(g) and job.service in g.spec.services
                   and g.spec.vram_mb >= job.vram_mb]
        if not workers:
            result.finished_at, result.reason = self.env.now, "no connected worker could run it"
            return
        gpu = min(workers, key=lambda g: (self._length(g.spec.gpu_id), g.spec.gpu_id))
        self.queues[gpu.spec.gpu_id].append(result)
        self._next(gpu)

    def _connected(self, gpu: SimGpu) -> bool:
        """As the broker sees it: a dropped worker counts until it notices."""
        return gpu.reachable or self.env.now < self.lost_at[gpu.spec.gpu_id] + self.detect_s

    def _length(self, gpu_id: str) -> int:
        return len(self.queues[gpu_id]) + (self.running[gpu_id] is not None)

    def _next(self, gpu: SimGpu) -> None:
        gpu_id = gpu.spec.gpu_id
        if self.running[gpu_id] is not None or not self.queues[gpu_id] or not gpu.reachable:
            return
        result = self.running[gpu_id] = self.queues[gpu_id].popleft()
        attempt = Attempt(pool=gpu.spec.pool, gpu_id=gpu_id, error=None, started=self.env.now)
        result.attempts.append(attempt)
        self.env.process(self._run(gpu, result, attempt))

    def _run(self, gpu: SimGpu, result: Result, attempt: Attempt) -> Generator[Any, Any, None]:
        yield self.env.timeout(result.job.run_s / self.sim.world.scenario.timing.speed.get(gpu.spec.pool, 1.0))
        if attempt.error is not None:
            return  # its worker dropped meanwhile: failed then
        self.sim.ran(gpu, attempt.started, self.env.now)
        attempt.ended = result.finished_at = self.env.now
        result.succeeded = True
        self.running[gpu.spec.gpu_id] = None
        self._next(gpu)

    def _dropped(self, gpu: SimGpu, why: str) -> None:
        gpu_id = gpu.spec.gpu_id
        self.lost_at[gpu_id] = self.env.now
        result = self.running[gpu_id]
        if result is not None:
            attempt = result.attempts[-1]
            self.sim.ran(gpu, attempt.started, self.env.now)
            attempt.error, attempt.ended = ErrorType.GPU_UNREACHABLE, self.env.now
            result.finished_at, result.reason = self.env.now, f"{gpu_id}'s worker dropped ({why}) while running it"
            self.running[gpu_id] = None
        self.env.process(self._noticed(gpu, why))

    def _noticed(self, gpu: SimGpu, why: str) -> Generator[Any, Any, None]:
        yield self.env.timeout(self.detect_s)
        gpu_id = gpu.spec.gpu_id
        if gpu.reachable:  # back before the broker noticed: the worker goes on with its queue
            self._next(gpu)
            return
        for result in self.queues[gpu_id]:
            result.finished_at, result.reason = self.env.now, f"{gpu_id}'s worker dropped ({why}) with it queued"
        self.queues[gpu_id].clear()

    def link_cut(self, gpu: SimGpu) -> None:
        self._dropped(gpu, "its link dropped")

    def agent_died(self, gpu: SimGpu) -> None:
        self._dropped(gpu, "it died")

    def on_usable(self, pool: Pool) -> None:
        """A worker that reconnects takes new jobs; those queued when it dropped failed with it."""


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
        return Run(self.policy, self.results, self.spend, self.busy, self.rules, self.world.scenario.seconds)

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


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
