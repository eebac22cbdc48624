"""The fleet as data: the GPUs the embedded stack runs agents for, and the FaaS endpoint it stands up.

A TOML file (`fleets/default.toml` is the company's world; `spillway dev --fleet FILE` takes
another), validated here so that a mistake is named by file and field, not found at run time:

    [pools.local]                 # a pool of GPUs, by the control plane's pool name: local or cloud
    slots = 2                     # tasks each GPU runs at once, unless a GPU says otherwise
    services = ["remove_furniture", "upscale_2x"]   # what its GPUs run (default: every service)
    gpus = [{ id = "local-0", vram_mb = 6000 }, { id = "local-4", vram_mb = 12000, slots = 3, compute = 150 },
            { id = "local-5", vram_mb = 8000, model_server = true },   # see below
            { id = "local-6", vram_mb = 8000, model_url = "http://127.0.0.1:8000" }]

    [faas]                        # optional: the stand-in FaaS provider (see faas_provider.py)
    endpoint_id = "spillway-dev"
    price_per_second_usd = 0.00076
    vram_mb = 80000               # its workers' GPU memory: a job that needs more never goes there

A GPU's agent runs the built-in demo model, unless it fronts a model server (`spillway agent --model-url`):
`model_server = true` starts the stand-in (`python -m spillway.agent.model_server`) beside the agent;
`model_url` names a server of your own, which the stack neither starts nor upsets (no model chaos there).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from spillway.catalog import GPU_COMPUTE, SERVICES
from spillway.models import Pool

DEFAULT_FLEET = Path(__file__).resolve().parent / "fleets" / "default.toml"
# The pools of GPUs with agents, by the control plane's names (Pool); FaaS is [faas]: a provider, not GPUs.
GpuPool = Literal["local", "cloud"]


class FleetFileError(ValueError):
    """A fleet file that cannot be used; the message names the file and the field."""


def _known_service(name: str) -> str:
    if name not in SERVICES:
        raise ValueError(f"no service {name!r}; the services are {sorted(SERVICES)}")
    return name


ServiceName = Annotated[str, AfterValidator(_known_service)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # a typo is an error, not a silent default


class GpuEntry(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    vram_mb: int = Field(gt=0)
    compute: int = Field(default=GPU_COMPUTE, gt=0, le=10 * GPU_COMPUTE)  # SM% of a reference GPU
    slots: int | None = Field(default=None, ge=1, le=64)  # the pool's otherwise
    services: list[ServiceName] | None = Field(default=None, min_length=1)  # the pool's otherwise
    model_server: bool = False  # the stack starts the stand-in model server and the agent fronts it
    model_url: HttpUrl | None = None  # the agent fronts this model server, which the stack does not start

    @model_validator(mode="after")
    def _one_model(self) -> GpuEntry:
        if self.model_server and self.model_url is not None:
            raise ValueError("model_server = true starts a model server for the agent; model_url names one already "
                             "running: not both")
        return self


class PoolEntry(_Strict):
    slots: int = Field(default=2, ge=1, le=64)
    services: list[ServiceName] = Field(default_factory=lambda: list(SERVICES), min_length=1)
    gpus: list[GpuEntry] = Field(min_length=1)


class FaasSettings(_Strict):
    """The pay-per-request GPU service, as the stand-in provider runs it and the control plane budgets it."""

    endpoint_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
    concurrency: int = Field(default=30, ge=1, le=1000, description="workers: jobs run at once")
    cold_start_seconds: float = Field(default=2.0, ge=0, le=600, description="a cold worker's start, billed")
    idle_seconds: float = Field(default=60.0, ge=0, description="a worker idle longer is cold again")
    price_per_second_usd: float = Field(gt=0, le=1)
    vram_mb: int = Field(default=80_000, gt=0, description="its workers' GPU memory")
    # The endpoint's execution timeout: over 5 s, as RunPod requires of a job's executionTimeout.
    max_seconds: float = Field(default=120.0, gt=5, le=3600, description="the longest a run may execute")

    @property
    def max_billed_seconds(self) -> int:
        """The most one request can cost, in billed seconds: a cold start and a run to the timeout."""
        return math.ceil(self.cold_start_seconds + self.max_seconds)


@dataclass(frozen=True)
class GpuSpec:
    """One GPU as the stack launches its agent: the file's entry with its pool's defaults applied."""

    gpu_id: str
    pool: Pool
    vram_mb: int
    slots: int
    services: tuple[str, ...]
    compute: int = GPU_COMPUTE
    model_server: bool = False  # the stand-in model server runs beside its agent
    model_url: str | None = None  # its agent fronts this model server

    @property
    def built_in_model(self) -> bool:
        return not self.model_server and self.model_url is None


class Fleet(_Strict):
    pools: dict[GpuPool, PoolEntry] = Field(min_length=1)
    faas: FaasSettings | None = None
    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _unique_gpu_ids(self) -> Fleet:
        seen: dict[str, str] = {}
        for pool, entry in self.pools.items():
            for gpu in entry.gpus:
                if gpu.id in seen:
                    raise ValueError(f"pools.{pool}: GPU id {gpu.id!r} is already in pools.{seen[gpu.id]}")
                seen[gpu.id] = pool
        return self

    @property
    def source(self) -> Path | None:
        return self._source

    def routing_overrides(self) -> dict[str, Any]:
        """The routing rules' FaaS prices and limits are the fleet's (one source: this file): merged over the
        rules by the embedded stack and by the simulator."""
        if self.faas is None:
            return {}
        return {"faas": {"price_per_second_usd": self.faas.price_per_second_usd,
                         "max_seconds": int(self.faas.max_seconds), "cold_start_seconds": self.faas.cold_start_seconds,
                         "vram_mb": self.faas.vram_mb}}

    def gpus(self) -> tuple[GpuSpec, ...]:
        return tuple(
            GpuSpec(gpu.id, Pool(pool), gpu.vram_mb, gpu.slots or entry.slots, tuple(gpu.services or entry.services),
                    gpu.compute, gpu.model_server, str(gpu.model_url).rstrip("/") if gpu.model_url else None)
            for pool, entry in self.pools.items() for gpu in entry.gpus
        )


def load_fleet(path: Path) -> Fleet:
    data = read_toml(path, "fleet file", FleetFileError)
    try:
        fleet = Fleet.model_validate(data)
    except ValidationError as invalid:
        raise FleetFileError(problems(path, invalid)) from None
    fleet._source = path
    return fleet


def read_toml(path: Path, what: str, error: type[ValueError]) -> dict[str, Any]:
    """A TOML file's data; one that is missing, unreadable or not TOML raises `error`, naming the file."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as unreadable:
        raise error(f"{path}: cannot be read: {unreadable}") from None
    except tomllib.TOMLDecodeError as bad:
        raise error(f"{path}: not valid TOML: {bad}") from None


def problems(path: Path, invalid: ValidationError) -> str:
    """Every problem pydantic found in the file, one a line, each by its field."""
    lines = "\n".join(f"  {_where(e['loc'])}{_what(e)}" for e in invalid.errors())
    return f"{path}: {invalid.error_count()} problem(s):\n{lines}"


def _where(loc: tuple[int | str, ...]) -> str:
    """('pools', 'local', 'gpus', 2, 'vram_mb') -> 'pools.local.gpus[2].vram_mb: '; a whole-file check names its own."""
    where = ""
    for part in loc:
        if isinstance(part, int):
            where += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for a dict key's own error
            where += f".{part}" if where else part
    return f"{where}: " if where else ""


def _what(error: Any) -> str:
    value = error.get("input")
    if error["type"] in ("value_error", "extra_forbidden") or not isinstance(value, str | int | float | bool):
        return error["msg"].removeprefix("Value error, ")  # our own messages name the value
    return f"{error['msg']} (got {value!r})"
