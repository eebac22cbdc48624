"""Small builders the tests share."""

from __future__ import annotations

from typing import Any

from spillway import aws
from spillway.dispatch import Dispatcher
from spillway.fleet import Fleet
from spillway.models import AgentHeartbeat, Pool
from spillway.settings import Settings


def fleet_for(settings: Settings) -> Fleet:
    return Fleet(
        aws.table(settings.fleet_table), aws.table(settings.tasks_table), settings.jobs_table, aws.client("dynamodb")
    )


def beat(gpu_id: str, pool: Pool = Pool.LOCAL, vram_mb: int = 8000, **extra: Any) -> AgentHeartbeat:
    return AgentHeartbeat(
        gpu_id=gpu_id, pool=pool, url=f"http://{gpu_id}.agents.test:9000", vram_total_mb=vram_mb,
        services=["remove_furniture", "upscale_2x"], **extra,
    )


def dispatcher_for(settings: Settings, http: Any, clock: Any) -> Dispatcher:
    return Dispatcher(
        fleet=fleet_for(settings), s3=aws.client("s3"), sfn=aws.client("stepfunctions"), http=http,
        bucket=settings.images_bucket, heartbeat_seconds=settings.heartbeat_seconds,
        attempt_timeout_seconds=settings.attempt_timeout_seconds, agent_stale_seconds=settings.agent_stale_seconds,
        clock=clock,
    )
