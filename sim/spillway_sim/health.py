"""The simulated GPUs and today's fleet health over them.

A GPU as the control plane knows it is the production `fleet.Gpu` record (`is_healthy` decides); as
it is, a link that may be cut and an agent that may be dead. A push that cannot connect makes the GPU
suspect; while suspect each beat of its agent probes it through its link, and the first that gets
through clears it; a dead agent's GPU is stale a stale window after its last beat. `Health` holds
those transitions in one place, so that a pure fleet-health state machine (issue #8) can take them over.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import simpy

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
