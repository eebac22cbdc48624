"""Small builders the tests share."""

from __future__ import annotations

import copy
import json
import math
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from botocore.exceptions import ClientError

from spillway import aws, credentials
from spillway.dispatch import Dispatcher, Limits
from spillway.fleet import Fleet
from spillway.models import AgentHeartbeat, AgentTask, Pool, PoolTask, Priority, Timer
from spillway.priorities import deadline_for
from spillway.settings import Settings
from spillway.tenancy import Tenant
from spillway.timers import MAX_DELAY_SECONDS, TimerQueue
from spillway.waiting_room import WaitingRoom

CONTROL_KEY = b"control-key-for-tests-0123456789"


def fleet_for(settings: Settings) -> Fleet:
    return Fleet(
        aws.table(settings.fleet_table), aws.table(settings.tasks_table), settings.jobs_table,
        WaitingRoom(aws.table(settings.waiting_room_table)), aws.client("dynamodb"),
        health_policy=settings.health_policy(),
    )


def beat(gpu_id: str, pool: Pool = Pool.LOCAL, vram_mb: int = 8000, slots: int = 2, **extra: Any) -> AgentHeartbeat:
    return AgentHeartbeat(
        gpu_id=gpu_id, pool=pool, url=f"https://{gpu_id}.agents.test:9000", vram_total_mb=vram_mb, slots=slots,
        services=["remove_furniture", "upscale_2x"], **extra,
    )


def dispatcher_for(settings: Settings, http: Any, clock: Any, sfn: Any = None) -> Dispatcher:
    return Dispatcher(
        fleet=fleet_for(settings), timers=TimerQueue(aws.client("sqs"), settings.timers_queue_url),
        s3=aws.client("s3"), sfn=sfn or aws.client("stepfunctions"), http=http, bucket=settings.images_bucket,
        limits=Limits(heartbeat_seconds=settings.heartbeat_seconds,
                      attempt_timeout_seconds=settings.attempt_timeout_seconds,
                      agent_stale_seconds=settings.agent_stale_seconds),
        control_key=lambda: CONTROL_KEY, clock=clock,
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


TENANT_ARN = "arn:aws:iam::123456789012:user/tenant-a"  # the caller http_event signs as, unless told
TENANT = Tenant.of_principal(TENANT_ARN)
UPLOAD_A, UPLOAD_B = (f"{TENANT.upload_prefix}{c * 32}.png" for c in "ab")  # input keys of TENANT's uploads


def http_event(method: str, path: str, body: Any = None, raw: str | None = None,
               headers: dict[str, str] | None = None, principal: str | None = TENANT_ARN,
               query: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API (payload v2) event, as the route would deliver it; `principal`: the IAM
    caller its authorizer names (None: a route without IAM auth)."""
    event: dict[str, Any] = {
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
    if principal:
        event["requestContext"]["authorizer"] = {"iam": {"accountId": "123456789012", "userArn": principal}}
    if query:
        event["rawQueryString"] = urlencode(query)
        event["queryStringParameters"] = query
    return event


# ---- the control plane's collaborators, faked (shared by the fleet, dispatch, reports and waiting-room tests)


class Clock:
    """An injected clock: time moves only when a test says so."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def job_id_for(n: int) -> str:
    """A well-formed job id (`j-` and 32 hex digits), distinct per `n`."""
    return f"j-{n:032x}"


def running_job(settings: Settings, job_id: str, attempt: int = 1, pool: Pool = Pool.LOCAL) -> None:
    """A job record as the state machine leaves it when it opens an attempt."""
    aws.table(settings.jobs_table).put_item(
        Item={"job_id": job_id, "status": "RUNNING", "attempt": attempt, "service": "remove_furniture",
              "priority": "normal", "segment": {}, "input_key": "uploads/in.png", "width": 640, "height": 480,
              "vram_mb": 2500, "created_at": "2026-01-01T00:00:00.000+00:00",
              "updated_at": "2026-01-01T00:00:00.000+00:00",
              "attempts": [{"pool": pool.value, "started_at": "t"} for _ in range(attempt)]}
    )


def pool_task(job_id: str, submitted_at: float, attempt: int = 1, pool: Pool = Pool.LOCAL,
              priority: Priority = Priority.NORMAL, vram_mb: int = 2500, service: str = "remove_furniture",
              avoid_gpus: tuple[str, ...] = (), compute: int = 0) -> PoolTask:
    """What the state machine sends to a pool queue; the deadline is the priority's, from `submitted_at`."""
    deadline = deadline_for(priority, datetime.fromtimestamp(submitted_at, UTC))
    return PoolTask(job_id=job_id, attempt=attempt, pool=pool, service=service, input_key="uploads/in.png",
                    vram_mb=vram_mb, compute=compute, priority=priority, deadline_at=deadline.isoformat(),
                    avoid_gpus=list(avoid_gpus), task_token=token_for(job_id, attempt))


def token_for(job_id: str, attempt: int = 1) -> str:
    return f"token-{job_id}-{attempt}"


class FakeTimers:
    """The timers queue in the test's time: a timer set at `now` is delivered `min(due - now, 15 min)`
    later (SQS's longest delay), by `deliver`. `lose` drops every timer in flight."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Timer]] = []  # (delivered at, timer)
        self.log: list[tuple[Timer, float]] = []  # every set, with the time it was set

    def set(self, timer: Timer, now: float) -> None:
        self.log.append((timer, now))
        self.pending.append((now + min(MAX_DELAY_SECONDS, max(0, math.ceil(timer.due_at - now))), timer))

    def lose(self) -> None:
        self.pending.clear()

    def take_due(self, now: float) -> list[Timer]:
        due = sorted((p for p in self.pending if p[0] <= now), key=lambda p: p[0])
        self.pending = [p for p in self.pending if p[0] > now]
        return [timer for _, timer in due]

    def of(self, task_id: str) -> list[Timer]:
        return [timer for _, timer in self.pending if timer.task_id == task_id]


class RecordingStepFunctions:
    """Records SendTask* calls; `gone` makes them answer as AWS does once the attempt has moved on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.gone = False

    def _record(self, name: str, kwargs: dict[str, Any]) -> None:
        if self.gone:
            raise ClientError({"Error": {"Code": "TaskTimedOut", "Message": "timed out"}}, name)
        self.calls.append((name, kwargs))

    def send_task_success(self, **kwargs: Any) -> None:
        self._record("success", kwargs)

    def send_task_failure(self, **kwargs: Any) -> None:
        self._record("failure", kwargs)

    def send_task_heartbeat(self, **kwargs: Any) -> None:
        self._record("heartbeat", kwargs)

    def failures(self) -> list[tuple[str, str]]:
        """(task token, error) of every SendTaskFailure, in order."""
        return [(call["taskToken"], call["error"]) for name, call in self.calls if name == "failure"]


class FakeAgents:
    """Stands for the agents' HTTP endpoints: records pushes, answers as told: the next answer of
    `script` if any, else the GPU's in `answers`, else `answer`."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, AgentTask]] = []
        self.signed: list[tuple[httpx.Headers, bytes]] = []  # each push's headers and body
        self.answer: int | Exception = 202
        self.answers: dict[str, int | Exception] = {}  # by GPU id
        self.script: list[int | Exception] = []  # the next pushes' answers, whichever GPU
        self.unreachable: set[str] = set()  # GPUs whose link is down for a probe (GET /readyz)
        self.not_ready: set[str] = set()  # GPUs whose agent answers a probe, not ready (its model server is down)
        self.probed: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        gpu_id = request.url.host.split(".")[0]
        if request.method == "GET":  # a reachability probe
            if gpu_id in self.unreachable:
                raise httpx.ConnectError("link down")
            self.probed.append(gpu_id)
            if gpu_id in self.not_ready:
                return httpx.Response(503, json={"status": "the model server is not ready: it answered 503"})
            return httpx.Response(200, json={"status": "ready"})
        answer = self.script.pop(0) if self.script else self.answers.get(gpu_id, self.answer)
        if isinstance(answer, Exception):
            raise answer
        self.signed.append((request.headers, request.content))
        self.pushed.append((gpu_id, AgentTask.model_validate_json(request.content)))
        return httpx.Response(answer, json={"task_id": "x", "state": "accepted"})

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))

    def task_ids(self) -> list[str]:
        return [task.task_id for _, task in self.pushed]


# ---- one stack per test module, emptied before each test

MODULE_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                      "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_METRICS_DISABLED": "true",
                      "POWERTOOLS_TRACE_DISABLED": "true"}


def module_stack(translated: dict[str, Any]) -> Iterator[Any]:
    """For a module-scoped fixture: the template's resources in mock_aws, provisioned once per module.

    conftest's `cloud` provisions the whole template for every test (about a second each); the fleet
    and dispatch tests only read and write tables, so they share one stack and empty it per test
    (`emptied`). Yields a `conftest.Cloud`.
    """
    from moto import mock_aws

    from spillway.settings import settings
    from spillway_embedded.provision import provision

    from conftest import Cloud, clear_caches

    with pytest.MonkeyPatch.context() as patch, mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
            patch.delenv(name, raising=False)
        for name, value in MODULE_ENVIRONMENT.items():
            patch.setenv(name, value)
        stack = provision(copy.deepcopy(translated), endpoint_url=None, region="us-east-1", stack_name="test")
        for name, value in stack.environment().items():
            patch.setenv(name, value)
        clear_caches()
        yield Cloud(settings=settings(), physical=dict(stack.physical_ids), stack=stack)
    clear_caches()


def emptied(cloud: Any) -> Any:
    """The module's stack with no job, GPU, task, waiting entry or budget left from an earlier test. (Timers
    are SQS messages, delayed: tests that look at timers record them rather than read the queue.)"""
    s = cloud.settings
    for name in (s.jobs_table, s.fleet_table, s.tasks_table, s.waiting_room_table, s.budget_table):
        table = aws.table(name)
        keys = [k["AttributeName"] for k in table.key_schema]
        with table.batch_writer() as batch:
            for item in table.scan(ProjectionExpression=", ".join(f"#k{i}" for i in range(len(keys))),
                                   ExpressionAttributeNames={f"#k{i}": k for i, k in enumerate(keys)})["Items"]:
                batch.delete_item(Key=item)
    return cloud


def answered(api: httpx.Client, job_ids: list[str], timeout: float = 120.0, poll_s: float = 0.3) -> dict[str, dict]:
    """Each job's view once every one is SUCCEEDED or FAILED (a client polling the job API, bounded)."""
    views: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id not in views or views[job_id]["status"] not in ("SUCCEEDED", "FAILED"):
                views[job_id] = api.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if all(v["status"] in ("SUCCEEDED", "FAILED") for v in views.values()):
            return views
        time.sleep(poll_s)
    open_jobs = {j: v["status"] for j, v in views.items() if v["status"] not in ("SUCCEEDED", "FAILED")}
    raise AssertionError(f"{len(open_jobs)} jobs not answered in {timeout}s: {open_jobs}")


def first_attempt(api: httpx.Client, job_id: str, done: str, timeout: float = 30) -> dict:
    """The job's first attempt once it has `done` ("running_at": an agent runs it; "ended_at": it ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        attempts = api.get(f"/v1/jobs/{job_id}").raise_for_status().json()["attempts"]
        if attempts and attempts[0].get(done):
            return attempts[0]
        time.sleep(0.2)
    raise AssertionError(f"{job_id}: its first attempt has no {done} after {timeout} s")


def gpu_record(stack: Any, gpu_id: str) -> dict:
    """The GPU's fleet record as stored, read from a running stack's DynamoDB (a `StackInfo`)."""
    from boto3.dynamodb.types import TypeDeserializer

    item = stack.boto3_client("dynamodb").get_item(TableName=stack.resources["FleetTable"],
                                                   Key={"gpu_id": {"S": gpu_id}}, ConsistentRead=True)["Item"]
    typed = TypeDeserializer()
    return {k: typed.deserialize(v) for k, v in item.items()}


def submit_room(api: httpx.Client) -> str:
    """Upload a small room photo and submit an EU upscale job for it (EU: never FaaS); its job id."""
    from spillway.rooms import render_room
    from spillway_embedded.client import upload

    body = {"service": "upscale_2x", "input_key": upload(api, render_room(3, 320, 240)), "segment": {"region": "eu"}}
    return api.post("/v1/jobs", json=body).raise_for_status().json()["job_id"]


def gpu_view(api: httpx.Client, gpu_id: str) -> dict:
    """The GPU as operators see it (GET /v1/fleet): health, reason, events ..."""
    return next(g for g in api.get("/v1/fleet").raise_for_status().json()["gpus"] if g["gpu_id"] == gpu_id)


def wait_for_health(api: httpx.Client, gpu_id: str, states: set[str], timeout: float = 60) -> dict:
    """The GPU's view once its health is one of `states` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        gpu = gpu_view(api, gpu_id)
        if gpu["health"] in states:
            return gpu
        if time.monotonic() > deadline:
            raise AssertionError(f"{gpu_id} is {gpu['health']} ({gpu['reason']}), not {states} after {timeout} s")
        time.sleep(0.5)


def task_id_for(job_id: str, attempt: int) -> str:
    """The task id the tests' dispatchers give a job's attempt."""
    return credentials.task_id_for(CONTROL_KEY, job_id, attempt)


def task_secret(task_id: str) -> str:
    """The secret the tests' dispatchers give a task (its reports present it)."""
    return credentials.task_secret(CONTROL_KEY, task_id)
