"""The old design, for comparison: a queue per GPU, each job on the shortest queue of the GPUs whose
worker is connected, one worker per GPU; a link that drops (or a worker that dies) fails the job it
runs and every job queued behind it."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from spillway.models import ErrorType, Pool
from spillway.routing.rules import RoutingRules
from spillway_sim.health import SimGpu
from spillway_sim.run import Attempt, Result
from spillway_sim.workload import SimJob

if TYPE_CHECKING:
    from spillway_sim.engine import Simulation


class PerGpuQueues:
    """A queue per GPU, the shortest one of a connected worker (the office's first among the shortest), one
    worker per GPU. A dropped link (or a
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
        # Between queues as short, the cheaper pool's (the rules' pool order), as Spillway goes office first:
        # by id alone, `cloud-0` < `local-0` would send an idle system's jobs to the rented GPUs.
        gpu = min(workers, key=lambda g: (self._length(g.spec.gpu_id), self._pool_rank(g.spec.pool), g.spec.gpu_id))
        self.queues[gpu.spec.gpu_id].append(result)
        self._next(gpu)

    def _pool_rank(self, pool: Pool) -> int:
        order = self.rules.pool_order
        return order.index(pool) if pool in order else len(order)

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
