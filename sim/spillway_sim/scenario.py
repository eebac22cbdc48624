"""A what-if scenario as data: the traffic, the link's outages, and the policies to compare.

A TOML file (`scenarios/default.toml` models the company), validated here so that a mistake is named
by file and field. What is not in it on purpose, each kept in its one place:
- the GPUs and the FaaS endpoint: a fleet file (`fleet_file.py`, the one `spillway dev` runs);
- prices and routing rules: `routing/rules.toml`, with the fleet's FaaS price (as the stack merges it);
  a scenario may override rules the way a deployed stack's SSM parameter does;
- the control plane's clocks (stale window, suspect window, attempts): the template's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from spillway.catalog import SERVICES
from spillway.health import HealthPolicy
from spillway.models import Pool, Priority, Segment
from spillway.routing import rules as routing_rules
from spillway_embedded.fleet_file import (
    DEFAULT_FLEET,
    FaasSettings,
    Fleet,
    FleetFileError,
    GpuSpec,
    load_fleet,
    problems,
    read_toml,
)
from spillway_embedded.template import parameter_defaults

DEFAULT_SCENARIO = Path(__file__).resolve().parent / "scenarios" / "default.toml"
DAY = 86_400.0


Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogNormal(_Strict):
    """A positive duration: its median, and the spread (sigma of its log; 0: always the median)."""

    median: float = Field(gt=0)
    sigma: float = Field(default=0.0, ge=0, le=3)


class Outages(_Strict):
    """Each office GPU's link drops on its own (a Poisson process), and the whole office's at once."""

    gpu_per_day: float = Field(default=0.0, ge=0, description="outages of one GPU's link, per GPU and day")
    gpu_minutes: LogNormal = LogNormal(median=3, sigma=1)
    office_per_day: float = Field(default=0.0, ge=0, description="outages of the whole office link, per day")
    office_minutes: LogNormal = LogNormal(median=10, sigma=1)
    at: list[tuple[NonNegative, NonNegative, list[str]]] = Field(
        default_factory=list, description="outages at fixed times: (start s, end s, GPU ids; [] = every office GPU)")

    @model_validator(mode="after")
    def _ends_after_start(self) -> Outages:
        for i, (start, end, _) in enumerate(self.at):
            if end <= start:
                raise ValueError(f"at[{i}]: the outage ends ({end:g} s) before it starts ({start:g} s)")
        return self


class Crashes(_Strict):
    """Agents that die (killed, frozen) and are restarted: noticed by the control plane after the stale window."""

    per_day: float = Field(default=0.0, ge=0, description="per GPU (office and cloud) and day")
    restart_minutes: LogNormal = LogNormal(median=3, sigma=0.5)


class RunTime(_Strict):
    """A model's run on an office GPU: base + per megapixel, times a lognormal noise of median 1."""

    base: float = Field(ge=0)
    per_megapixel: float = Field(default=0.0, ge=0)
    sigma: float = Field(default=0.0, ge=0, le=2)


class ServiceMix(_Strict):
    share: float = Field(gt=0)
    seconds: RunTime
    sizes: dict[str, Positive] = Field(min_length=1, description='image sizes "WIDTHxHEIGHT" -> share')

    @model_validator(mode="after")
    def _sizes(self) -> ServiceMix:
        for size in self.sizes:
            width, _, height = size.partition("x")
            if not (width.isdigit() and height.isdigit()):
                raise ValueError(f"size {size!r} is not WIDTHxHEIGHT")
        return self


class Segmented(_Strict):
    """A share of the traffic: its priority and segment; `service` pins it to one service."""

    share: float = Field(gt=0)
    priority: Priority = Priority.NORMAL
    region: str = "us"
    tier: str = "standard"
    service: str | None = None

    @model_validator(mode="after")
    def _segment(self) -> Segmented:
        self.segment  # noqa: B018 - validates region and tier as the API does
        return self

    @property
    def segment(self) -> Segment:
        return Segment(region=self.region, customer_tier=self.tier)

    @property
    def label(self) -> str:
        return "/".join([self.priority.value, self.region] + ([self.tier] if self.tier != "standard" else []))


class Arrivals(_Strict):
    jobs_per_day: float = Field(gt=0)
    hourly: list[NonNegative] = Field(min_length=24, max_length=24, description="relative rate by hour of day")
    bursts_per_day: float = Field(default=0.0, ge=0, description="a customer sends a whole listing at once")
    burst_jobs: int = Field(default=0, ge=0)
    burst_seconds: float = Field(default=60.0, gt=0)
    at: list[NonNegative] = Field(default_factory=list, description="fixed arrival times (s) instead of the curve")

    @model_validator(mode="after")
    def _some_traffic(self) -> Arrivals:
        if not self.at and max(self.hourly) == 0:
            raise ValueError("hourly: every hour's rate is 0")
        return self


class Dispatch(StrEnum):
    SPILLWAY = "spillway"  # the production routing policy and waiting rooms
    PER_GPU_QUEUES = "per_gpu_queues"  # the old design: a queue per GPU, shortest queue, one worker each


class PolicySpec(_Strict):
    dispatch: Dispatch = Dispatch.SPILLWAY
    pools: list[Pool] = Field(default=[Pool.LOCAL, Pool.CLOUD], description="the GPU pools it has")
    rules: dict[str, Any] = Field(default_factory=dict, description="routing rules merged over the scenario's")
    detect_seconds: float = Field(default=60.0, ge=0, description=(
        "per_gpu_queues: how long the broker takes to notice a dropped worker (RabbitMQ's heartbeat timeout); "
        "the jobs put on its queue meanwhile fail with it, unless its link is back by then"))
    description: str = ""


class Timing(_Strict):
    """What the control plane adds around a GPU's run (the state machine, the pollers, the network)."""

    leg_seconds: float = Field(default=0.15, ge=0, description="Route -> RunAttempt -> poller, per attempt")
    push_fail_seconds: float = Field(default=1.0, ge=0, description="a push through a cut link fails after this")
    heartbeat_seconds: float = Field(default=5.0, gt=0, description="an agent's beat; each probes a suspect GPU")
    speed: dict[Pool, Positive] = Field(default_factory=lambda: {Pool.CLOUD: 1.0, Pool.FAAS: 1.0},
                                     description="how much faster than an office GPU a pool runs a model")


class Scenario(_Strict):
    seed: int = 1
    days: float = Field(default=1.0, gt=0, le=31)
    fleet: str = "default"
    cloud_gpus: int | None = Field(default=None, ge=0, le=64, description="so many copies of the first cloud GPU")
    rules: dict[str, Any] = Field(default_factory=dict)
    timing: Timing = Timing()
    outages: Outages = Outages()
    crashes: Crashes = Crashes()
    services: dict[str, ServiceMix] = Field(min_length=1)
    arrivals: Arrivals
    mix: list[Segmented] = Field(min_length=1)
    policies: dict[str, PolicySpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _known(self) -> Scenario:
        unknown = sorted(set(self.services) - set(SERVICES)) + sorted(
            {m.service for m in self.mix if m.service and m.service not in SERVICES})
        if unknown:
            raise ValueError(f"no service {', '.join(map(repr, unknown))}; the services are {sorted(SERVICES)}")
        return self

    @property
    def seconds(self) -> float:
        return self.days * DAY


@dataclass(frozen=True)
class Limits:
    """The control plane's clocks, from the template's parameters (one source)."""

    max_attempts: int
    max_legs: int
    agent_stale_seconds: float
    health: HealthPolicy


@dataclass(frozen=True)
class World:
    """A scenario with everything it refers to loaded: the GPUs, the rules per policy, the clocks."""

    scenario: Scenario
    fleet: Fleet
    gpus: tuple[GpuSpec, ...]
    limits: Limits
    source: Path

    def rules(self, policy: str) -> routing_rules.RoutingRules:
        overrides = routing_rules.merged(routing_rules.merged(self.fleet.routing_overrides(), self.scenario.rules),
                                         self.scenario.policies[policy].rules)
        return routing_rules.load(overrides)

    @property
    def faas(self) -> FaasSettings | None:
        return self.fleet.faas


def load_world(path: Path = DEFAULT_SCENARIO, overrides: dict[str, Any] | None = None) -> World:
    """The scenario file with `overrides` (dotted field -> value, e.g. {"cloud_gpus": 3}) applied."""
    data = read_toml(path, "scenario file", ScenarioError)
    for dotted, value in (overrides or {}).items():
        _set(data, dotted, value)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as invalid:
        raise ScenarioError(problems(path, invalid)) from None
    fleet_path = DEFAULT_FLEET if scenario.fleet == "default" else (path.parent / scenario.fleet)
    try:
        fleet = load_fleet(fleet_path)
    except FleetFileError as bad:
        raise ScenarioError(f"{path}: fleet: {bad}") from None
    gpus = fleet.gpus()
    if scenario.cloud_gpus is not None:
        cloud = [g for g in gpus if g.pool is Pool.CLOUD]
        if not cloud and scenario.cloud_gpus:
            raise ScenarioError(f"{path}: cloud_gpus: the fleet {fleet_path} has no cloud GPU to copy")
        copies = tuple(GpuSpec(f"cloud-{i}", Pool.CLOUD, cloud[0].vram_mb, cloud[0].slots, cloud[0].services,
                               cloud[0].compute)
                       for i in range(scenario.cloud_gpus))
        gpus = tuple(g for g in gpus if g.pool is not Pool.CLOUD) + copies
    template = parameter_defaults()
    limits = Limits(max_attempts=int(template["MaxAttempts"]), max_legs=int(template["MaxLegs"]),
                    agent_stale_seconds=float(template["AgentStaleSeconds"]),
                    health=HealthPolicy(stale_seconds=float(template["AgentStaleSeconds"]),
                                        suspect_seconds=float(template["SuspectSeconds"]),
                                        probe_failures=int(template["HealthProbeFailures"]),
                                        model_errors=int(template["QuarantineAfterErrors"]),
                                        quarantine_seconds=float(template["QuarantineSeconds"]),
                                        quarantine_rounds=int(template["QuarantineRounds"])))
    unknown = sorted({g for _, _, ids in scenario.outages.at for g in ids} - {g.gpu_id for g in gpus})
    if unknown:  # else its outage would cut nothing, silently
        raise ScenarioError(f"{path}: outages.at: no GPU {', '.join(unknown)} in the fleet {fleet_path}")
    world = World(scenario=scenario, fleet=fleet, gpus=gpus, limits=limits, source=path)
    for name in scenario.policies:
        try:
            world.rules(name)
        except ValidationError as invalid:
            raise ScenarioError(f"{path}: policies.{name}.rules: {invalid}") from None
    return world


def megapixels(size: str) -> tuple[int, int, float]:
    width, _, height = size.partition("x")
    return int(width), int(height), int(width) * int(height) / 1e6


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for part in path:
        data = data.setdefault(part, {})
    data[last] = value

