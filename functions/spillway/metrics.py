"""Every metric Spillway emits, with its unit and dimensions: the one list the code emits through and the
CloudWatch dashboard in template.yaml is drawn from (`python -m spillway.dashboard`, checked by a test).

Each metric is written as its own EMF record (Powertools' provider, namespace from the template's
POWERTOOLS_METRICS_NAMESPACE), so every metric name has exactly one dimension set, the one listed
here; `emit` refuses any other. Nothing is written when there is nothing to count, and
POWERTOOLS_METRICS_DISABLED silences it all (offline, unless `spillway dev --metrics`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

from spillway.health import GpuHealth, HealthEvent
from spillway.models import JobFields, JobStatus, Pool, Priority
from spillway.waiting_room import RoomLine


class Dimension(StrEnum):
    JOB_SERVICE = "JobService"  # the job's service (remove_furniture), not Powertools' `service`
    PRIORITY = "Priority"
    POOL = "Pool"
    OUTCOME = "Outcome"  # `succeeded`, or the failure kind (ErrorType); a webhook delivery's outcome
    HEALTH = "Health"  # a GPU's health (GpuHealth)


class Metric(StrEnum):
    JOBS_SUBMITTED = "JobsSubmitted"
    JOBS_ADMITTED = "JobsAdmitted"
    JOBS_SUCCEEDED = "JobsSucceeded"
    JOBS_FAILED = "JobsFailed"
    JOBS_CANCELLED = "JobsCancelled"  # by its client: neither a success nor a failure
    WEBHOOK_DELIVERIES = "WebhookDeliveries"  # a job's end to its webhook (Outcome: delivered/failed/dropped/refused)
    TIME_TO_RESULT = "TimeToResult"  # submit to done, of a job that succeeded
    JOBS_RECONCILED = "JobsReconciled"  # open records brought in line with their ended execution
    ATTEMPTS_ROUTED = "AttemptsRouted"  # Pool `none`: the Route step ended the job
    ATTEMPTS_ENDED = "AttemptsEnded"
    TASKS_ENQUEUED = "TasksEnqueued"  # attempts that entered a waiting room
    TASKS_STARTED = "TasksStarted"  # of those, started on a GPU at once
    WAITING_ROOM_DEPTH = "WaitingRoomDepth"
    WAITING_ROOM_OLDEST_AGE = "WaitingRoomOldestAge"
    FAAS_BUDGET_SPENT = "FaasBudgetSpent"  # a job FaaS would have taken went elsewhere: the budget is spent
    FAAS_SPEND = "FaasSpendUsd"  # today's FaaS spend, settled and reserved
    FAAS_BUDGET = "FaasBudgetUsd"  # today's FaaS cap
    GPUS = "Gpus"  # GPUs by health, per pool, counted every minute (zeros too: an alarm watches healthy)
    GPU_HEALTH_TRANSITIONS = "GpuHealthTransitions"  # by the state entered
    GPUS_QUARANTINED = "GpusQuarantined"
    GPU_TIME_TO_DETECT = "GpuTimeToDetect"  # from a fault's first sign to the transition it caused


class Spec(NamedTuple):
    unit: MetricUnit
    dimensions: tuple[Dimension, ...] = ()


D = Dimension
CATALOG: dict[Metric, Spec] = {
    Metric.JOBS_SUBMITTED: Spec(MetricUnit.Count, (D.JOB_SERVICE, D.PRIORITY)),
    Metric.JOBS_ADMITTED: Spec(MetricUnit.Count, (D.PRIORITY,)),
    Metric.JOBS_SUCCEEDED: Spec(MetricUnit.Count, (D.JOB_SERVICE, D.PRIORITY)),
    Metric.JOBS_FAILED: Spec(MetricUnit.Count, (D.JOB_SERVICE, D.PRIORITY)),
    Metric.JOBS_CANCELLED: Spec(MetricUnit.Count, (D.JOB_SERVICE, D.PRIORITY)),
    Metric.WEBHOOK_DELIVERIES: Spec(MetricUnit.Count, (D.OUTCOME,)),
    Metric.TIME_TO_RESULT: Spec(MetricUnit.Seconds, (D.PRIORITY,)),
    Metric.JOBS_RECONCILED: Spec(MetricUnit.Count),
    Metric.ATTEMPTS_ROUTED: Spec(MetricUnit.Count, (D.POOL,)),
    Metric.ATTEMPTS_ENDED: Spec(MetricUnit.Count, (D.POOL, D.OUTCOME)),
    Metric.TASKS_ENQUEUED: Spec(MetricUnit.Count),
    Metric.TASKS_STARTED: Spec(MetricUnit.Count),
    Metric.WAITING_ROOM_DEPTH: Spec(MetricUnit.Count, (D.POOL, D.PRIORITY)),
    Metric.WAITING_ROOM_OLDEST_AGE: Spec(MetricUnit.Seconds, (D.POOL, D.PRIORITY)),
    Metric.FAAS_BUDGET_SPENT: Spec(MetricUnit.Count),
    Metric.FAAS_SPEND: Spec(MetricUnit.NoUnit),
    Metric.FAAS_BUDGET: Spec(MetricUnit.NoUnit),
    Metric.GPUS: Spec(MetricUnit.Count, (D.POOL, D.HEALTH)),
    Metric.GPU_HEALTH_TRANSITIONS: Spec(MetricUnit.Count, (D.POOL, D.HEALTH)),
    Metric.GPUS_QUARANTINED: Spec(MetricUnit.Count, (D.POOL,)),
    Metric.GPU_TIME_TO_DETECT: Spec(MetricUnit.Seconds, (D.POOL, D.HEALTH)),
}


def emit(metric: Metric, value: float = 1, **dimensions: str) -> None:
    """Write one metric with exactly its listed dimensions (a mismatch is a bug: ValueError)."""
    spec = CATALOG[metric]
    if set(dimensions) != set(spec.dimensions):
        raise ValueError(f"{metric} takes dimensions {[str(d) for d in spec.dimensions]}, not {sorted(dimensions)}")
    # service="": no implicit `service` dimension; the dimensions are the listed ones, nothing else.
    provider = AmazonCloudWatchEMFProvider(service="")
    provider.add_metric(name=metric.value, unit=spec.unit, value=value)
    for name in spec.dimensions:
        provider.add_dimension(name=name.value, value=str(dimensions[name]))
    provider.flush_metrics(raise_on_empty_metrics=True)


def attempt_ended(pool: Pool, outcome: str) -> None:
    """An attempt ended, once: `succeeded`, or its failure kind."""
    emit(Metric.ATTEMPTS_ENDED, Pool=pool.value, Outcome=outcome)


def gpu_health_changed(pool: Pool, event: HealthEvent) -> None:
    """A GPU's health changed: the state it entered, a quarantine, how long the fault took to detect."""
    emit(Metric.GPU_HEALTH_TRANSITIONS, Pool=pool.value, Health=event.to.value)
    if event.to is GpuHealth.QUARANTINED:
        emit(Metric.GPUS_QUARANTINED, Pool=pool.value)
    if event.detect_s is not None:
        emit(Metric.GPU_TIME_TO_DETECT, event.detect_s, Pool=pool.value, Health=event.to.value)


def gpu_census(census: dict[Pool, dict[GpuHealth, int]]) -> None:
    """GPUs by health per pool that has any, every state (a zero, not a gap: an alarm watches healthy)."""
    for pool, by_state in census.items():
        for state, count in by_state.items():
            emit(Metric.GPUS, count, Pool=pool.value, Health=state.value)


def room_gauges(pool: Pool, lines: dict[Priority, RoomLine]) -> None:
    """A pool's waiting room, every priority (an empty line is a zero, not a gap in the graph)."""
    for priority in Priority:
        line = lines.get(priority, RoomLine())
        emit(Metric.WAITING_ROOM_DEPTH, line.count, Pool=pool.value, Priority=priority.value)
        emit(Metric.WAITING_ROOM_OLDEST_AGE, line.oldest_s, Pool=pool.value, Priority=priority.value)


def job_finished(job: JobFields, status: JobStatus, now: float) -> None:
    """A job was answered: done (with its time to result), failed, or cancelled by its client."""
    by = {"JobService": job.service, "Priority": job.priority.value}
    if status is JobStatus.SUCCEEDED:
        emit(Metric.JOBS_SUCCEEDED, **by)
        emit(Metric.TIME_TO_RESULT, now - datetime.fromisoformat(job.created_at).timestamp(),
             Priority=job.priority.value)
    elif status is JobStatus.CANCELLED:
        emit(Metric.JOBS_CANCELLED, **by)
    else:
        emit(Metric.JOBS_FAILED, **by)
