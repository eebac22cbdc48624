"""moto as the embedded stack runs it: its own process, DynamoDB writes serialized, item-level transaction
rollback, state machine programs parsed once (spillway_embedded.moto_patches; conftest applies it here too)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest.mock import patch

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from flask import Flask
from moto import backends, mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

from spillway_embedded import moto_patches
from spillway_embedded.moto_server import MotoServer

REGION = "us-east-1"
ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/sfn"
NO_RETRIES = Config(retries={"max_attempts": 0, "total_max_attempts": 1}, max_pool_connections=20)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = MotoServer(meter_capacity=True)
    endpoint = server.start()
    yield endpoint
    server.stop()


def ddb_client(endpoint: str | None = None) -> Any:
    return boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint, config=NO_RETRIES)


def create_table(ddb: Any, name: str, gsi: bool = False) -> None:
    extra: dict[str, Any] = {}
    attributes = [{"AttributeName": "pk", "AttributeType": "S"}]
    if gsi:
        attributes.append({"AttributeName": "kind", "AttributeType": "S"})
        extra["GlobalSecondaryIndexes"] = [{
            "IndexName": "by-kind", "KeySchema": [{"AttributeName": "kind", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "ALL"},
        }]
    ddb.create_table(TableName=name, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=attributes, BillingMode="PAY_PER_REQUEST", **extra)


def n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def s(value: str) -> dict[str, str]:
    return {"S": value}


# ---------------------------------------------------------------- concurrency, against moto's own process

TOTAL_VRAM = 200
THREADS, OPS = 8, 40


def test_concurrent_leases_and_releases_never_oversubscribe_nor_lose_a_write(moto_endpoint: str) -> None:
    """8 threads lease VRAM (a transaction: conditional decrement + new task), release it (a transaction:
    running -> done + VRAM back), borrow it with plain conditional updates, and count on an item of their
    own in the same table. Unpatched moto lets two conditional writes pass at once (VRAM below zero) and
    a cancelled transaction restores whole tables, erasing other threads' writes."""
    ddb = ddb_client(moto_endpoint)
    gpus, tasks = f"gpus-{uuid.uuid4().hex[:8]}", f"tasks-{uuid.uuid4().hex[:8]}"
    create_table(ddb, gpus)
    create_table(ddb, tasks)
    ddb.put_item(TableName=gpus, Item={"pk": s("gpu"), "vram_free_mb": n(TOTAL_VRAM)})
    gpu_key = {"pk": s("gpu")}
    negatives: list[int] = []
    unexpected: list[str] = []
    views: list[dict[str, Any]] = []

    def worker(index: int) -> None:
        client = ddb_client(moto_endpoint)
        rng = random.Random(index)
        counter_key = {"pk": s(f"counter-{index}")}
        client.put_item(TableName=gpus, Item={**counter_key, "count": n(0)})
        view: dict[str, Any] = {"running": {}, "done": set(), "cancelled": set(), "count": 0}
        views.append(view)
        for op in range(OPS):
            need = rng.choice((30, 50, 70))
            try:
                roll = rng.random()
                if roll < 0.5 or not view["running"]:
                    task_id = f"t-{index}-{op}"
                    try:
                        client.transact_write_items(TransactItems=[
                            {"Update": {"TableName": gpus, "Key": gpu_key,
                                        "UpdateExpression": "SET vram_free_mb = vram_free_mb - :need",
                                        "ConditionExpression": "vram_free_mb >= :need",
                                        "ExpressionAttributeValues": {":need": n(need)}}},
                            {"Put": {"TableName": tasks,
                                     "Item": {"pk": s(task_id), "state": s("running"), "need": n(need)},
                                     "ConditionExpression": "attribute_not_exists(pk)"}},
                        ])
                        view["running"][task_id] = need
                    except client.exceptions.TransactionCanceledException:
                        view["cancelled"].add(task_id)
                elif roll < 0.8:
                    task_id, held = rng.choice(sorted(view["running"].items()))
                    client.transact_write_items(TransactItems=[
                        {"Update": {"TableName": tasks, "Key": {"pk": s(task_id)},
                                    "UpdateExpression": "SET #state = :done",
                                    "ConditionExpression": "#state = :running",
                                    "ExpressionAttributeNames": {"#state": "state"},
                                    "ExpressionAttributeValues": {":done": s("done"), ":running": s("running")}}},
                        {"Update": {"TableName": gpus, "Key": gpu_key,
                                    "UpdateExpression": "SET vram_free_mb = vram_free_mb + :need",
                                    "ExpressionAttributeValues": {":need": n(held)}}},
                    ])
                    del view["running"][task_id]
                    view["done"].add(task_id)
                else:
                    try:  # borrow and give back with plain conditional updates
                        left = client.update_item(
                            TableName=gpus, Key=gpu_key, UpdateExpression="SET vram_free_mb = vram_free_mb - :need",
                            ConditionExpression="vram_free_mb >= :need", ExpressionAttributeValues={":need": n(need)},
                            ReturnValues="UPDATED_NEW")["Attributes"]["vram_free_mb"]["N"]
                        if int(left) < 0:
                            negatives.append(int(left))
                        client.update_item(TableName=gpus, Key=gpu_key,
                                           UpdateExpression="SET vram_free_mb = vram_free_mb + :need",
                                           ExpressionAttributeValues={":need": n(need)})
                    except client.exceptions.ConditionalCheckFailedException:
                        pass
                # a compare-and-set on this thread's own item: only a lost write can make it fail
                client.update_item(TableName=gpus, Key=counter_key, UpdateExpression="SET #c = #c + :one",
                                   ConditionExpression="#c = :seen", ExpressionAttributeNames={"#c": "count"},
                                   ExpressionAttributeValues={":one": n(1), ":seen": n(view["count"])})
                view["count"] += 1
            except Exception as error:  # reported below, with the thread and the op
                unexpected.append(f"thread {index} op {op}: {error!r}")
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    assert unexpected == []
    assert negatives == []
    free = int(ddb.get_item(TableName=gpus, Key=gpu_key, ConsistentRead=True)["Item"]["vram_free_mb"]["N"])
    stored = {item["pk"]["S"]: item for item in ddb.scan(TableName=tasks)["Items"]}
    running = {pk: int(item["need"]["N"]) for pk, item in stored.items() if item["state"]["S"] == "running"}
    assert 0 <= free <= TOTAL_VRAM
    assert free + sum(running.values()) == TOTAL_VRAM
    for view in views:  # every task is what its thread was told, and cancelled leases left no task behind
        assert all(running.get(task_id) == need for task_id, need in view["running"].items())
        assert all(stored[task_id]["state"]["S"] == "done" for task_id in view["done"])
        assert not view["cancelled"] & stored.keys()
    assert len(stored) == sum(len(v["running"]) + len(v["done"]) for v in views)
    counters = {item["pk"]["S"]: int(item["count"]["N"]) for item in ddb.scan(TableName=gpus)["Items"]
                if item["pk"]["S"].startswith("counter-")}
    assert sorted(counters.values()) == [OPS] * THREADS


# ---------------------------------------------------------------- rollback, in-process


def test_a_cancelled_transaction_restores_exactly_the_items_it_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2nd operation's condition fails: the 1st operation's update and the new item are undone, the
    reasons are moto's, the index agrees with the items, and a write that landed on another item of the
    same table while the transaction ran (simulated here, it cannot happen under the lock) stays."""
    with mock_aws():
        ddb = ddb_client()
        create_table(ddb, "gpus", gsi=True)
        ddb.put_item(TableName="gpus", Item={"pk": s("a"), "kind": s("local"), "vram": n(100)})
        ddb.put_item(TableName="gpus", Item={"pk": s("b"), "kind": s("local"), "vram": n(10)})
        ddb.put_item(TableName="gpus", Item={"pk": s("other"), "kind": s("cloud"), "vram": n(1)})
        backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION]
        table = backend.get_table("gpus")

        read_item = backend.get_item

        def concurrent_write_while_reading_b(table_name: str, key: dict[str, Any], *args: Any) -> Any:
            if key == {"pk": s("b")}:
                backend.update_item("gpus", {"pk": s("other")}, "SET vram = :v", {}, {":v": n(2)})
            return read_item(table_name, key, *args)

        monkeypatch.setattr(backend, "get_item", concurrent_write_while_reading_b)
        with pytest.raises(ClientError) as cancelled:
            ddb.transact_write_items(TransactItems=[
                {"Update": {"TableName": "gpus", "Key": {"pk": s("a")},
                            "UpdateExpression": "SET vram = vram - :need, kind = :kind",
                            "ExpressionAttributeValues": {":need": n(40), ":kind": s("cloud")}}},
                {"Put": {"TableName": "gpus", "Item": {"pk": s("new"), "kind": s("local"), "vram": n(5)},
                         "ConditionExpression": "attribute_not_exists(pk)"}},
                {"Update": {"TableName": "gpus", "Key": {"pk": s("b")},
                            "UpdateExpression": "SET vram = vram - :need", "ConditionExpression": "vram >= :need",
                            "ExpressionAttributeValues": {":need": n(40)},
                            "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
            ])
        monkeypatch.undo()

        error = cancelled.value.response
        assert error["Error"]["Code"] == "TransactionCanceledException"
        assert [r["Code"] for r in error["CancellationReasons"]] == ["None", "None", "ConditionalCheckFailed"]
        assert error["CancellationReasons"][2]["Item"]["vram"] == n(10)

        def item(pk: str) -> dict[str, Any] | None:
            return ddb.get_item(TableName="gpus", Key={"pk": s(pk)}).get("Item")

        assert item("a") == {"pk": s("a"), "kind": s("local"), "vram": n(100)}
        assert item("new") is None
        assert item("b") == {"pk": s("b"), "kind": s("local"), "vram": n(10)}
        assert item("other") == {"pk": s("other"), "kind": s("cloud"), "vram": n(2)}  # the concurrent write
        assert backend.get_table("gpus") is table  # no table swapped for a copy

        def by_kind(kind: str) -> list[str]:
            found = ddb.query(TableName="gpus", IndexName="by-kind", KeyConditionExpression="kind = :k",
                              ExpressionAttributeValues={":k": s(kind)})["Items"]
            return sorted(i["pk"]["S"] for i in found)

        assert by_kind("local") == ["a", "b"]
        assert by_kind("cloud") == ["other"]

        # and a transaction that passes still writes everything
        ddb.transact_write_items(TransactItems=[
            {"Update": {"TableName": "gpus", "Key": {"pk": s("a")}, "UpdateExpression": "SET vram = vram - :need",
                        "ConditionExpression": "vram >= :need", "ExpressionAttributeValues": {":need": n(40)}}},
            {"Delete": {"TableName": "gpus", "Key": {"pk": s("b")}}},
        ])
        assert item("a")["vram"] == n(60)
        assert item("b") is None


def test_a_transaction_that_names_one_item_twice_is_refused_and_writes_nothing() -> None:
    with mock_aws():
        ddb = ddb_client()
        create_table(ddb, "gpus")
        ddb.put_item(TableName="gpus", Item={"pk": s("a"), "vram": n(100)})
        update = {"Update": {"TableName": "gpus", "Key": {"pk": s("a")}, "UpdateExpression": "SET vram = :v",
                             "ExpressionAttributeValues": {":v": n(1)}}}
        with pytest.raises(ClientError) as refused:
            ddb.transact_write_items(TransactItems=[update, update])
        assert refused.value.response["Error"]["Code"] == "ValidationException"
        assert ddb.get_item(TableName="gpus", Key={"pk": s("a")})["Item"]["vram"] == n(100)


# ---------------------------------------------------------------- Step Functions: one parse per definition


@pytest.fixture
def sfn_world() -> Iterator[tuple[Any, Any]]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield (boto3.client("stepfunctions", region_name=REGION), boto3.client("dynamodb", region_name=REGION))


def wait_for(sfn: Any, arn: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (execution := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, f"{arn} still running after {timeout}s"
        time.sleep(0.01)
    return execution


def test_executions_of_one_definition_parse_it_once(
    sfn_world: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sfn, ddb = sfn_world
    create_table(ddb, "marks")
    marker = uuid.uuid4().hex  # a definition no other test parsed: the process-wide cache misses once
    definition = json.dumps({"StartAt": "Mark", "States": {
        "Mark": {"Type": "Task", "Resource": "arn:aws:states:::dynamodb:putItem",
                 "Parameters": {"TableName": "marks", "Item": {"pk": {"S.$": "$.id"}, "marker": {"S": marker}}},
                 "Retry": [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 2, "IntervalSeconds": 1}],
                 "ResultPath": None, "Next": "Done"},
        "Done": {"Type": "Succeed"}}})
    parses: list[str] = []
    parse = AmazonStateLanguageParser.parse

    def counting_parse(text: str) -> Any:
        parses.append(text)
        return parse(text)

    monkeypatch.setattr(AmazonStateLanguageParser, "parse", staticmethod(counting_parse))
    # Created twice (as each test's stack creates the dispatch machine): CreateStateMachine's validation too
    # parses it once for all.
    machine = sfn.create_state_machine(name="mark", definition=definition, roleArn=ROLE)["stateMachineArn"]
    sfn.create_state_machine(name="mark-again", definition=definition, roleArn=ROLE)
    arns = [sfn.start_execution(stateMachineArn=machine, name=f"e{i}", input=json.dumps({"id": f"e{i}"}))[
        "executionArn"] for i in range(2)]
    assert [wait_for(sfn, arn)["status"] for arn in arns] == ["SUCCEEDED", "SUCCEEDED"]
    assert parses.count(definition) == 1
    for i in range(2):
        assert ddb.get_item(TableName="marks", Key={"pk": {"S": f"e{i}"}})["Item"]["marker"] == {"S": marker}


def test_a_definition_that_does_not_parse_is_refused_as_moto_refuses_it(sfn_world: tuple[Any, Any]) -> None:
    sfn, _ = sfn_world
    definition = json.dumps({"StartAt": "P", "States": {"P": {"Type": "Teleport", "End": True}}})
    with pytest.raises(ClientError) as refused:
        sfn.create_state_machine(name="bad", definition=definition, roleArn=ROLE)
    # moto's InvalidDefinition (its code comes back empty, patched or not), with the parser's reason
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert refused.value.response["Error"]["Message"].startswith("ASLParserException"), refused.value.response
    assert definition not in moto_patches._programs, "nothing cached"
    assert sfn.list_state_machines()["stateMachines"] == []


def test_a_shared_program_has_its_heap_keys_drawn_before_executions_share_it() -> None:
    from moto.stepfunctions.parser.asl.component.common.retry.max_attempts_decl import MaxAttemptsDecl

    definition = json.dumps({"StartAt": "P", "States": {"P": {
        "Type": "Task", "Resource": "arn:aws:states:::dynamodb:getItem", "End": True,
        "Parameters": {"TableName": "t", "Key": {"pk": {"S": uuid.uuid4().hex}}},
        "Retry": [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 3}]}}})
    program = moto_patches.parsed_program(definition)
    assert moto_patches.parsed_program(definition) is program
    found: list[Any] = []
    pending, seen = [program], set()
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, MaxAttemptsDecl):
            found.append(value)
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            pending.extend(vars(value).values())
    assert found
    assert all(decl._EvalComponent__heap_key is not None for decl in found)


def test_a_callback_succeeds_while_another_execution_is_still_starting(
    sfn_world: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto looks for a task token in every running execution's environment, which an execution builds
    only after parsing its definition: unpatched, that window made SendTaskSuccess fail for everyone."""
    sfn, _ = sfn_world
    sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.create_queue(QueueName="callbacks")["QueueUrl"]
    waiting = json.dumps({"StartAt": "Wait", "States": {"Wait": {
        "Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken", "End": True,
        "Parameters": {"QueueUrl": queue, "MessageBody": {"token.$": "$$.Task.Token"}}}}})
    starting = json.dumps({"StartAt": "Done", "Comment": uuid.uuid4().hex, "States": {"Done": {"Type": "Succeed"}}})
    # moto looks through state machines in creation order: the starting one first
    starter = sfn.create_state_machine(name="starter", definition=starting, roleArn=ROLE)["stateMachineArn"]
    waiter = sfn.create_state_machine(name="waiter", definition=waiting, roleArn=ROLE)["stateMachineArn"]

    waiter_run = sfn.start_execution(stateMachineArn=waiter, name="w")["executionArn"]
    deadline = time.monotonic() + 10
    while not (messages := sqs.receive_message(QueueUrl=queue).get("Messages")):
        assert time.monotonic() < deadline, "the waiter never sent its token"
        time.sleep(0.01)
    token = json.loads(messages[0]["Body"])["token"]

    parsing, release = threading.Event(), threading.Event()
    parse = AmazonStateLanguageParser.parse

    def slow_parse(text: str) -> Any:
        if text == starting:
            parsing.set()
            release.wait(timeout=10)
        return parse(text)

    monkeypatch.setattr(AmazonStateLanguageParser, "parse", staticmethod(slow_parse))
    monkeypatch.delitem(moto_patches._programs, starting)  # parsed at its creation: its execution parses it again
    starter_run = sfn.start_execution(stateMachineArn=starter, name="s")["executionArn"]
    try:
        assert parsing.wait(timeout=10)  # the starter is RUNNING, without an environment yet
        sfn.send_task_success(taskToken=token, output=json.dumps({"ok": True}))
    finally:
        release.set()
    assert wait_for(sfn, waiter_run)["status"] == "SUCCEEDED"
    assert wait_for(sfn, starter_run)["status"] == "SUCCEEDED"


def test_a_stopped_execution_waiting_on_a_task_token_is_aborted_at_once_with_its_error_and_cause(
    sfn_world: tuple[Any, Any]
) -> None:
    """Unpatched, the execution stayed RUNNING until its task's timeout (here an hour) and lost the reason."""
    sfn, _ = sfn_world
    sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.create_queue(QueueName="stopped")["QueueUrl"]
    waiting = json.dumps({"StartAt": "Wait", "States": {"Wait": {
        "Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken", "TimeoutSeconds": 3600,
        "Parameters": {"QueueUrl": queue, "MessageBody": {"token.$": "$$.Task.Token"}}, "End": True}}})
    machine = sfn.create_state_machine(name="stopped", definition=waiting, roleArn=ROLE)["stateMachineArn"]
    run = sfn.start_execution(stateMachineArn=machine, name="s")["executionArn"]
    deadline = time.monotonic() + 10
    while not sqs.receive_message(QueueUrl=queue).get("Messages"):
        assert time.monotonic() < deadline, "it never sent its token"
        time.sleep(0.01)
    sfn.stop_execution(executionArn=run, error="Spillway.Cancelled", cause="by its client")
    stopped = wait_for(sfn, run, timeout=5)
    assert (stopped["status"], stopped["error"], stopped["cause"]) == ("ABORTED", "Spillway.Cancelled", "by its client")


def test_step_functions_integrations_reuse_one_client_and_parse_each_json_path_once() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_dynamodb
    from moto.stepfunctions.parser.asl.utils import json_path

    client = state_task_service_dynamodb.boto_client_for("us-east-1", "dynamodb")
    assert state_task_service_dynamodb.boto_client_for("us-east-1", "dynamodb") is client
    assert state_task_service_dynamodb.boto_client_for("eu-west-1", "dynamodb") is not client
    assert json_path.parse("$.attempt.number") is json_path.parse("$.attempt.number")
    with ThreadPoolExecutor(8) as pool:  # executions that reach their first integration at once share one client
        assert len({id(c) for c in pool.map(lambda _: state_task_service_dynamodb.boto_client_for(
            "ap-south-1", "dynamodb"), range(8))}) == 1
    assert json_path.extract_json("$.attempt.number", {"attempt": {"number": 2}}) == 2


def test_in_the_server_the_interpreters_integrations_are_served_in_process_without_flask_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_dynamodb,
        state_task_service_sqs,
    )

    from spillway_embedded.moto_server import CallCounter

    # The server's application, as its main() builds it; DynamoDB and SQS answered without Flask (patch 17).
    server_app = CallCounter(moto_patches.DirectJsonApis(DomainDispatcherApplication(create_backend_app)))
    monkeypatch.setattr(moto_patches, "_server_app", None)
    monkeypatch.setattr(Flask, "wsgi_app", lambda *_: pytest.fail("a DynamoDB or SQS call went through Flask"))
    moto_patches.serve_integrations_in_process(server_app)
    with socket.socket() as probe:  # a port nothing listens on: a call over HTTP would fail
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MOTO_PORT", str(probe.getsockname()[1]))
    region, name = "ca-central-1", f"in-process-{uuid.uuid4().hex}"  # this process's backends are not reset here
    ddb = state_task_service_dynamodb.boto_client_for(region, "dynamodb")
    sqs = state_task_service_sqs.boto_client_for(region, "sqs")
    create_table(ddb, name)
    try:
        ddb.put_item(TableName=name, Item={"pk": s("a"), "n": n(1)})
        assert ddb.get_item(TableName=name, Key={"pk": s("a")})["Item"]["n"] == n(1)
        with pytest.raises(ClientError, match="ConditionalCheckFailed"):  # an error answers as over HTTP
            ddb.put_item(TableName=name, Item={"pk": s("a")}, ConditionExpression="attribute_not_exists(pk)")
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="token 1", MessageAttributes={
            "kind": {"DataType": "String", "StringValue": "task"}})
        received = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"])["Messages"]
        assert [(m["Body"], m["MessageAttributes"]["kind"]["StringValue"]) for m in received] == [("token 1", "task")]
        sqs.delete_queue(QueueUrl=url)
        with pytest.raises(ClientError, match="queue does not exist"):
            sqs.get_queue_url(QueueName=name)
    finally:
        ddb.delete_table(TableName=name)
    counted = {api: calls for api, (calls, _) in server_app._calls.items()}
    assert counted["dynamodb.PutItem"] == 2 and counted["dynamodb.GetItem"] == 1
    assert counted["sqs.SendMessage"] == counted["sqs.ReceiveMessage"] == 1


def test_a_direct_json_call_that_moto_refuses_with_a_werkzeug_error_is_answered_with_it_as_flask_did() -> None:
    from werkzeug.exceptions import BadRequest
    from werkzeug.test import EnvironBuilder

    def refuse(*_: Any) -> Any:
        raise BadRequest("not this")

    direct = moto_patches.DirectJsonApis(lambda *_: pytest.fail("a DynamoDB call went to the Flask app"))
    direct._handlers = (("DynamoDB_20120810.", refuse),)
    environ = EnvironBuilder(method="POST", path="/", headers={"X-Amz-Target": "DynamoDB_20120810.GetItem"},
                             data=b"{}").get_environ()
    started: list[Any] = []
    body = b"".join(direct(environ, lambda status, headers: started.append((status, dict(headers)))))
    assert started[0][0] == "400 Bad Request" and b"not this" in body
    assert started[0][1]["Content-Length"] == str(len(body))


def test_the_server_finds_a_hosts_backend_once() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    dispatcher = DomainDispatcherApplication(create_app=lambda service: None)
    host = "dynamodb.us-east-1.amazonaws.com"
    with patch.object(backends, "list_of_moto_modules", wraps=backends.list_of_moto_modules) as modules:
        backend = dispatcher.get_backend_for_host(host)
        assert dispatcher.get_backend_for_host(host) == backend == "dynamodb"
    assert modules.call_count == 1


def test_a_form_upload_is_held_to_its_policys_length_range_and_expiry(moto_endpoint: str) -> None:
    import httpx

    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_endpoint, config=NO_RETRIES)
    s3.create_bucket(Bucket="posts")

    def post(size: int, expires_in: int = 60) -> httpx.Response:
        form = s3.generate_presigned_post(Bucket="posts", Key="k", Conditions=[["content-length-range", 2, 10]],
                                          ExpiresIn=expires_in)
        return httpx.post(form["url"], data=form["fields"], files={"file": b"x" * size}, timeout=10)

    too_large = post(11)
    assert too_large.status_code == 400 and "EntityTooLarge" in too_large.text
    assert post(1).status_code == 400 and "EntityTooSmall" in post(1).text
    assert post(5, expires_in=-1).status_code == 403
    assert not s3.list_objects_v2(Bucket="posts").get("Contents"), "nothing refused was stored"
    assert post(10).status_code == 204
    assert s3.get_object(Bucket="posts", Key="k")["Body"].read() == b"x" * 10


def test_a_handler_class_lists_its_actions_once() -> None:
    import inspect

    from moto.core import responses
    from moto.dynamodb.responses import DynamoHandler

    names = responses.method_names_from_class(DynamoHandler)
    assert "get_item" in names
    with patch.object(inspect, "getmembers", side_effect=AssertionError("listed again")):
        assert responses.method_names_from_class(DynamoHandler) is names


# ---------------------------------------------------------------- per-call costs that grew with the data


def test_a_table_query_reads_only_its_hash_key_and_answers_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's query sorted every item of the table (every pool's waiting room) to read one hash key's."""
    from moto.dynamodb.models.table import Table

    with mock_aws():
        ddb = ddb_client()
        ddb.create_table(TableName="room", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                                      {"AttributeName": "rank", "KeyType": "RANGE"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                               {"AttributeName": "rank", "AttributeType": "S"},
                                               {"AttributeName": "kind", "AttributeType": "S"}],
                         GlobalSecondaryIndexes=[{"IndexName": "by-kind",
                                                  "KeySchema": [{"AttributeName": "kind", "KeyType": "HASH"}],
                                                  "Projection": {"ProjectionType": "ALL"}}],
                         BillingMode="PAY_PER_REQUEST")
        for pool, count in (("local", 7), ("cloud", 3)):
            for i in random.sample(range(count), count):  # written out of order
                ddb.put_item(TableName="room", Item={"pk": s(pool), "rank": s(f"{i:03d}"),
                                                     "kind": s("odd" if i % 2 else "even")})

        def everything(self: Any) -> Any:
            raise AssertionError("a query read the whole table")

        monkeypatch.setattr(Table, "all_items", everything)

        def ranks(**query: Any) -> list[str]:
            found, request = [], {"TableName": "room", "ExpressionAttributeValues": {":p": s("local")},
                                  "KeyConditionExpression": "pk = :p", **query}
            while True:
                page = ddb.query(**request)
                found += [i["rank"]["S"] for i in page["Items"]]
                if "LastEvaluatedKey" not in page:
                    return found
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

        assert ranks(Limit=3) == [f"{i:03d}" for i in range(7)]
        assert ranks(ScanIndexForward=False, Limit=2) == [f"{i:03d}" for i in reversed(range(7))]
        assert ranks(KeyConditionExpression="pk = :p AND #r > :r", ExpressionAttributeNames={"#r": "rank"},
                     ExpressionAttributeValues={":p": s("local"), ":r": s("004")}) == ["005", "006"]
        assert ddb.query(TableName="room", KeyConditionExpression="pk = :p", Select="COUNT",
                         ExpressionAttributeValues={":p": s("nowhere")})["Count"] == 0
        odd = ddb.query(TableName="room", IndexName="by-kind", KeyConditionExpression="kind = :k",
                        ExpressionAttributeValues={":k": s("odd")})["Items"]
        assert sorted((i["pk"]["S"], i["rank"]["S"]) for i in odd) == [
            ("cloud", "001"), ("local", "001"), ("local", "003"), ("local", "005")]


def test_dynamodb_expressions_are_parsed_once_per_text_and_resolved_per_call() -> None:
    """An UpdateItem parsed its update expression and lexed its condition twice each, for every call."""
    from moto.dynamodb.comparisons import ConditionExpressionParser
    from moto.dynamodb.parsing.expressions import ExpressionTokenizer

    with mock_aws():
        ddb = ddb_client()
        create_table(ddb, "jobs")
        ddb.put_item(TableName="jobs", Item={"pk": s("a"), "n": n(0), "state": s("open"), "other": s("open")})

        def bump(by: int, name: str = "state", expect: str = "open") -> dict[str, Any]:
            return ddb.update_item(TableName="jobs", Key={"pk": s("a")}, UpdateExpression="SET n = n + :by, #x = :x",
                                   ConditionExpression="#s = :expect", ReturnValues="ALL_NEW",
                                   ExpressionAttributeNames={"#x": "touched", "#s": name},
                                   ExpressionAttributeValues={":by": n(by), ":x": s(f"by {by}"), ":expect": s(expect)})

        bump(1)  # parsed and lexed here, once
        with patch.object(ExpressionTokenizer, "make_list", side_effect=AssertionError("parsed again")), \
                patch.object(ConditionExpressionParser, "_lex_one_node", side_effect=AssertionError("lexed again")):
            assert bump(2)["Attributes"]["n"] == n(3)
            assert bump(4, name="other")["Attributes"]["touched"] == s("by 4")  # the same text, other names
            with pytest.raises(ClientError, match="ConditionalCheckFailed"):
                bump(8, expect="closed")  # the same text, other values
        assert ddb.get_item(TableName="jobs", Key={"pk": s("a")})["Item"]["n"] == n(7)
        with pytest.raises(ClientError, match="ValidationException"):  # a bad expression still fails, every time
            ddb.update_item(TableName="jobs", Key={"pk": s("a")}, UpdateExpression="SET n = = :x",
                            ExpressionAttributeValues={":x": n(1)})


def test_an_update_is_validated_on_a_copy_of_its_tree_and_its_static_rules_run_once_per_expression() -> None:
    """moto's validator deep-copied the shared tree and ran every rule on every call; the rules that read only the
    tree, its names and the table's keys now run once per expression and names, the others on every call."""
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser
    from moto.dynamodb.parsing.validators import ActionCountValidator, OverlappingPathsValidator

    with mock_aws():
        ddb = ddb_client()
        create_table(ddb, "jobs")
        ddb.put_item(TableName="jobs", Item={"pk": s("a"), "n": n(0), "tags": {"L": [s("x")]}})
        text = "SET n = n + :by, #x = list_append(tags, :more) REMOVE gone"

        def update(by: int, name: str = "touched") -> dict[str, Any]:
            return ddb.update_item(TableName="jobs", Key={"pk": s("a")}, UpdateExpression=text, ReturnValues="ALL_NEW",
                                   ExpressionAttributeNames={"#x": name},
                                   ExpressionAttributeValues={":by": n(by), ":more": {"L": [s(str(by))]}})["Attributes"]

        assert update(1) == {"pk": s("a"), "n": n(1), "tags": {"L": [s("x")]}, "touched": {"L": [s("x"), s("1")]}}
        with patch.object(ActionCountValidator, "verify_action_counts", side_effect=AssertionError("checked again")), \
                patch.object(OverlappingPathsValidator, "check_for_overlapping_paths",
                             side_effect=AssertionError("checked again")):
            assert update(2)["touched"] == {"L": [s("x"), s("2")]} and update(3)["n"] == n(6)  # values: every call
        with pytest.raises(ClientError, match="Two document paths overlap"):  # other names: the rules run for them
            update(4, name="n")
        with pytest.raises(ClientError, match="Cannot update attribute pk"):
            ddb.update_item(TableName="jobs", Key={"pk": s("a")}, UpdateExpression="SET pk = :v",
                            ExpressionAttributeValues={":v": s("b")})
        with pytest.raises(ClientError, match="Cannot update attribute pk"):  # refused again, not remembered
            ddb.update_item(TableName="jobs", Key={"pk": s("a")}, UpdateExpression="SET pk = :v",
                            ExpressionAttributeValues={":v": s("b")})
        shared = UpdateExpressionParser.make(text)  # the cached tree: its placeholders never resolved in place
        assert "ExpressionAttributeValue" in repr_tree(shared) and "DDBTypedValue" not in repr_tree(shared)


def repr_tree(node: Any) -> str:
    children = getattr(node, "children", None) or []
    return f"{type(node).__name__}({', '.join(repr_tree(c) if hasattr(c, 'children') else repr(c) for c in children)})"


def test_a_table_query_or_scan_answers_without_copying_items_and_leaves_them_whole() -> None:
    from moto.dynamodb.models.dynamo_type import Item

    with mock_aws():
        ddb = ddb_client()
        ddb.create_table(TableName="gpus", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                               {"AttributeName": "kind", "AttributeType": "S"}],
                         GlobalSecondaryIndexes=[{"IndexName": "by-kind",
                                                  "KeySchema": [{"AttributeName": "kind", "KeyType": "HASH"}],
                                                  "Projection": {"ProjectionType": "KEYS_ONLY"}}],
                         BillingMode="PAY_PER_REQUEST")
        history = {"L": [{"M": {"to": s("healthy"), "at": n(i)}} for i in range(20)]}
        for i in range(3):
            ddb.put_item(TableName="gpus", Item={"pk": s(f"g{i}"), "kind": s("local"), "vram": n(i), "events": history})
        with patch.object(Item, "__deepcopy__", side_effect=AssertionError("copied")):
            scanned = ddb.scan(TableName="gpus", FilterExpression="vram > :v", ProjectionExpression="pk, vram",
                               ExpressionAttributeValues={":v": n(0)})["Items"]
            queried = ddb.query(TableName="gpus", KeyConditionExpression="pk = :p", ProjectionExpression="vram",
                                ExpressionAttributeValues={":p": s("g2")})["Items"]
        assert sorted(i["pk"]["S"] for i in scanned) == ["g1", "g2"] and queried == [{"vram": n(2)}]
        keys = ddb.query(TableName="gpus", IndexName="by-kind", KeyConditionExpression="kind = :k",
                         ExpressionAttributeValues={":k": s("local")})["Items"]  # projected onto a copy
        assert sorted(k["pk"]["S"] for k in keys) == ["g0", "g1", "g2"] and "events" not in keys[0]
        whole = ddb.get_item(TableName="gpus", Key={"pk": s("g1")})["Item"]  # no projection reached the store
        assert whole == {"pk": s("g1"), "kind": s("local"), "vram": n(1), "events": history}


def test_item_operations_answer_what_motos_serializer_would() -> None:
    """The item operations skip moto's shape-driven serializer; their answers stay the same bytes' meaning."""
    from moto.dynamodb.responses import DynamoResult

    serializer = DynamoResult.execute_result.__wrapped__
    answers: list[tuple[str, Any, Any]] = []

    def both(self: Any, context: Any) -> Any:
        fast = moto_patches_execute(self, context)
        answers.append((context.operation_model.name, json.loads(fast[2]), json.loads(serializer(self, context)[2])))
        assert fast[:2] == serializer(self, context)[:2]
        return fast

    moto_patches_execute = DynamoResult.execute_result
    with mock_aws(), patch.object(DynamoResult, "execute_result", both):
        ddb = ddb_client()
        create_table(ddb, "items", gsi=True)
        item = {"pk": s("a"), "kind": s("k"), "b": {"B": b"\x00\xff"}, "n": n(3), "f": {"N": "1.50"},
                "l": {"L": [{"M": {"x": {"NULL": True}, "y": {"BOOL": False}}}]}, "ss": {"SS": ["p", "q"]},
                "bs": {"BS": [b"\x01"]}}
        ddb.put_item(TableName="items", Item=item, ReturnConsumedCapacity="TOTAL")
        assert ddb.get_item(TableName="items", Key={"pk": s("a")})["Item"] == item
        ddb.get_item(TableName="items", Key={"pk": s("missing")})
        ddb.update_item(TableName="items", Key={"pk": s("a")}, UpdateExpression="SET n = n + :one",
                        ExpressionAttributeValues={":one": n(1)}, ReturnValues="ALL_NEW")
        ddb.query(TableName="items", IndexName="by-kind", KeyConditionExpression="kind = :k",
                  ExpressionAttributeValues={":k": s("k")}, Limit=1)
        ddb.scan(TableName="items", Select="COUNT")
        ddb.batch_get_item(RequestItems={"items": {"Keys": [{"pk": s("a")}, {"pk": s("zz")}]}})
        ddb.transact_get_items(TransactItems=[{"Get": {"TableName": "items", "Key": {"pk": s("a")}}}])
        ddb.delete_item(TableName="items", Key={"pk": s("a")}, ReturnValues="ALL_OLD")
        ddb.describe_table(TableName="items")  # not an item operation: moto's serializer answers
    assert {name for name, _, _ in answers} == set(moto_patches._ITEM_OPERATIONS) | {"CreateTable", "DescribeTable"}
    for name, fast, serialized in answers:
        assert fast == serialized, name


def test_sqs_counts_and_receives_by_one_clock_reading_and_never_computes_every_attribute_to_receive() -> None:
    from moto.sqs.models import Queue

    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        url = sqs.create_queue(QueueName="timers")["QueueUrl"]
        for i in range(5):
            sqs.send_message(QueueUrl=url, MessageBody=f"later-{i}", DelaySeconds=900)
        sqs.send_message(QueueUrl=url, MessageBody="now")
        sqs.send_message(QueueUrl=url, MessageBody="now too")
        with patch.object(Queue, "attributes", property(lambda self: pytest.fail("every attribute computed"))):
            first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=60)["Messages"]
        assert first[0]["Body"].startswith("now")
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesDelayed"],
                attributes["ApproximateNumberOfMessagesNotVisible"]) == ("1", "5", "1")
        rest = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)["Messages"]
        assert [m["Body"] for m in rest] == [b for b in ("now", "now too") if b != first[0]["Body"]]


def test_the_server_serves_on_the_port_reserved_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The port is held from its choice until moto's server serves on it (the child inherits the listening
    socket): a port only probed free was once taken, in the window before moto bound it, by another process's
    outgoing connection, and the stack did not start ("Address already in use")."""
    from spillway_embedded import moto_server

    reserved: list[int] = []
    reserve_port = moto_server.reserve_port

    def reserve(host: str = "127.0.0.1") -> Any:
        held = reserve_port(host)
        reserved.append(held.getsockname()[1])
        return held

    monkeypatch.setattr(moto_server, "reserve_port", reserve)
    server = MotoServer()
    endpoint = server.start()
    try:
        assert endpoint == f"http://127.0.0.1:{reserved[0]}"
        assert httpx.get(f"{endpoint}/_spillway/calls", timeout=5).status_code == 200
    finally:
        server.stop()


def test_the_server_counts_the_calls_it_serves_by_api(moto_endpoint: str) -> None:
    def calls() -> dict[str, list[float]]:
        return httpx.get(f"{moto_endpoint}/_spillway/calls", timeout=5).raise_for_status().json()

    before = calls()
    ddb = ddb_client(moto_endpoint)
    ddb.list_tables()
    ddb.list_tables()
    boto3.client("sqs", region_name=REGION, endpoint_url=moto_endpoint).list_queues()
    after = calls()
    counted = {api: after[api][0] - before.get(api, [0, 0.0])[0] for api in after}
    assert counted["dynamodb.ListTables"] == 2 and counted["sqs.ListQueues"] == 1
    assert after["dynamodb.ListTables"][1] > 0  # CPU seconds of the calls


@pytest.mark.parametrize("metered", [True, False])
def test_request_units_are_metered_only_when_asked(metered: bool) -> None:
    """Metering reads every DynamoDB request and answer again (a twentieth of moto's CPU): only the cost model's
    stacks ask for it; on another server the calls are still counted, and asking for units gets a clear 404."""
    from werkzeug.test import EnvironBuilder

    from spillway_embedded.moto_server import CallCounter

    def moto(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        assert environ["wsgi.input"].read() == b'{"ConsistentRead": true}'
        start_response("200 OK", [])
        return [b'{"Item": {"pk": {"S": "a"}}}']

    counter = CallCounter(moto, meter_capacity=metered)
    call = EnvironBuilder(method="POST", path="/", data=b'{"ConsistentRead": true}', headers={
        "X-Amz-Target": "DynamoDB_20120810.GetItem",
        "Authorization": "AWS4-HMAC-SHA256 Credential=test/20261126/us-east-1/dynamodb/aws4_request"}).get_environ()
    assert b"".join(counter(call, lambda *_: None)) == b'{"Item": {"pk": {"S": "a"}}}'
    assert counter._calls["dynamodb.GetItem"][0] == 1
    assert counter._units == ({"dynamodb.GetItem": 1.0} if metered else {}), "unmetered: the call is not read again"
    answered: list[str] = []
    body = b"".join(counter(EnvironBuilder(path=CallCounter.CAPACITY_PATH).get_environ(),
                            lambda status, headers: answered.append(status)))
    if metered:
        assert answered == ["200 OK"] and json.loads(body) == {"dynamodb.GetItem": 1.0}
    else:
        assert answered == ["404 Not Found"] and b"--meter-capacity" in body


def test_the_server_counts_dynamodb_request_units_and_passes_the_call_through(moto_endpoint: str) -> None:
    def units() -> dict[str, float]:
        return httpx.get(f"{moto_endpoint}/_spillway/capacity", timeout=5).raise_for_status().json()

    ddb = ddb_client(moto_endpoint)
    create_table(ddb, "capacity")
    before = units()
    ddb.put_item(TableName="capacity", Item={"pk": {"S": "a"}, "blob": {"S": "x" * 1500}})  # 2 KB: 2 units
    got = ddb.get_item(TableName="capacity", Key={"pk": {"S": "a"}}, ConsistentRead=True)
    assert got["Item"]["blob"]["S"] == "x" * 1500  # the request body read for counting still reached moto
    after = units()
    assert after["dynamodb.PutItem"] - before.get("dynamodb.PutItem", 0) == 2
    assert after["dynamodb.GetItem"] - before.get("dynamodb.GetItem", 0) == 1  # strongly consistent, under 4 KB
