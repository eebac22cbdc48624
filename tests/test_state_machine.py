"""The dispatch state machine, run by moto's interpreter: the path a job takes and what it records."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from spillway import aws
from spillway.handlers.wiring import admission, tenant_limits
from spillway.intake import Intake
from spillway.jobs import JobStore
from spillway.models import DispatchInput, JobRequest, JobStatus, Pool
from spillway.rooms import render_room

from conftest import Cloud
from helpers import TENANT, UPLOAD_A, LambdaContext, beat, fleet_for


def admit(job: DispatchInput) -> str:
    arn = admission().start(job)
    assert arn, "the first route opened an attempt"
    return arn


def register(cloud: Cloud, *gpus: tuple[str, Pool]) -> None:
    """GPUs as their agents' first heartbeats register them: the routing step routes to what it sees."""
    fleet = fleet_for(cloud.settings)
    for gpu_id, pool in gpus:
        fleet.heartbeat(beat(gpu_id, pool, vram_mb=24_000), now=time.time())


def ran_on(cloud: Cloud, job_id: str, gpu_id: str) -> None:
    """What the pool's dispatcher writes when it assigns the attempt to a GPU (see Fleet.assign)."""
    item = cloud.job_item(job_id)
    aws.table(cloud.settings.jobs_table).update_item(
        Key={"job_id": job_id}, UpdateExpression=f"SET attempts[{item['attempt'] - 1}].gpu_id = :gpu",
        ExpressionAttributeValues={":gpu": gpu_id})


def succeed(cloud: Cloud, task: dict, gpu_id: str, result_key: str) -> None:
    """What the agent's report does with a success (see TaskReports.result): the job's record first, then the
    execution told, which ends it."""
    assert JobStore(aws.table(cloud.settings.jobs_table)).succeed(
        task["job_id"], task["attempt"], result_key, gpu_id, datetime.now(UTC).isoformat(timespec="milliseconds"))
    cloud.client("stepfunctions").send_task_success(taskToken=task["task_token"], output=json.dumps(
        {"task_id": "t-1", "gpu_id": gpu_id, "result_key": result_key, "duration_ms": 5}))


OFFICE_AND_CLOUD = (("local-0", Pool.LOCAL), ("local-1", Pool.LOCAL), ("cloud-0", Pool.CLOUD))


def executions(cloud: Cloud) -> list[dict]:
    return cloud.client("stepfunctions").list_executions(
        stateMachineArn=cloud.settings.dispatch_state_machine_arn)["executions"]


def tenant_slots(cloud: Cloud) -> set[str]:
    """The jobs in flight the tenant's item holds (see spillway.limits)."""
    item = aws.table(cloud.settings.tenants_table).get_item(Key={"tenant": TENANT.tenant_id}).get("Item") or {}
    return set(item.get("in_flight") or ())


def submitted_job(cloud: Cloud, **request: str) -> DispatchInput:
    """A job as the API records it, ready to be admitted, and a fleet (two office GPUs, one cloud) to route to."""
    register(cloud, *OFFICE_AND_CLOUD)
    s3 = aws.client("s3")
    s3.put_object(Bucket=cloud.settings.images_bucket, Key=UPLOAD_A, Body=render_room(3))
    intake = Intake(cloud.settings, JobStore(aws.table(cloud.settings.jobs_table)), s3, aws.client("sqs"),
                    limits=tenant_limits())
    accepted = intake.submit(JobRequest(service="remove_furniture", input_key=UPLOAD_A, **request), TENANT)
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
    assert [e["executionArn"] for e in executions(cloud)] == [execution_arn]

    task = next_task(cloud, "LocalQueue")
    assert (task["job_id"], task["attempt"], task["pool"]) == (job.job_id, 1, "local")
    assert (task["spill_to"], task["faas_segment"]) == ("cloud", None), "one body for every pool's consumer"
    assert (task["priority"], task["deadline_at"]) == ("normal", job.deadline_at), "what the waiting room needs"
    assert task["avoid_gpus"] == []
    succeed(cloud, task, "local-0", "results/x.png")

    assert cloud.wait_for_execution(job.job_id)["status"] == "SUCCEEDED"
    assert admission().start(job) is None, "a late redelivery after the end starts nothing"
    entered = [e["stateEnteredEventDetails"]["name"] for e in sfn.get_execution_history(executionArn=execution_arn)[
        "events"] if e["type"].endswith("StateEntered")]
    assert entered == ["RunAttempt"], "a job that succeeds first time costs one state transition"
    item = cloud.job_item(job.job_id)
    assert item["status"] == "SUCCEEDED"
    assert item["result_key"] == "results/x.png"
    assert item["finished_at"] >= item["created_at"]
    assert [(a["pool"], a["outcome"], a["gpu_id"]) for a in item["attempts"]] == [("local", "succeeded", "local-0")]
    assert item["attempts"][0]["route"] == "local: first choice", "the routing step says why it went there"


def test_an_unreachable_office_gpu_sends_the_job_to_another_office_gpu(cloud: Cloud) -> None:
    job = submitted_job(cloud)
    admit(job)
    sfn = cloud.client("stepfunctions")
    first = next_task(cloud, "LocalQueue")
    ran_on(cloud, job.job_id, "local-0")
    sfn.send_task_failure(taskToken=first["task_token"], error="Spillway.GpuUnreachable", cause="tunnel down")

    second = next_task(cloud, "LocalQueue")
    assert (second["attempt"], second["pool"], second["avoid_gpus"]) == (2, "local", ["local-0"])
    ran_on(cloud, job.job_id, "local-1")
    sfn.send_task_failure(taskToken=second["task_token"], error="Spillway.GpuUnreachable", cause="tunnel down too")

    third = next_task(cloud, "CloudQueue")
    assert (third["attempt"], third["pool"]) == (3, "cloud"), "two office GPUs failed it: the office is left"
    succeed(cloud, third, "cloud-0", "results/y.png")
    assert cloud.wait_for_execution(job.job_id)["status"] == "SUCCEEDED"
    item = cloud.job_item(job.job_id)
    assert [(a["pool"], a["outcome"]) for a in item["attempts"]] == [
        ("local", "failed"), ("local", "failed"), ("cloud", "succeeded")]
    assert item["attempts"][0]["error"] == "Spillway.GpuUnreachable"
    assert json.loads(item["attempts"][1]["failure"])["Cause"] == "tunnel down too"


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
    assert item["error"] == "BadInput: not an image"
    assert len(item["attempts"]) == 1
    assert cloud.queue_messages("CloudQueue") == []


def test_a_wait_past_the_office_bound_spills_to_the_cloud_without_counting(cloud: Cloud) -> None:
    """The waiting room fails a local task whose wait bound passed with WaitExpired: the job goes on to
    the cloud, and the spill is not one of its 3 attempts."""
    job = submitted_job(cloud)
    admit(job)
    cloud.client("stepfunctions").send_task_failure(
        taskToken=next_task(cloud, "LocalQueue")["task_token"], error="Spillway.WaitExpired",
        cause="no local GPU could start it within 30 s (normal priority)")
    remote = next_task(cloud, "CloudQueue")
    assert (remote["attempt"], remote["pool"]) == (2, "cloud")
    attempt = cloud.job_item(job.job_id)["attempts"][0]
    assert (attempt["outcome"], attempt["error"]) == ("spilled", "Spillway.WaitExpired")


def test_the_wait_for_a_gpu_is_not_bounded_by_a_step_functions_heartbeat(cloud: Cloud) -> None:
    """RunAttempt has no HeartbeatSeconds (it would count the wait in the queue); its timeout is a
    backstop reaching past the job's deadline."""
    definition = json.loads(cloud.client("stepfunctions").describe_state_machine(
        stateMachineArn=cloud.settings.dispatch_state_machine_arn)["definition"])
    state = definition["States"]["RunAttempt"]
    assert "HeartbeatSeconds" not in state and "HeartbeatSecondsPath" not in state
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


def test_three_failed_attempts_fail_the_job_with_every_reason(cloud: Cloud, finished: list) -> None:
    job = submitted_job(cloud, webhook_url="https://example.com/hook")
    admit(job)
    sfn = cloud.client("stepfunctions")
    for queue, gpu_id, error, cause in (("LocalQueue", "local-0", "Spillway.ModelError", "crashed"),
                                        ("LocalQueue", "local-1", "Spillway.ModelError", "crashed again"),
                                        ("CloudQueue", "cloud-0", "Spillway.OutputUpload", "S3 said 503")):
        task = next_task(cloud, queue)
        ran_on(cloud, job.job_id, gpu_id)
        sfn.send_task_failure(taskToken=task["task_token"], error=error, cause=cause)
    assert cloud.wait_for_execution(job.job_id)["status"] == "FAILED"
    item = cloud.job_item(job.job_id)
    assert item["status"] == "FAILED"
    for part in ("3 attempts failed", "local/local-0: ModelError (crashed)", "local/local-1", "crashed again",
                 "cloud/cloud-0: OutputUpload (S3 said 503)"):
        assert part in item["error"]
    assert [a["outcome"] for a in item["attempts"]] == ["failed", "failed", "failed"]
    assert finished == [(job.job_id, JobStatus.FAILED)], "the Route step's end, counted once"
    assert cloud.queue_messages("WebhookQueue") == [{"job_id": job.job_id}], "and told"


def test_a_job_no_gpu_can_ever_run_fails_at_admission_with_why(cloud: Cloud, finished: list) -> None:
    """A first route that ends the job answers it at admission, through the one place a route ends a job
    (its record, its metric, its webhook): no execution is started for it."""
    job = submitted_job(cloud, webhook_url="https://example.com/hook")  # every GPU has 24 GB: it needs more
    aws.table(cloud.settings.jobs_table).update_item(
        Key={"job_id": job.job_id}, UpdateExpression="SET vram_mb = :big", ExpressionAttributeValues={":big": 60_000})
    assert admission().start(job) is None
    item = cloud.job_item(job.job_id)
    assert item["status"] == "FAILED" and "60000 MB" in item["error"] and item["attempts"] == []
    assert item["finished_at"]
    assert finished == [(job.job_id, JobStatus.FAILED)], "counted once"
    assert cloud.queue_messages("WebhookQueue") == [{"job_id": job.job_id}], "its webhook told"
    assert executions(cloud) == []
    assert tenant_slots(cloud) == set(), "its slot given back: no execution will end to give it back"
    assert admission().start(job) is None and finished == [(job.job_id, JobStatus.FAILED)], "a redelivery: nothing"


def test_a_routing_step_that_fails_fails_the_job_with_its_error(cloud: Cloud, monkeypatch, finished: list) -> None:
    """The state machine's Route step failing past its retries (a bug, unreadable rules): RoutingFailed
    writes the job FAILED, never left open, and its end is counted and told as every other end is."""
    from spillway.routing.router import Router


    route = Router.route

    def broken_after_the_first(self: Router, job_id: str, after: int, fleet=None):
        if after:
            raise RuntimeError("the routing rules cannot be read")
        return route(self, job_id, after, fleet)

    monkeypatch.setattr(Router, "route", broken_after_the_first)
    job = submitted_job(cloud, webhook_url="https://example.com/hook")
    admit(job)
    ran_on(cloud, job.job_id, "local-0")
    cloud.client("stepfunctions").send_task_failure(
        taskToken=next_task(cloud, "LocalQueue")["task_token"], error="Spillway.ModelError", cause="crashed")
    execution = cloud.wait_for_execution(job.job_id)
    assert (execution["status"], execution.get("error")) == ("FAILED", "Spillway.JobFailed")
    item = cloud.job_item(job.job_id)
    assert item["status"] == "FAILED", "never left RUNNING"
    assert item["error"].startswith("the routing step failed") and "cannot be read" in item["error"]
    assert item["finished_at"]
    assert finished == [(job.job_id, JobStatus.FAILED)], "counted once"
    assert cloud.queue_messages("WebhookQueue") == [{"job_id": job.job_id}], "its webhook told"


def test_routing_failed_ends_only_an_open_job(cloud: Cloud, finished: list) -> None:
    """RoutingFailed's ask (the route function, with why) ends an open job once; a job that ended meanwhile
    (a cancel, say) is left as it is, uncounted (its execution then ends NoAttemptLeft, see FailedHere)."""
    from spillway.handlers import route

    job = submitted_job(cloud)
    failure = {"job_id": job.job_id, "reason": "the routing step failed: {}"}
    context = LambdaContext("RouteFunction")
    assert route.handler(failure, context) == {"failed": True}
    assert route.handler(failure, context) == {"failed": False}, "ended already"
    assert finished == [(job.job_id, JobStatus.FAILED)], "counted once"
    assert cloud.job_item(job.job_id)["error"] == "the routing step failed: {}"


def intake_record(job: DispatchInput, receives: int) -> dict:
    """The job's intake message as the admit function's SQS event source delivers it, on its `receives`-th receive."""
    return {"messageId": f"m-{receives}", "receiptHandle": "r", "body": job.model_dump_json(),
            "attributes": {"ApproximateReceiveCount": str(receives)}, "messageAttributes": {},
            "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:intake",
            "awsRegion": "us-east-1"}


def test_admission_that_cannot_route_lets_the_message_come_again_then_fails_the_job(cloud: Cloud, monkeypatch,
                                                                                    finished: list) -> None:
    """A routing that raises at admission is a batch item failure (the intake message comes again); on its
    last receive (AdmissionTries, the queues' maxReceiveCount) the job fails with why, not dead-lettered."""
    from spillway.handlers import admit as admit_handler
    from spillway.routing.router import Router

    def broken(self: Router, job_id: str, after: int, fleet=None):
        raise RuntimeError("the fleet table cannot be read")

    monkeypatch.setattr(Router, "route", broken)
    job = submitted_job(cloud)
    tries = cloud.settings.intake_max_receives
    queue = cloud.client("sqs").get_queue_attributes(QueueUrl=cloud.settings.intake_queue_urls[job.priority],
                                                     AttributeNames=["RedrivePolicy"])["Attributes"]
    assert json.loads(queue["RedrivePolicy"])["maxReceiveCount"] == tries, "one source of truth: AdmissionTries"
    context = LambdaContext("AdmitFunction")
    for receive in range(1, tries):
        with pytest.raises(BatchProcessingError):  # Powertools' answer when every record of a batch failed
            admit_handler.handler({"Records": [intake_record(job, receive)]}, context)
        assert cloud.job_item(job.job_id)["status"] == "QUEUED", "its message comes again"
    answer = admit_handler.handler({"Records": [intake_record(job, tries)]}, context)
    assert answer == {"batchItemFailures": []}, "answered: nothing to dead-letter"
    item = cloud.job_item(job.job_id)
    assert item["status"] == "FAILED" and "admission could not start it" in item["error"]
    assert "the fleet table cannot be read" in item["error"]
    assert executions(cloud) == []
    assert finished == [(job.job_id, JobStatus.FAILED)], "counted, as every end is"
    assert tenant_slots(cloud) == set(), "its slot given back"


def test_an_admission_batch_reads_the_fleet_once_and_counts_its_own_jobs_ahead(cloud: Cloud, monkeypatch) -> None:
    """A burst of submits is admitted in batches: the batch's routes share one read of the fleet, and each job
    it routes is counted in its pool's room, so the jobs past the free slots are routed as waiting, as they
    would be if each had read the fleet after the others had entered the room."""
    from spillway.fleet import Fleet
    from spillway.handlers import admit as admit_handler

    first = submitted_job(cloud)  # two office GPUs of two slots each: four start now, the rest wait
    jobs = [first] + [DispatchInput.model_validate(first.model_dump() | {"job_id": f"j-{n:032x}"}) for n in range(5)]
    for job in jobs[1:]:
        aws.table(cloud.settings.jobs_table).put_item(Item=cloud.job_item(first.job_id) | {"job_id": job.job_id})
    reads = []
    all_gpus = Fleet.all_gpus
    monkeypatch.setattr(Fleet, "all_gpus", lambda self: reads.append(1) or all_gpus(self))

    records = [intake_record(job, 1) | {"messageId": f"m-{n}"} for n, job in enumerate(jobs)]
    assert admit_handler.handler({"Records": records}, LambdaContext("AdmitFunction")) == {"batchItemFailures": []}
    assert len(reads) == 1, "one fleet read for the batch"
    routes = [cloud.job_item(job.job_id)["attempts"][0]["route"] for job in jobs]
    assert routes == ["local: first choice"] * 4 + ["local: first choice; it waits for a GPU"] * 2

    admit_handler.handler({"Records": [intake_record(jobs[0], 2)]}, LambdaContext("AdmitFunction"))
    assert len(reads) == 1, "a redelivery finds its attempt opened: no read"


def test_a_route_on_a_batch_s_fleet_read_keeps_its_own_clock(cloud: Cloud, monkeypatch) -> None:
    """The batch's GPUs and rooms are shared, not its clock: a job whose deadline passed since the batch read
    the fleet ends (no attempt that could only expire)."""
    from spillway.handlers.wiring import router
    from spillway.routing.policy import RouteAction

    job = submitted_job(cloud)
    now = time.time()
    aws.table(cloud.settings.jobs_table).update_item(
        Key={"job_id": job.job_id}, UpdateExpression="SET deadline_at = :soon",
        ExpressionAttributeValues={":soon": datetime.fromtimestamp(now + 5, UTC).isoformat()})
    fleet = router().shared_fleet()
    assert fleet.snapshot().now < now + 5
    monkeypatch.setattr(router(), "_clock", lambda: now + 10)
    route = router().route(job.job_id, after=0, fleet=fleet)
    assert route.action is RouteAction.FAIL and "deadline" in route.reason
    assert cloud.job_item(job.job_id)["status"] == "FAILED"


def test_routing_rules_that_do_not_validate_are_ignored_for_the_last_valid_ones(cloud: Cloud) -> None:
    from spillway.handlers import wiring
    from spillway.routing.rules import default_rules

    ssm = cloud.client("ssm")
    name = cloud.settings.routing_rules_parameter
    ssm.put_parameter(Name=name, Value='{"faas": {"daily_budget_usd": 3}}', Overwrite=True)
    assert wiring.routing_rules().faas.daily_budget_usd == 3
    ssm.put_parameter(Name=name, Value='{"pool_order": ["faas"]}', Overwrite=True)
    wiring.parameters.clear_caches()
    assert wiring.routing_rules().faas.daily_budget_usd == 3, "the last valid rules stay"
    assert default_rules().faas.daily_budget_usd != 3


def test_a_retried_routing_opens_no_second_attempt(cloud: Cloud) -> None:
    """Admission (after 0) and the Route step open the attempt they route: one redelivered or retried finds
    it opened and answers its route again, as decided."""
    from spillway.handlers.wiring import router

    job = submitted_job(cloud)
    first = router().route(job.job_id, after=0)
    assert (first.action.value, first.pool, first.attempt) == ("run", Pool.LOCAL, 1)
    assert router().route(job.job_id, after=0) == first
    item = cloud.job_item(job.job_id)
    assert (item["attempt"], item["status"], len(item["attempts"])) == (1, "RUNNING", 1)
    assert router().route(job.job_id, after=3).action.value == "fail", "fenced by the attempt it follows"
    assert cloud.job_item(job.job_id)["attempt"] == 1
