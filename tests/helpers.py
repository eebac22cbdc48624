"""Small builders the tests share."""

from __future__ import annotations

import json
import uuid
from typing import Any

from spillway import aws
from spillway.dispatch import Dispatcher
from spillway.fleet import Fleet
from spillway.models import AgentHeartbeat, Pool
from spillway.settings import Settings

AGENT_KEY = "agent-key-for-tests-0123456789"


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
        agent_key=lambda: AGENT_KEY, clock=clock,
    )


class LambdaContext:
    """The attributes Powertools reads from Lambda's context."""

    function_version = "$LATEST"
    memory_limit_in_mb = 512
    aws_request_id = "test-request"

    def __init__(self, function_name: str):
        self.function_name = function_name
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


def http_event(method: str, path: str, body: Any = None, raw: str | None = None,
               headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API (payload v2) event, as the route would deliver it."""
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", **(headers or {})},
        "requestContext": {
            "http": {"method": method, "path": path, "sourceIp": "203.0.113.9", "protocol": "HTTP/1.1",
                     "userAgent": "pytest"},
            "requestId": str(uuid.uuid4()), "stage": "$default", "routeKey": f"{method} {path}",
            "accountId": "123456789012", "apiId": "api", "domainName": "api.test", "timeEpoch": 0,
        },
        "body": raw if raw is not None else (None if body is None else json.dumps(body)),
        "isBase64Encoded": False,
    }
