"""The AWS cost model (infra/spillway_embedded/aws_cost.py): its unit estimates, and its happy-path counts.

The counts come from a real job on the embedded stack. `HAPPY_PATH` is what one happy-path job costs AWS today:
a change that adds (or removes) an AWS call, an invocation or a state on that path fails here, and is taken in by
updating the table deliberately — then `make bench-cost` and the README's figures.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from spillway.rooms import render_room
from spillway_embedded import aws_cost
from spillway_embedded.launcher import LaunchedStack, StackInfo
from spillway_embedded.moto_server import dynamodb_units

# One job through the office, as a client runs it: an upload ticket, the upload, the submit, one status read,
# the result fetched; then until its timers have fired. Since tenants (issue #10): the submit reads its tenant's
# limits (one GetItem) and creates the job in one transaction with its token and slot (a TransactWriteItems of
# two items instead of the job's PutItem).
HAPPY_PATH = {
    "transitions": 1,  # RunAttempt: admission routed and opened the attempt, the report recorded the success
    "api_requests": 4,
    "sqs_deliveries": 3,
    "invocations": {"AdmitFunction": 1, "AgentCallbackFunction": 1, "ApiFunction": 3, "PoolPollerFunction": 1,
                    "TimerFunction": 1},
    "calls": {"dynamodb.GetItem": 5, "dynamodb.Query": 4, "dynamodb.Scan": 2,
              "dynamodb.TransactWriteItems": 3, "dynamodb.UpdateItem": 4, "s3.GET": 3, "s3.POST": 1, "s3.PUT": 1,
              "sqs.DeleteMessageBatch": 3, "sqs.SendMessage": 3, "states.SendTaskSuccess": 1,
              "states.StartExecution": 1},
}


def item(**fields: str) -> dict:
    return {name: {"S": value} for name, value in fields.items()}


def test_dynamodb_units_by_item_size() -> None:
    small, big = item(pk="j-1"), item(pk="j-1", blob="x" * 3000)
    assert dynamodb_units("PutItem", json.dumps({"Item": small}).encode(), b"{}") == 1
    assert dynamodb_units("PutItem", json.dumps({"Item": big}).encode(), b"{}") == 3  # a unit per KB
    transaction = {"TransactItems": [{"Put": {"Item": small}}, {"Update": {"Key": small}}]}
    assert dynamodb_units("TransactWriteItems", json.dumps(transaction).encode(), b"{}") == 4  # twice per item
    assert dynamodb_units("GetItem", b'{"Key": {}}', json.dumps({"Item": small}).encode()) == 0.5
    assert dynamodb_units("GetItem", b'{"ConsistentRead": true}', json.dumps({"Item": small}).encode()) == 1
    items = {"Items": [item(blob="x" * 3000)] * 3}  # 9 KB read: 3 units of 4 KB, half each when eventual
    assert dynamodb_units("Query", b"{}", json.dumps(items).encode()) == 1.5
    assert dynamodb_units("CreateTable", b"{}", b"{}") == 0


def test_prices_cover_what_is_counted() -> None:
    usage = aws_cost.Usage(transitions=1, api_requests=1, sqs_deliveries=1)
    usage.calls.update({"s3.PUT": 1, "s3.GET": 1, "secretsmanager.GetSecretValue": 1, "sqs.SendMessage": 1})
    usage.capacity.update({"dynamodb.PutItem": 1.0, "dynamodb.GetItem": 0.5})
    usage.invocations.update({"ApiFunction": 1})
    usage.gb_seconds.update({"ApiFunction": 0.5})
    prices = aws_cost.load_prices()
    bill = aws_cost.dollars(usage, prices)
    assert bill["Step Functions"] == prices["step_functions"]["per_transition"]
    assert bill["SQS"] == 2 * prices["sqs"]["per_request"]
    assert bill["Lambda"] == pytest.approx(prices["lambda"]["per_request"] + 0.5 * prices["lambda"]["per_gb_second"])
    assert all(usd > 0 for usd in bill.values()), bill


@pytest.fixture(scope="module")
def quiet_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with LaunchedStack(tmp_path_factory.mktemp("cost"), ["--api-port", "0", *aws_cost.QUIET_STACK]) as info:
        yield info


@pytest.mark.embedded
def test_a_happy_path_job_costs_what_the_model_expects(quiet_stack: StackInfo) -> None:
    aws_cost.measure_job(quiet_stack, aws_cost.EU_JOB, render_room(1))  # warm: the functions' caches filled
    usage, view = aws_cost.measure_job(quiet_stack, aws_cost.EU_JOB, render_room(2))
    assert [(a["pool"], a["outcome"]) for a in view["attempts"]] == [("local", "succeeded")]
    counted = {
        "transitions": usage.transitions, "api_requests": usage.api_requests, "sqs_deliveries": usage.sqs_deliveries,
        "invocations": dict(+usage.invocations), "calls": dict(+usage.calls),
    }
    assert counted == HAPPY_PATH, ("the happy path's AWS usage changed: if meant, update HAPPY_PATH (and the README's "
                                   f"figures) to {json.dumps(counted, sort_keys=True)}")
    assert usage.service_counts()["DynamoDB write units"] > 0
