"""A job's record never contradicts its execution: the reconciler closes what the execution could not."""

from __future__ import annotations

import json
import time

from spillway import aws
from spillway.handlers import sweeper
from spillway.handlers.wiring import admission, tenant_limits
from spillway.jobs import JobStore
from spillway.models import DispatchInput, JobStatus
from spillway.reconcile import GRACE_SECONDS, INTAKE_GRACE_SECONDS, Reconciler

from conftest import Cloud
from helpers import LambdaContext
from test_state_machine import admit, next_task, submitted_job


def reconciler(cloud: Cloud, later_by: float = 0.0) -> Reconciler:
    return Reconciler(JobStore(aws.table(cloud.settings.jobs_table)), cloud.client("stepfunctions"), admission(),
                      tenant_limits(), clock=lambda: time.time() + later_by)


def contradicted_job(cloud: Cloud) -> tuple[DispatchInput, str]:
    """A job whose execution failed to write its end: the record moves under the execution, so
    CloseAttempt's fence fails, the execution fails on it, and the record is left RUNNING."""
    job = submitted_job(cloud)
    arn = admit(job)
    task = next_task(cloud, "LocalQueue")
    aws.table(cloud.settings.jobs_table).update_item(
        Key={"job_id": job.job_id}, UpdateExpression="SET attempt = :n", ExpressionAttributeValues={":n": 3})
    cloud.client("stepfunctions").send_task_failure(taskToken=task["task_token"], error="Spillway.ModelError",
                                                    cause="crashed")
    assert cloud.wait_for_execution(job.job_id)["status"] == "FAILED"
    assert cloud.job_item(job.job_id)["status"] == "RUNNING", "the contradiction the reconciler is for"
    return job, arn


def test_a_lost_closing_write_is_brought_in_line_with_the_failed_execution(cloud: Cloud, finished: list) -> None:
    job, _ = contradicted_job(cloud)
    assert reconciler(cloud).reconcile_id(job.job_id) == "reconciled"
    assert finished == [(job.job_id, JobStatus.FAILED)], "counted in JobsFailed, as a job the Route step ends"
    item = cloud.job_item(job.job_id)
    assert item["status"] == "FAILED"
    assert item["error"].startswith("Spillway.NoAttemptLeft"), item["error"]
    assert item["finished_at"]
    assert reconciler(cloud).reconcile_id(job.job_id) == "final", "once"


def test_an_execution_that_succeeded_without_its_record_written_leaves_the_job_succeeded(
        cloud: Cloud, finished: list) -> None:
    """A successful attempt ends the execution; the job's SUCCEEDED is the agent report's write, before
    it tells the execution. Lost (here: never made), the execution's output still says where the result is."""
    job = submitted_job(cloud)
    admit(job)
    task = next_task(cloud, "LocalQueue")
    cloud.client("stepfunctions").send_task_success(taskToken=task["task_token"], output=json.dumps(
        {"task_id": "t-1", "gpu_id": "local-0", "result_key": "results/x.png", "duration_ms": 5}))
    assert cloud.wait_for_execution(job.job_id)["status"] == "SUCCEEDED"
    assert cloud.job_item(job.job_id)["status"] == "RUNNING", "the contradiction"
    assert reconciler(cloud).reconcile_id(job.job_id) == "reconciled"
    item = cloud.job_item(job.job_id)
    assert (item["status"], item["result_key"]) == ("SUCCEEDED", "results/x.png")
    assert finished == [(job.job_id, JobStatus.SUCCEEDED)], "counted here: no report counted it"


def test_the_sweep_reconciles_every_open_job_past_the_grace_period(cloud: Cloud) -> None:
    job, _ = contradicted_job(cloud)
    assert reconciler(cloud).sweep() == {}, "within the grace period nothing is touched"
    assert reconciler(cloud, later_by=GRACE_SECONDS + 1).sweep() == {"reconciled": 1}
    assert cloud.job_item(job.job_id)["status"] == "FAILED"


def test_a_running_execution_is_left_alone(cloud: Cloud) -> None:
    job = submitted_job(cloud)
    admit(job)
    next_task(cloud, "LocalQueue")
    assert reconciler(cloud).reconcile_id(job.job_id) == "running"
    assert cloud.job_item(job.job_id)["status"] == "RUNNING"


def test_the_sweep_admits_again_a_job_whose_intake_message_was_lost(cloud: Cloud) -> None:
    job = submitted_job(cloud)  # recorded and its intake message taken off the queue, never admitted
    assert reconciler(cloud).sweep() == {}, "within the grace period nothing is touched"
    assert reconciler(cloud, later_by=GRACE_SECONDS + 1).sweep() == {"no_execution": 1}, "an intake backlog"
    assert reconciler(cloud, later_by=INTAKE_GRACE_SECONDS + 1).sweep() == {"admitted": 1}
    task = next_task(cloud, "LocalQueue")
    assert task["job_id"] == job.job_id, "its execution runs"


def test_an_execution_status_change_event_reconciles_that_job(cloud: Cloud) -> None:
    job, arn = contradicted_job(cloud)
    event = {
        "version": "0", "id": "e-1", "detail-type": sweeper.EXECUTION_STATUS_CHANGE, "source": "aws.states",
        "account": "123456789012", "time": "2026-11-26T00:00:00Z", "region": "us-east-1", "resources": [arn],
        "detail": {"executionArn": arn, "stateMachineArn": cloud.settings.dispatch_state_machine_arn,
                   "name": job.job_id, "status": "FAILED"},
    }
    assert sweeper.handler(event, LambdaContext("sweeper")) == {"jobs": {"reconciled": 1}}
    assert cloud.job_item(job.job_id)["status"] == "FAILED"


def test_a_stopped_execution_is_a_cancelled_job(cloud: Cloud) -> None:
    """An execution stopped by an operator (or a cancel whose own write was lost) ends its job CANCELLED."""
    job = submitted_job(cloud)
    arn = admit(job)
    next_task(cloud, "LocalQueue")
    cloud.client("stepfunctions").stop_execution(executionArn=arn, error="Ops", cause="stopped by hand")
    assert cloud.wait_for_execution(job.job_id)["status"] == "ABORTED"
    assert reconciler(cloud).reconcile_id(job.job_id) == "reconciled"
    assert cloud.job_item(job.job_id)["status"] == "CANCELLED"
