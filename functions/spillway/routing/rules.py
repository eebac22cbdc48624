"""The routing rules as data: which pools in which order, what each failure kind leads to, who may
use FaaS and for how much. Loaded from `rules.toml` beside this module, with the deployed stack's
overrides (a JSON document) merged over it.
"""

from __future__ import annotations

import json
import tomllib
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spillway.faas import billing
from spillway.models import ErrorType, Pool, Priority, Segment

RULES_FILE = Path(__file__).with_name("rules.toml")


class FailureAction(StrEnum):
    FAIL_JOB = "fail_job"  # no GPU will do better: the job fails at once
    ANOTHER_GPU = "another_gpu"  # the GPU is to blame: never it again; its pool first if another can
    SAME_POOL = "same_pool"  # the GPU is not to blame: the same pool again
    NEXT_POOL = "next_pool"  # never reached a GPU: the next pool, not counted as an attempt


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentRule(Rules):
    """A FaaS-eligible segment: every field it names must match the job (absent = any)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    regions: list[str] | None = None
    tiers: list[str] | None = None
    services: list[str] | None = None
    priorities: list[Priority] | None = None
    daily_budget_usd: float | None = Field(default=None, ge=0, description="this segment's own cap per day")

    def matches(self, segment: Segment, service: str, priority: Priority) -> bool:
        return all(allowed is None or value in allowed for allowed, value in (
            (self.regions, segment.region), (self.tiers, segment.customer_tier),
            (self.services, service), (self.priorities, priority)))


class FaasRules(Rules):
    price_per_second_usd: float = Field(gt=0)
    max_seconds: int = Field(gt=5, le=3600, description="a run is stopped past this (the provider's execution timeout)")
    cold_start_seconds: float = Field(ge=0, description="billed on top of a run when a worker starts cold")
    expected_seconds: float = Field(gt=0, description="cold start plus a run, as routing expects it")
    vram_mb: int = Field(gt=0, description="the endpoint's GPU memory: a job that needs more never goes there")
    daily_budget_usd: float = Field(ge=0)
    last_resort: bool = True
    segments: list[SegmentRule] = Field(default_factory=list)

    @property
    def reservation_micro(self) -> int:
        """What one call may cost at most (a cold start and a run to its timeout): reserved before it,
        settled to the billed cost after."""
        return billing.reservation_micro(self.max_seconds + self.cold_start_seconds, self.price_per_second_usd)

    def holds(self, vram_mb: int) -> bool:
        """The endpoint's GPU could run a job that needs this much memory (one job a worker: compute is whole)."""
        return vram_mb <= self.vram_mb

    def segment_for(self, segment: Segment, service: str, priority: Priority) -> SegmentRule | None:
        return next((rule for rule in self.segments if rule.matches(segment, service, priority)), None)


class RoutingRules(Rules):
    pool_order: list[Pool] = Field(min_length=1)
    pool_failures_before_moving_on: int = Field(ge=1)
    on_failure: dict[ErrorType, FailureAction]
    gpu_hour_usd: dict[Pool, float]
    faas: FaasRules

    @model_validator(mode="after")
    def _complete(self) -> RoutingRules:
        if Pool.FAAS in self.pool_order:
            raise ValueError("faas is not in pool_order: it serves the segments of [faas] only")
        unmapped = sorted(set(ErrorType) - set(self.on_failure))
        if unmapped:
            raise ValueError(f"on_failure says nothing of {', '.join(unmapped)}")
        return self

    def action_for(self, error: ErrorType) -> FailureAction:
        return self.on_failure[error]


def load(overrides: str | dict[str, Any] | None = None) -> RoutingRules:
    """The rules file, with `overrides` (JSON text or a dict, e.g. from an SSM parameter) merged over it."""
    base = tomllib.loads(RULES_FILE.read_text())
    extra = json.loads(overrides) if isinstance(overrides, str) else (overrides or {})
    return RoutingRules.model_validate(merged(base, extra))


@cache
def default_rules() -> RoutingRules:
    return load()


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`: a table merges key by key, anything else replaces."""
    result = dict(base)
    for key, value in extra.items():
        result[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return result
