"""What one policy did with a workload: each job's attempts and end, the spend, the GPUs' busy time."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from spillway.models import ErrorType, Pool
from spillway.routing.rules import RoutingRules
from spillway_sim.workload import SimJob


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
    office_gpus: tuple[str, ...]  # the ids of the office's GPUs (of this policy's pools)
    rules: RoutingRules
    seconds: float


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
