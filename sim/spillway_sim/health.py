"""The simulated GPUs and the production fleet-health state machine (`spillway.health`) over them.

A GPU as the control plane knows it is the production `fleet.Gpu` record (its `health` decides); as
it is, a link that may be cut and an agent that may be dead. `Health` applies the production
transitions: a push that cannot connect makes the GPU suspect; while it is suspect or down each beat of
its agent probes it through its link: one that gets through makes it healthy (from suspect) or puts it
on probation (from down: one task at a time until one succeeds), N that do not, or suspect too long,
make it down; a dead agent's GPU is down a stale window after its last beat. Models never fail here:
nothing is quarantined.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import simpy

from spillway import health
from spillway.fleet import Gpu
from spillway.models import Pool
from spillway_embedded.fleet_file import GpuSpec
from spillway_sim.scenario import World

if TYPE_CHECKING:
    from spillway_sim.engine import Task


class SimGpu:
    """A GPU as the control plane knows it (`gpu`, the production record) and as it is (link, agent)."""

    def __init__(self, spec: GpuSpec):
        self.spec = spec
        # Its agent beats all along (never stale) until it dies; then its last beat is when it died.
        self.gpu = Gpu(gpu_id=spec.gpu_id, pool=spec.pool, url=f"sim://{spec.gpu_id}", vram_total_mb=spec.vram_mb,
                       vram_free_mb=spec.vram_mb, compute_total=spec.compute, compute_free=spec.compute,
                       slots=spec.slots, services=list(spec.services), last_heartbeat=math.inf)
        self.cuts = 0  # outages covering its link now
        self.deaths = 0  # crashes of its agent not yet restarted
        self.probing = False
        self.tasks: list[Task] = []  # running on it (a list: the same order in every process)

    @property
    def reachable(self) -> bool:
        return self.cuts == 0 and self.deaths == 0


class Health:
    """The production health transitions (`spillway.health`) on the production `Gpu` record."""

    def __init__(self, env: simpy.Environment, world: World, on_usable: Callable[[Pool], None]):
        self.env = env
        self.policy = world.limits.health
        self.beat_s = world.scenario.timing.heartbeat_seconds
        self.on_usable = on_usable  # a GPU can take work again: pump its pool

    def push_failed(self, gpu: SimGpu) -> None:
        gpu.gpu.health = health.push_failed(gpu.gpu.health, self.env.now, "its link is cut")
        self._probe_on_beats(gpu)

    def _probe_on_beats(self, gpu: SimGpu) -> None:
        if not gpu.probing:
            gpu.probing = True
            self.env.process(self._probe(gpu))

    def _probe(self, gpu: SimGpu) -> Generator[Any, Any, None]:
        """Each beat of its agent probes it through its link (a dead agent does not beat)."""
        while health.needs_probe(gpu.gpu.health, draining=False):
            yield self.env.timeout(self.beat_s)
            if gpu.deaths:
                continue
            now = self.env.now
            ticked = health.tick(gpu.gpu.health, now, gpu.gpu.last_heartbeat, self.policy)
            gpu.gpu.health = health.probed(ticked, gpu.cuts == 0, now, self.policy)
            if gpu.gpu.health.accepts_work(gpu.gpu.running):
                self.on_usable(gpu.spec.pool)
        gpu.probing = False

    def agent_died(self, gpu: SimGpu) -> float:
        """When it is down and its tasks fail: a stale window (and a second) after its last beat."""
        gpu.gpu.last_heartbeat = self.env.now - (self.env.now % self.beat_s)
        return gpu.gpu.last_heartbeat + self.policy.stale_seconds + 1

    def went_silent(self, gpu: SimGpu) -> None:
        gpu.gpu.health = health.tick(gpu.gpu.health, self.env.now, gpu.gpu.last_heartbeat, self.policy)

    def agent_back(self, gpu: SimGpu) -> None:
        """Its agent beats again: time's transitions first (silent -> down), then a probe each beat."""
        self.went_silent(gpu)
        gpu.gpu.last_heartbeat = math.inf
        self._probe_on_beats(gpu)

    def task_succeeded(self, gpu: SimGpu) -> None:
        """A canary on probation that succeeds makes its GPU healthy."""
        gpu.gpu.health = health.task_ended(gpu.gpu.health, True, 0, None, self.env.now, self.policy)
