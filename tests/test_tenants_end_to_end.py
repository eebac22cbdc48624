"""Tenants over real HTTP on the embedded stack (issue #10, items 5 and 6's list): each tenant sees only its
own jobs, a tenant over its rate gets 429 with Retry-After and writes nothing, and its cap on jobs in flight
is given back on every kind of end.

The stack runs with small limits (3 submits a burst, one more every 20 s, 2 jobs in flight) and a tenants
file; each test calls as tenants of its own, so that their buckets and slots are theirs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from spillway.handlers.sweeper import EXECUTION_STATUS_CHANGE
from spillway.rooms import render_room
from spillway_embedded.client import upload
from spillway_embedded.launcher import LaunchedStack, StackInfo

import helpers

pytestmark = pytest.mark.embedded

TIMEOUT = httpx.Timeout(10.0, connect=2.0)
TENANTS = ("acme", "zeta", "bursty", "ends-ok", "ends-failed", "ends-stopped")
LIMITS = {"TenantSubmitBurst": "3", "TenantSubmitsPerSecond": "0.05", "TenantJobsInFlight": "2"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    folder = tmp_path_factory.mktemp("stack")
    tenants = folder / "tenants.toml"
    tenants.write_text("".join(f'[[tenants]]\nname = "{name}"\ntoken = "{name}-token-0123456789"\n\n'
                               for name in TENANTS))
    args = ["--api-port", "0", "--tenants", str(tenants)]
    for name, value in LIMITS.items():
        args += ["--parameter", f"{name}={value}"]
    with LaunchedStack(folder / "dev", args) as info:
        yield info


@pytest.fixture
def clients(stack: StackInfo) -> Iterator[dict[str, httpx.Client]]:
    opened = {name: stack.api_client(TIMEOUT, tenant=name) for name in TENANTS}
    yield opened
    for client in opened.values():
        client.close()


@pytest.fixture
def all_gpus(stack: StackInfo) -> Iterator[list[str]]:
    gpus = [g["gpu_id"] for g in stack.gpus]
    yield gpus
    stack.agents("heal", *gpus)


def submit(api: httpx.Client, seed: int = 1) -> httpx.Response:
    return api.post("/v1/jobs", json={"service": "upscale_2x", "input_key": upload(api, render_room(seed, 320, 240))})


def accepted(api: httpx.Client, seed: int = 1) -> str:
    response = submit(api, seed)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def answered(api: httpx.Client, *job_ids: str) -> dict[str, dict]:
    return helpers.answered(api, list(job_ids), timeout=90.0, poll_s=0.2)


def jobs_in_table(stack: StackInfo) -> int:
    return stack.boto3_client("dynamodb").scan(TableName=stack.resources["JobsTable"], Select="COUNT")["Count"]


def test_each_tenant_lists_and_reads_only_its_own_jobs(stack: StackInfo, clients: dict[str, httpx.Client]) -> None:
    acme, zeta = clients["acme"], clients["zeta"]
    acme_job, zeta_job = accepted(acme), accepted(zeta)
    assert answered(acme, acme_job)[acme_job]["status"] == "SUCCEEDED"

    assert [j["job_id"] for j in acme.get("/v1/jobs").json()["jobs"]] == [acme_job]
    assert [j["job_id"] for j in zeta.get("/v1/jobs").json()["jobs"]] == [zeta_job]
    assert acme.get("/v1/jobs", params={"status": "SUCCEEDED"}).json()["jobs"][0]["job_id"] == acme_job

    theirs, unknown = zeta.get(f"/v1/jobs/{acme_job}"), zeta.get("/v1/jobs/j-" + "0" * 32)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["message"].replace(acme_job, "?") == unknown.json()["message"].replace("j-" + "0" * 32, "?")
    assert acme.get(f"/v1/jobs/{acme_job}").status_code == 200

    # Another tenant's upload cannot be submitted: as if nothing had been uploaded there.
    acme_upload = upload(acme, render_room(2, 320, 240))
    stolen = zeta.post("/v1/jobs", json={"service": "upscale_2x", "input_key": acme_upload})
    assert stolen.status_code == 422 and "nothing was uploaded" in stolen.json()["message"]

    # No token, or one of no tenant: 403 before any handler, as API Gateway refuses an unsigned call.
    for headers in ({}, {"Authorization": "Bearer not-a-tenant-token-0123"}):
        refused = httpx.get(f"{stack.api_url}/v1/jobs", headers=headers, timeout=TIMEOUT)
        assert refused.status_code == 403 and "Bearer" in refused.json()["message"]


def test_a_tenant_over_its_rate_gets_429_with_retry_after_and_writes_nothing(
        stack: StackInfo, clients: dict[str, httpx.Client]) -> None:
    bursty = clients["bursty"]
    for seed in range(3):  # the burst, one job at a time (the in-flight cap is not what is tested here)
        job_id = accepted(bursty, seed)
        assert answered(bursty, job_id)[job_id]["status"] == "SUCCEEDED"
    before = jobs_in_table(stack)
    refused = submit(bursty, 9)
    assert refused.status_code == 429, refused.text
    assert "submits per second" in refused.json()["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 20  # one token a 20 s
    assert jobs_in_table(stack) == before and len(bursty.get("/v1/jobs").json()["jobs"]) == 3
    assert clients["acme"].get("/v1/jobs").status_code == 200, "another tenant is not limited by it"


def test_the_cap_on_jobs_in_flight_refuses_and_is_given_back_when_jobs_succeed(
        stack: StackInfo, clients: dict[str, httpx.Client], all_gpus: list[str]) -> None:
    tenant = clients["ends-ok"]
    stack.agents("slow", *all_gpus, seconds=4)  # the first two are still running when the third comes
    first, second = accepted(tenant, 1), accepted(tenant, 2)
    before = jobs_in_table(stack)
    refused = submit(tenant, 3)
    assert refused.status_code == 429 and "2 jobs in flight" in refused.json()["message"], refused.text
    assert int(refused.headers["Retry-After"]) > 0 and jobs_in_table(stack) == before
    stack.agents("heal", *all_gpus)
    assert {v["status"] for v in answered(tenant, first, second).values()} == {"SUCCEEDED"}
    assert submit(tenant, 3).status_code == 202, "both slots came back"


def test_the_cap_is_given_back_when_jobs_fail(stack: StackInfo, clients: dict[str, httpx.Client],
                                               all_gpus: list[str]) -> None:
    tenant = clients["ends-failed"]
    stack.agents("fail-model", *all_gpus)  # every attempt a ModelError: each job fails after its 3 attempts
    jobs = accepted(tenant, 1), accepted(tenant, 2)
    assert {v["status"] for v in answered(tenant, *jobs).values()} == {"FAILED"}
    stack.agents("heal", *all_gpus)
    assert submit(tenant, 3).status_code == 202, "both slots came back"


def test_the_reconciler_gives_back_the_slot_of_a_job_whose_execution_was_stopped(
        stack: StackInfo, clients: dict[str, httpx.Client], all_gpus: list[str]) -> None:
    """An execution that ends without writing its job's end (stopped, timed out): the reconciler, on its
    end event (on AWS, EventBridge's; here sent to the sweeper by hand), ends the job and frees its slot."""
    tenant = clients["ends-stopped"]
    stack.agents("slow", *all_gpus, seconds=30)
    jobs = accepted(tenant, 1), accepted(tenant, 2)
    sfn = stack.boto3_client("stepfunctions")
    for job_id in jobs:
        arn = execution_arn(stack, job_id)
        sfn.stop_execution(executionArn=arn, error="Operator", cause="stopped by the test")
        wait_for(lambda arn=arn: sfn.describe_execution(executionArn=arn)["status"] == "ABORTED")  # then its event
        swept = invoke_sweeper(stack, {"version": "0", "id": job_id, "detail-type": EXECUTION_STATUS_CHANGE,
                               "source": "aws.states", "account": "123456789012", "time": "2026-11-26T12:00:00Z",
                               "region": stack.region, "resources": [],
                               "detail": {"name": job_id, "status": "ABORTED"}})
        assert swept["jobs"] == {"reconciled": 1}, swept
    views = {job_id: tenant.get(f"/v1/jobs/{job_id}").json() for job_id in jobs}
    assert {v["status"] for v in views.values()} == {"CANCELLED"}, views  # stopped by another hand: cancelled
    assert in_flight(stack, tenant) == set(), "released at once, not left to the next submit"
    stack.agents("heal", *all_gpus)
    assert submit(tenant, 3).status_code == 202


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.1)


def execution_arn(stack: StackInfo, job_id: str) -> str:
    """The job's execution, once it is admitted from its intake queue (within moments)."""
    arn = stack.resources["DispatchStateMachine"].replace(":stateMachine:", ":execution:") + f":{job_id}"
    listed = stack.boto3_client("stepfunctions").list_executions
    wait_for(lambda: any(e["executionArn"] == arn for e in listed(
        stateMachineArn=stack.resources["DispatchStateMachine"])["executions"]))
    return arn


def invoke_sweeper(stack: StackInfo, event: dict) -> dict:
    assert stack.lambda_url
    answer = httpx.post(f"{stack.lambda_url}/2015-03-31/functions/SweeperFunction/invocations", json=event,
                        timeout=30).raise_for_status()
    assert "X-Amz-Function-Error" not in answer.headers, answer.text
    return answer.json()


def in_flight(stack: StackInfo, tenant: httpx.Client) -> set[str]:
    """The tenant's slots as the tenants table holds them (its id is its principal's, see tenancy.py)."""
    from spillway.tenancy import Tenant

    token = tenant.headers["Authorization"].removeprefix("Bearer ")
    name = next(n for n, t in stack.tenants.items() if t == token)
    tenant_id = Tenant.of_principal(f"arn:aws:iam::123456789012:user/{name}").tenant_id
    item = stack.boto3_client("dynamodb").get_item(TableName=stack.resources["TenantsTable"],
                                                   Key={"tenant": {"S": tenant_id}}).get("Item", {})
    return set(item.get("in_flight", {}).get("SS", []))

