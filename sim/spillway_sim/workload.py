"""What happens in a scenario, drawn once per seed and shared by every policy (common random numbers):
the jobs (arrival, service, image size, run time, priority, segment), the link outages, the agent
crashes. Each has its own random stream, so a sweep of the outage rate keeps the same jobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spillway.catalog import SERVICES
from spillway.models import Pool, Priority, Segment
from spillway_sim.scenario import DAY, LogNormal, Scenario, World, megapixels

ARRIVALS, OUTAGES, CRASHES = 1, 2, 3  # the random streams


@dataclass(frozen=True)
class SimJob:
    index: int
    at: float  # seconds from the start
    service: str
    size: str
    vram_mb: int
    compute: int
    run_s: float  # the model's run on an office GPU
    priority: Priority
    segment: Segment
    label: str  # priority and segment, for the tables

    @property
    def job_id(self) -> str:
        return f"j{self.index:06d}"


@dataclass(frozen=True)
class Outage:
    start: float
    end: float
    gpu_ids: tuple[str, ...]
    office: bool  # the whole office's link


@dataclass(frozen=True)
class Crash:
    gpu_id: str
    at: float
    back_at: float


@dataclass(frozen=True)
class Workload:
    jobs: list[SimJob]
    outages: list[Outage]
    crashes: list[Crash]
    refused: int  # jobs no GPU of the fleet could ever hold: the API refuses them at submit


def draw(world: World) -> Workload:
    s = world.scenario
    jobs, refused = _jobs(s, world, np.random.default_rng([s.seed, ARRIVALS]))
    return Workload(jobs, _outages(world, np.random.default_rng([s.seed, OUTAGES])),
                    _crashes(world, np.random.default_rng([s.seed, CRASHES])), refused)


def _arrival_times(s: Scenario, rng: np.random.Generator) -> np.ndarray:
    a = s.arrivals
    if a.at:
        return np.sort(np.asarray(a.at, dtype=float))
    hourly = np.asarray(a.hourly) / np.mean(a.hourly)
    peak = a.jobs_per_day / DAY * hourly.max()
    candidates = np.sort(rng.uniform(0, s.seconds, rng.poisson(peak * s.seconds)))
    hour = ((candidates % DAY) // 3600).astype(int)
    kept = candidates[rng.uniform(0, 1, len(candidates)) < hourly[hour] / hourly.max()]  # thinning
    bursts = [start + rng.uniform(0, a.burst_seconds, a.burst_jobs)
              for start in rng.uniform(0, s.seconds, rng.poisson(a.bursts_per_day * s.days))]
    return np.sort(np.concatenate([kept, *bursts]))


def _jobs(s: Scenario, world: World, rng: np.random.Generator) -> tuple[list[SimJob], int]:
    times = _arrival_times(s, rng)
    mix = s.mix
    services = list(s.services)
    picks = rng.choice(len(mix), len(times), p=_shares([m.share for m in mix]))
    service_picks = rng.choice(len(services), len(times), p=_shares([s.services[n].share for n in services]))
    noise = rng.standard_normal(len(times))
    size_draws = rng.uniform(0, 1, len(times))
    segments = [m.segment for m in mix]
    jobs, refused = [], 0
    for i, at in enumerate(times):
        segment = mix[picks[i]]
        service = segment.service or services[service_picks[i]]
        spec = s.services[service]
        sizes = list(spec.sizes)
        size = sizes[int(np.searchsorted(np.cumsum(_shares(list(spec.sizes.values()))), size_draws[i]))]
        width, height, mp = megapixels(size)
        vram, compute = SERVICES[service].vram_mb(width, height), SERVICES[service].compute(width, height)
        if not any(service in g.services and g.vram_mb >= vram and g.compute >= compute for g in world.gpus):
            refused += 1
            continue
        run_s = (spec.seconds.base + spec.seconds.per_megapixel * mp) * float(np.exp(spec.seconds.sigma * noise[i]))
        jobs.append(SimJob(index=len(jobs), at=float(at), service=service, size=size, vram_mb=vram, compute=compute,
                           run_s=run_s,
                           priority=segment.priority, segment=segments[picks[i]], label=segment.label))
    return jobs, refused


def _shares(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array / array.sum()


def _durations(rng: np.random.Generator, spread: LogNormal, n: int, unit: float) -> np.ndarray:
    return spread.median * unit * np.exp(spread.sigma * rng.standard_normal(n))


def _outages(world: World, rng: np.random.Generator) -> list[Outage]:
    s, o = world.scenario, world.scenario.outages
    office = tuple(g.gpu_id for g in world.gpus if g.pool is Pool.LOCAL)
    found = [Outage(start, end, tuple(ids) or office, not ids) for start, end, ids in o.at]
    n = rng.poisson(o.office_per_day * s.days)
    for start, length in zip(rng.uniform(0, s.seconds, n), _durations(rng, o.office_minutes, n, 60), strict=True):
        found.append(Outage(float(start), float(start + length), office, True))
    for gpu in office:
        n = rng.poisson(o.gpu_per_day * s.days)
        for start, length in zip(rng.uniform(0, s.seconds, n), _durations(rng, o.gpu_minutes, n, 60), strict=True):
            found.append(Outage(float(start), float(start + length), (gpu,), False))
    return sorted(found, key=lambda x: (x.start, x.gpu_ids))


def _crashes(world: World, rng: np.random.Generator) -> list[Crash]:
    s, c = world.scenario, world.scenario.crashes
    found = []
    for gpu in world.gpus:
        n = rng.poisson(c.per_day * s.days)
        for at, down in zip(rng.uniform(0, s.seconds, n), _durations(rng, c.restart_minutes, n, 60), strict=True):
            found.append(Crash(gpu.gpu_id, float(at), float(at + down)))
    return sorted(found, key=lambda x: (x.at, x.gpu_id))
