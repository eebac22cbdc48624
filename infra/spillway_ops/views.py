"""What the operator's pages show, read from a stack (see `source`): recent jobs, one job with its
execution, the fleet and its waiting rooms. Plain data; `page` renders it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from boto3.dynamodb.conditions import Key

from spillway import health
from spillway.aws import from_item, version_param
from spillway.faas.billing import MICRO
from spillway.fleet import Gpu, Task
from spillway.health import HealthRecord
from spillway.jobs import JobRecord
from spillway.models import JobStatus, JobView, Pool, Priority
from spillway.routing.rules import RoutingRules
from spillway.routing.rules import load as load_rules
from spillway.waiting_room import RoomLine
from spillway_ops.graph import Path, StateGraph, event_details, path_of
from spillway_ops.source import Source

RESULT_URL_SECONDS = 900
ROOM_POOLS = (Pool.LOCAL, Pool.CLOUD)  # FaaS has no waiting room: its provider queues
# Jobs not admitted yet, by priority; and where messages go that keep failing (an alarm watches each).
QUEUES = {"intake high": "IntakeHighQueue", "intake normal": "IntakeNormalQueue", "intake low": "IntakeLowQueue",
          "intake dead letters": "IntakeDeadLetterQueue", "pool dead letters": "PoolDeadLetterQueue"}


@dataclass(frozen=True)
class JobLine:
    job: JobView

    @property
    def pools_tried(self) -> list[str]:
        return [a.pool.value for a in self.job.attempts]

    @property
    def total_s(self) -> float:
        """Submit to answer, or to now while open."""
        end = _epoch(self.job.finished_at) if self.job.finished_at else time.time()
        return max(0.0, end - _epoch(self.job.created_at))


def recent_jobs(source: Source, status: JobStatus | None = None, limit: int = 50) -> list[JobLine]:
    """The newest jobs (of one status, or all), newest first, from the jobs table's by-status index."""
    statuses = [status] if status else list(JobStatus)
    items: list[dict[str, Any]] = []
    table = source.table("JobsTable")
    for s in statuses:
        items += table.query(IndexName="by-status", KeyConditionExpression=Key("status").eq(s.value),
                             ScanIndexForward=False, Limit=limit)["Items"]
    items.sort(key=lambda i: i["created_at"], reverse=True)
    return [JobLine(JobRecord.model_validate(from_item(item)).view()) for item in items[:limit]]


@dataclass(frozen=True)
class Event:
    at: datetime
    kind: str
    state: str
    detail: str


@dataclass(frozen=True)
class JobDetail:
    job: JobView
    path: Path | None  # None: its execution has not started (the job waits in an intake queue)
    events: list[Event]
    input_url: str


def job_detail(source: Source, job_id: str) -> JobDetail | None:
    record = source.jobs.get(job_id)
    if record is None:
        return None
    s3, bucket = source.client("s3"), source.resources["ImagesBucket"]

    def presigned(key: str, version: str | None = None) -> str:
        return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key, **version_param(version)},
                                         ExpiresIn=RESULT_URL_SECONDS)

    job = record.view(presigned(record.result_key) if record.status is JobStatus.SUCCEEDED and record.result_key
                      else None)
    history = execution_history(source, job_id)
    return JobDetail(job=job, path=path_of(history, state_graph(source).types) if history else None,
                     events=timeline(history), input_url=presigned(record.input_key, record.input_version))


_graphs: dict[str, StateGraph] = {}  # by state machine ARN: its definition changes only with a deployment


def state_graph(source: Source) -> StateGraph:
    arn = source.state_machine_arn
    if arn not in _graphs:
        definition = source.client("stepfunctions").describe_state_machine(stateMachineArn=arn)["definition"]
        _graphs[arn] = StateGraph.of(json.loads(definition))
    return _graphs[arn]


def execution_history(source: Source, job_id: str) -> list[dict[str, Any]]:
    """Every event of the job's execution, oldest first; none if it has not started."""
    sfn = source.client("stepfunctions")
    try:
        pages = sfn.get_paginator("get_execution_history").paginate(executionArn=source.execution_arn(job_id))
        return [event for page in pages for event in page["events"]]
    except sfn.exceptions.ExecutionDoesNotExist:
        return []


@dataclass(frozen=True)
class GpuLine:
    gpu: Gpu
    health: HealthRecord  # as it is now: what time alone did applied (a silent GPU is down at once)
    tasks: list[Task]
    heartbeat_age_s: float


@dataclass(frozen=True)
class QueueLine:
    name: str
    visible: int
    in_flight: int


@dataclass(frozen=True)
class FleetView:
    gpus: list[GpuLine]
    rooms: dict[Pool, dict[Priority, RoomLine]]
    queues: list[QueueLine]
    faas_spent_usd: float
    faas_reserved_usd: float
    faas_budget_usd: float  # the day's cap, by the stack's rules now


def fleet_view(source: Source) -> FleetView:
    now = time.time()
    fleet = source.fleet
    open_tasks = [t for pool in ROOM_POOLS for t in fleet.open_tasks(pool)]  # GPU tasks (FaaS's are not)
    gpus = []
    for gpu in fleet.all_gpus():
        now_health = health.tick(gpu.health, now, gpu.last_heartbeat, fleet.health_policy)
        gpus.append(GpuLine(gpu, now_health, [t for t in open_tasks if t.gpu_id == gpu.gpu_id],
                            now - gpu.last_heartbeat))
    gpus.sort(key=lambda line: (list(Pool).index(line.gpu.pool), line.gpu.gpu_id))
    rooms = {pool: fleet.waiting_room.summary(pool, now) for pool in ROOM_POOLS}
    budget = source.budget.view()
    return FleetView(gpus, rooms, queue_lines(source), budget.settled_micro / MICRO, budget.reserved_micro / MICRO,
                     stack_rules(source).faas.daily_budget_usd)


def stack_rules(source: Source) -> RoutingRules:
    """The rules the stack routes by now: its SSM parameter's overrides over the rules file, as the
    functions read them (the cap the budget's last reservation was held to may be an older one)."""
    overrides = source.client("ssm").get_parameter(Name=source.resources["RoutingRulesParameter"])["Parameter"]
    try:
        return load_rules(overrides["Value"])
    except ValueError:  # the functions keep their last valid rules; the file's are the best guess here
        return load_rules()


def queue_lines(source: Source) -> list[QueueLine]:
    sqs, lines = source.client("sqs"), []
    for name, logical in QUEUES.items():
        counts = sqs.get_queue_attributes(QueueUrl=source.resources[logical], AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        lines.append(QueueLine(name, int(counts["ApproximateNumberOfMessages"]),
                               int(counts["ApproximateNumberOfMessagesNotVisible"])))
    return lines


def _epoch(moment: str) -> float:
    return datetime.fromisoformat(moment).timestamp()


def timeline(history: list[dict[str, Any]]) -> list[Event]:
    """The history as lines, each naming the state it happened in (a TaskFailed names none of its own)."""
    events, state = [], ""
    for event in history:
        details = event_details(event)
        state = details.get("name", state)
        detail = " ".join(str(details[k])[:300] for k in ("error", "cause") if details.get(k))
        events.append(Event(at=event["timestamp"], kind=event["type"], state=state, detail=detail))
    return events
