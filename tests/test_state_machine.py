"""The dispatch state machine, run by moto's interpreter: the path a job takes and what it records."""

from __future__ import annotations

import json
import time
from datetime import datetime

from spillway import aws
from spillway.handlers.wiring import admission
from spillway.intake import Intake
from spillway.jobs import JobStore
from spillway.models import DispatchInput, JobRequest
from spillway.rooms import render_room

from conftest import Cloud


def admit(job: DispatchInput) -> str:
    return admission().start(job)


def submitted_job(cloud: Cloud) -> DispatchInput:
    """A job as the API records it, ready to be admitted."""
    s3 = aws.client("s3")
    s3.put_object(Bucket=cloud.settings.images_bucket, Key="uploads/" + "a" * 32 + ".png", Body=render_room(3))
    intake = Intake(cloud.settings, JobStore(aws.table(cloud.settings.jobs_table)), s3, aws.client("sqs"))
    accepted = intake.submit(JobRequest(service="remove_furniture", input_key="uploads/" + "a" * 32 + ".png"))
    (message,) = cloud.queue_messages("IntakeNormalQueue")
    return DispatchInput.model_validate(message | {"job_id": accepted.job_id})


def next_task(cloud: Cloud, queue: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = cloud.queue_messages(queue)
        if messages:
            return messages[0]
        time.sleep(0.05)
    raise AssertionError(f"no task reached {queue} in {timeout}s")


def test_local_success_is_recorded_on_the_job(cloud: Cloud) -> None:
    job = submitted_job(cloud)
    execution_arn = admit(job)
    assert admit(job) == execution_arn, "a repeated start of the same job finds the same execution"
    sfn = cloud.client("stepfunctions")
    executions = sfn.list_executions(stateMachineArn=cloud.settings.dispatch_state_machine_arn)["executions"]
    assert [e["executionArn"] for e in executions] == [execution_arn]

    task = next_task(cloud, "LocalQueue")
    assert (task["job_id"], task["attempt"], task["pool"]) == (job.job_id, 1, "local")
    assert (task["priority"], task["deadline_at"]) == ("normal", job.deadline_at), "what the waiting room needs"
    cloud.client("stepfunctions").send_task_success(
        taskToken=task["task_token"],
        output=json.dumps({"task_id": "t-1", "gpu_id": "local-0", "result_key": "results/x.png", "duration_ms": 5}),
    )

    assert cloud.wait_for_execution(job.job_id)["status"] == "SUCCEEDED"
    assert admit(job) == execution_arn, "a late redelivery after the end starts nothing"
    item = cloud.job_item(job.job_id)
    assert item["status"] == "SUCCEEDED"
    assert item["result_key"] == "results/x.png"
    assert item["finished_at"] >= item["created_at"]
    assert [(a["pool"], a["outcome"], a["gpu_id"]) for a in item["attempts"]] == [("local", "succeeded", "local-0")]


def test_failed_local_attempt_falls_back_to_cloud(cloud: Cloud) -> None:
    job = submitted_job(cloud)
    admit(job)
    sfn = cloud.client("stepfunctions")
    local = next_task(cloud, "LocalQueue")
    sfn.send_task_failure(taskToken=local["task_token"], error="Spillway.GpuUnreachable", cause="tunnel down")

    remote = next_task(cloud, "CloudQueue")
    assert (remote["attempt"], remote["pool"]) == (2, "cloud")
    sfn.send_task_success(
        taskToken=remote["task_token"],
        output=json.dumps({"task_id": "t-2", "gpu_id": "cloud-0", "result_key": "results/y.png", "duration_ms": 5}),
    )
    assert cloud.wait_for_execution(job.job_id)["status"] == "SUCCEEDED"
    item = cloud.job_item(job.job_id)
    assert [(a["pool"], a["outcome"]) for a in item["attempts"]] == [("local", "failed"), ("cloud", "succeeded")]
    assert item["attempts"][0]["error"] == "Spillway.GpuUnreachable"
    assert item["attempt"] == 2


def test_bad_input_fails_the_job_without_another_attempt(cloud: Cloud) -> None:
    job = submitted_job(cloud)
    admit(job)
    local = next_task(cloud, "LocalQueue")
    cloud.client("stepfunctions").send_task_failure(
        taskToken=local["task_token"], error="Spillway.BadInput", cause="not an image"
    )
    assert cloud.wait_for_execution(job.job_id)["status"] == "FAILED"
    item = cloud.job_item(job.job_id)
    assert item["status"] == "FAILED"
    assert item["error"] == "Spillway.BadInput"
    assert len(item["attempts"]) == 1
    assert cloud.queue_messages("CloudQueue") == []


def test_a_wait_past_the_office_bound_spills_to_the_cloud(cloud: Cloud) -> None:
    """The waiting room fails a local task whose wait bound passed with WaitExpired: the job goes on to the cloud."""
    job = submitted_job(cloud)
    admit(job)
    cloud.client("stepfunctions").send_task_failure(
        taskToken=next_task(cloud, "LocalQueue")["task_token"], error="Spillway.WaitExpired",
        cause="no local GPU could start it within 30 s (normal priority)")
    remote = next_task(cloud, "CloudQueue")
    assert (remote["attempt"], remote["pool"]) == (2, "cloud")
    assert cloud.job_item(job.job_id)["attempts"][0]["error"] == "Spillway.WaitExpired"


def test_the_wait_for_a_gpu_is_not_bounded_by_a_step_functions_heartbeat(cloud: Cloud) -> None:
    """A Try* state has no HeartbeatSeconds (it would count the wait in the queue); its timeout is a
    backstop reaching past the job's deadline."""
    definition = json.loads(cloud.client("stepfunctions").describe_state_machine(
        stateMachineArn=cloud.settings.dispatch_state_machine_arn)["definition"])
    for name in ("TryLocal", "TryCloud"):
        state = definition["States"][name]
        assert "HeartbeatSeconds" not in state and "HeartbeatSecondsPath" not in state, name
        assert state["TimeoutSecondsPath"] == "$.limits.task_timeout_seconds"
    job = submitted_job(cloud)
    deadline_in = datetime.fromisoformat(job.deadline_at).timestamp() - time.time()
    assert admission().limits(job).task_timeout_seconds >= deadline_in + cloud.settings.attempt_timeout_seconds - 1


def test_every_aws_integration_retries_transient_errors(cloud: Cloud) -> None:
    definition = json.loads(cloud.client("stepfunctions").describe_state_machine(
        stateMachineArn=cloud.settings.dispatch_state_machine_arn)["definition"])
    for name, state in definition["States"].items():
        if state["Type"] != "Task":
            continue
        retried = {error for retry in state.get("Retry", []) for error in retry["ErrorEquals"]}
        assert retried, f"{name} has no Retry"
        assert not retried & {"States.ALL", "States.TaskFailed", "DynamoDB.ConditionalCheckFailedException"}, \
            f"{name} must not retry what is not transient"


def test_both_pools_failing_fails_the_job_with_the_last_reason(cloud: Cloud) -> None:
    job = submitted_job(cloud)
    admit(job)
    sfn = cloud.client("stepfunctions")
    sfn.send_task_failure(taskToken=next_task(cloud, "LocalQueue")["task_token"], error="Spillway.ModelError")
    sfn.send_task_failure(taskToken=next_task(cloud, "CloudQueue")["task_token"], error="Spillway.OutputUpload")
    assert cloud.wait_for_execution(job.job_id)["status"] == "FAILED"
    item = cloud.job_item(job.job_id)
    assert (item["status"], item["error"]) == ("FAILED", "Spillway.OutputUpload")
    assert [a["outcome"] for a in item["attempts"]] == ["failed", "failed"]
