"""The local runtime plays API Gateway and Lambda's SQS poller as AWS does, for any handler."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from werkzeug.test import Client

from spillway_embedded import runtime
from spillway_embedded.provision import Function, QueueSource, Route, Stack
from spillway_embedded.runtime import HttpApi, Invoker, QueuePoller, rate_seconds
from spillway_embedded.tenants import TenantEntry, Tenants, load_tenants

import runtime_handlers

REGION = "us-east-1"
TENANTS = Tenants([TenantEntry(name="acme", token="acme-token-0123456789"),
                   TenantEntry(name="zeta", token="zeta-token-0123456789",
                               principal="arn:aws:sts::123456789012:assumed-role/zeta-app/session-1")], "123456789012")
FUNCTION = Function(
    logical_id="Recorder", name="recorder", arn="arn:aws:lambda:us-east-1:123456789012:function:recorder",
    handler="runtime_handlers.handler", timeout=30, memory_mb=128, environment={},
)


@pytest.fixture(autouse=True)
def fresh_recorder() -> Iterator[None]:
    runtime_handlers.events.clear()
    runtime_handlers.answer = None
    runtime_handlers.under_way, runtime_handlers.let_go = threading.Semaphore(0), threading.Event()
    yield
    runtime_handlers.events.clear()


def invoker() -> Invoker:
    return Invoker(FUNCTION, REGION, "123456789012")


# ---------------------------------------------------------------- HTTP API


@pytest.fixture
def http() -> Client:
    stack = Stack(name="t", region=REGION, functions={"Recorder": FUNCTION}, routes=[
        Route("POST", "/v1/jobs", "Recorder"),
        Route("GET", "/v1/jobs/{job_id}", "Recorder"),
        Route("ANY", "/v1/files/{proxy+}", "Recorder"),
        Route("GET", "/v1/mine", "Recorder", iam=True),
    ])
    return Client(HttpApi(stack, {"Recorder": invoker()}, api_id="abc123", tenants=TENANTS))


def test_a_request_becomes_a_payload_v2_event(http: Client) -> None:
    runtime_handlers.answer = {"statusCode": 201, "headers": {"X-Job": "j-1"}, "body": '{"ok": true}'}
    response = http.post("/v1/jobs?dry=1&dry=2", json={"service": "x"}, headers={"X-Trace": "t-9"})

    assert response.status_code == 201 and response.json == {"ok": True}
    assert response.headers["X-Job"] == "j-1"
    (call,) = runtime_handlers.events
    event = call["event"]
    assert event["version"] == "2.0" and event["routeKey"] == "POST /v1/jobs"
    assert event["rawPath"] == "/v1/jobs" and event["rawQueryString"] == "dry=1&dry=2"
    assert event["queryStringParameters"] == {"dry": "1,2"}
    assert event["headers"]["x-trace"] == "t-9"
    assert json.loads(event["body"]) == {"service": "x"} and event["isBase64Encoded"] is False
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["requestContext"]["apiId"] == "abc123" and event["requestContext"]["stage"] == "$default"
    assert call["function_name"] == "recorder" and 0 < call["remaining_ms"] <= 30_000


def test_path_parameters_and_greedy_routes(http: Client) -> None:
    runtime_handlers.answer = {"statusCode": 200, "body": "{}"}
    http.get("/v1/jobs/j-42")
    http.delete("/v1/files/a/b/c.png")
    first, second = (c["event"] for c in runtime_handlers.events)
    assert first["pathParameters"] == {"job_id": "j-42"} and first["routeKey"] == "GET /v1/jobs/{job_id}"
    assert second["pathParameters"] == {"proxy": "a/b/c.png"} and second["routeKey"] == "ANY /v1/files/{proxy+}"


def test_no_route_is_a_404_and_the_handler_is_not_called(http: Client) -> None:
    assert http.get("/v1/nowhere").status_code == 404
    assert http.get("/v1/jobs").status_code == 404, "the method is part of the route"
    assert http.get("/v1/jobs/a/b").status_code == 404, "a path parameter is one segment"
    assert runtime_handlers.events == []


def test_an_iam_route_takes_a_tenants_token_and_names_its_principal_as_api_gateway_does(http: Client) -> None:
    runtime_handlers.answer = {"statusCode": 200, "body": "{}"}
    assert http.get("/v1/mine", headers={"Authorization": "Bearer acme-token-0123456789"}).status_code == 200
    assert http.get("/v1/mine", headers={"Authorization": "bearer zeta-token-0123456789"}).status_code == 200
    acme, zeta = (c["event"]["requestContext"]["authorizer"]["iam"] for c in runtime_handlers.events)
    assert acme["userArn"] == "arn:aws:iam::123456789012:user/acme" and acme["accountId"] == "123456789012"
    assert zeta["userArn"] == "arn:aws:sts::123456789012:assumed-role/zeta-app/session-1"
    http.get("/v1/jobs/j-1", headers={"Authorization": "Bearer acme-token-0123456789"})
    unsigned = runtime_handlers.events[-1]["event"]
    assert "authorizer" not in unsigned["requestContext"], "a route without IAM auth names no caller"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789", "acme-token-0123456789",
                                           "Basic acme-token-0123456789"])
def test_no_or_an_unknown_token_is_a_403_before_any_handler(http: Client, authorization: str | None) -> None:
    response = http.get("/v1/mine", headers={"Authorization": authorization} if authorization else {})
    assert response.status_code == 403 and "Bearer" in response.json["message"]
    assert runtime_handlers.events == []


def test_the_default_tenant_is_always_there_and_a_tenants_file_adds_more(tmp_path: Path) -> None:
    file = tmp_path / "tenants.toml"
    file.write_text('[[tenants]]\nname = "acme"\ntoken = "acme-token-0123456789"\n')
    tenants = load_tenants(file, "123456789012")
    assert set(tenants.tokens) == {"default", "acme"} and len(tenants.tokens["default"]) >= 16
    assert tenants.authorizer(f"Bearer {tenants.tokens['default']}")["iam"]["userArn"].endswith(":user/default")
    file.write_text('[[tenants]]\nname = "acme"\ntoken = "short"\n')
    with pytest.raises(ValueError, match="tenants.toml"):
        load_tenants(file, "123456789012")


def test_a_raising_handler_is_a_500_not_a_dead_server(http: Client) -> None:
    runtime_handlers.answer = RuntimeError("boom")
    response = http.post("/v1/jobs", json={})
    assert response.status_code == 500 and response.json == {"message": "Internal Server Error"}
    runtime_handlers.answer = {"statusCode": 204, "body": ""}
    assert http.post("/v1/jobs", json={}).status_code == 204


def test_a_function_busy_for_longer_than_a_caller_waits_is_throttled_with_a_429(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As API Gateway answers when Lambda throttles: requests do not queue behind a busy function
    without bound (here the function has one container)."""
    monkeypatch.setattr(runtime, "THROTTLE_AFTER_S", 0.2)
    busy = invoker()
    http = Client(HttpApi(Stack(name="t", region=REGION, functions={"Recorder": FUNCTION},
                                routes=[Route("POST", "/v1/jobs", "Recorder")]), {"Recorder": busy}, api_id="a",
                          tenants=TENANTS))
    running, release = threading.Event(), threading.Event()
    runtime_handlers.answer = lambda event: (running.set(), release.wait(10), {"statusCode": 202})[-1]
    first = threading.Thread(target=lambda: http.post("/v1/jobs", json={}))
    first.start()
    try:
        assert running.wait(10)
        throttled = http.post("/v1/jobs", json={})
        assert throttled.status_code == 429 and throttled.get_json() == {"message": "Too Many Requests"}
    finally:
        release.set()
        first.join(10)
    runtime_handlers.answer = {"statusCode": 202}
    assert http.post("/v1/jobs", json={}).status_code == 202, "free again: served"


def test_binary_bodies_travel_base64_both_ways(http: Client) -> None:
    png = b"\x89PNG\r\n\x1a\n\xff\x00"
    runtime_handlers.answer = {"statusCode": 200, "headers": {"Content-Type": "image/png"},
                               "body": base64.b64encode(png).decode(), "isBase64Encoded": True}
    response = http.post("/v1/jobs", data=png, content_type="application/octet-stream")
    assert response.data == png and response.headers["Content-Type"] == "image/png"
    event = runtime_handlers.events[0]["event"]
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == png


def test_a_bare_return_value_is_a_200_json_body(http: Client) -> None:
    runtime_handlers.answer = {"job_id": "j-1"}
    response = http.post("/v1/jobs", json={})
    assert response.status_code == 200 and response.json == {"job_id": "j-1"}


# ---------------------------------------------------------------- SQS event sources


@pytest.fixture
def sqs() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sqs", region_name=REGION)


def queue_source(sqs: Any, batch_size: int, report_failures: bool = True, visibility_s: int = 0) -> QueueSource:
    url = sqs.create_queue(QueueName="work", Attributes={"VisibilityTimeout": str(visibility_s)})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return QueueSource(function="Recorder", queue_arn=arn, queue_url=url, batch_size=batch_size,
                       report_batch_item_failures=report_failures, batching_window_s=0, enabled=True)


def remaining(sqs: Any, source: QueueSource) -> list[str]:
    messages = sqs.receive_message(QueueUrl=source.queue_url, MaxNumberOfMessages=10)
    return sorted(m["Body"] for m in messages.get("Messages", []))


def poll(sqs: Any, source: QueueSource) -> int:
    return QueuePoller(source, invoker(), sqs, REGION, wait_seconds=0).poll_once(threading.Event())


def send(sqs: Any, source: QueueSource, *bodies: str) -> None:
    for body in bodies:
        sqs.send_message(QueueUrl=source.queue_url, MessageBody=body,
                         MessageAttributes={"kind": {"DataType": "String", "StringValue": "test"}})


def fail_bodies(*bodies: str) -> Any:
    def answer(event: dict[str, Any]) -> dict[str, Any]:
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]}
                                      for r in event["Records"] if r["body"] in bodies]}
    return answer


def test_a_batch_is_an_sqs_event_and_is_deleted_when_handled(sqs: Any) -> None:
    source = queue_source(sqs, batch_size=10)
    send(sqs, source, "a", "b", "c")
    runtime_handlers.answer = {"batchItemFailures": []}
    assert poll(sqs, source) == 3
    record = runtime_handlers.events[0]["event"]["Records"][0]
    assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"] == source.queue_arn
    assert record["messageAttributes"]["kind"]["stringValue"] == "test"
    assert {"messageId", "receiptHandle", "md5OfBody", "attributes", "awsRegion"} <= record.keys()
    assert remaining(sqs, source) == []


def test_batch_size_is_respected(sqs: Any) -> None:
    source = queue_source(sqs, batch_size=1)
    send(sqs, source, "a", "b")
    assert poll(sqs, source) == 1
    assert len(runtime_handlers.events[0]["event"]["Records"]) == 1


def test_reported_failures_stay_on_the_queue(sqs: Any) -> None:
    source = queue_source(sqs, batch_size=10)
    send(sqs, source, "a", "b", "c")
    runtime_handlers.answer = fail_bodies("b")
    poll(sqs, source)
    assert remaining(sqs, source) == ["b"]


def test_reported_failures_are_ignored_without_report_batch_item_failures(sqs: Any) -> None:
    source = queue_source(sqs, batch_size=10, report_failures=False)
    send(sqs, source, "a", "b")
    runtime_handlers.answer = fail_bodies("b")
    poll(sqs, source)
    assert remaining(sqs, source) == [], "without the setting, a returning handler means the batch succeeded"


def test_an_unknown_item_identifier_fails_the_whole_batch(sqs: Any) -> None:
    source = queue_source(sqs, batch_size=10)
    send(sqs, source, "a", "b")
    runtime_handlers.answer = {"batchItemFailures": [{"itemIdentifier": ""}]}
    poll(sqs, source)
    assert remaining(sqs, source) == ["a", "b"]


def test_a_raising_handler_deletes_nothing(sqs: Any) -> None:
    source = queue_source(sqs, batch_size=10)
    send(sqs, source, "a", "b")
    runtime_handlers.answer = RuntimeError("crashed")
    poll(sqs, source)
    assert remaining(sqs, source) == ["a", "b"]


def test_a_backlog_is_handled_in_as_many_batches_at_once_as_the_function_has_containers(sqs: Any) -> None:
    source = queue_source(sqs, batch_size=1, visibility_s=30)
    send(sqs, source, "a", "b", "c")
    runtime_handlers.answer = lambda event: (runtime_handlers.under_way.release(), runtime_handlers.let_go.wait(10),
                                             {"batchItemFailures": []})[-1]
    recorder = dataclasses.replace(FUNCTION, handler="container_handlers.recorder")
    poller = QueuePoller(source, Invoker(recorder, REGION, "123456789012", concurrency=2), sqs, REGION,
                         wait_seconds=0)
    stopping = threading.Event()
    polling = threading.Thread(target=poller.run, args=(stopping,), daemon=True)
    polling.start()
    try:
        for _ in range(2):
            assert runtime_handlers.under_way.acquire(timeout=10), "two batches under way at once"
        visible = sqs.get_queue_attributes(QueueUrl=source.queue_url, AttributeNames=["ApproximateNumberOfMessages"])
        assert visible["Attributes"]["ApproximateNumberOfMessages"] == "1", "the third waits for a container"
        runtime_handlers.let_go.set()
        assert runtime_handlers.under_way.acquire(timeout=10), "then the third"
    finally:
        runtime_handlers.let_go.set()
        stopping.set()
        polling.join(15)  # stopping, it lets the batches under way end
    assert not polling.is_alive()
    assert sorted(e["event"]["Records"][0]["body"] for e in runtime_handlers.events) == ["a", "b", "c"]
    assert remaining(sqs, source) == [], "each deleted once handled"


# ---------------------------------------------------------------- schedules


def test_rate_expressions() -> None:
    assert rate_seconds("rate(1 minute)") == 60
    assert rate_seconds("rate(5 minutes)") == 300
    assert rate_seconds("rate(2 hours)") == 7200
    with pytest.raises(NotImplementedError, match="cron"):
        rate_seconds("cron(0 9 * * ? *)")


# ---------------------------------------------------------------- one process, many functions


def test_functions_interleaved_in_one_process_keep_their_own_log_keys_and_metrics(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import shared_state_handlers as handlers

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    first, second = (Invoker(Function(
        logical_id=name.capitalize() + "Function", name=f"stack-{name}", arn=f"{FUNCTION.arn}-{name}",
        handler=f"shared_state_handlers.{name}", timeout=30, memory_mb=128, environment={},
    ), REGION, "123456789012") for name in ("first", "second"))

    running = threading.Thread(target=first, args=({"job_id": "job-a"},))
    running.start()
    assert handlers.paused.wait(10)
    second({"job_id": "job-b"})  # a whole invocation while the first is under way
    handlers.resume.set()
    running.join(10)

    logged = {line["message"]: line for line in map(json.loads, handlers.lines.getvalue().splitlines())}
    assert logged["first ends"]["function_name"] == "stack-first"
    assert logged["first ends"]["job_id"] == "job-a" and "gpu_id" not in logged["first ends"]
    assert logged["second ends"]["function_name"] == "stack-second" and logged["second ends"]["job_id"] == "job-b"
    assert logged["first ends"]["function_request_id"] != logged["second ends"]["function_request_id"]
    flushed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    published = [[m["Name"] for m in f["_aws"]["CloudWatchMetrics"][0]["Metrics"]] for f in flushed]
    assert sorted(published) == [["FirstRan"], ["SecondRan"]]  # each function flushed its own, once


def test_http_functions_interleaved_in_one_process_each_resolve_their_own_request() -> None:
    """Powertools keeps the request being resolved on BaseRouter, a class shared by every resolver: a route
    read another function's request (its path, its caller's identity) whenever their invocations overlapped."""
    import shared_state_handlers as handlers
    from helpers import http_event

    first, second = (Invoker(Function(
        logical_id=name.capitalize() + "Function", name=f"stack-{name}", arn=f"{FUNCTION.arn}-{name}",
        handler=f"shared_state_handlers.{name}_api", timeout=30, memory_mb=128, environment={},
    ), REGION, "123456789012") for name in ("first", "second"))
    answers: dict[str, Any] = {}
    running = threading.Thread(target=lambda: answers.update(first=first(http_event("GET", "/first"))))
    running.start()
    assert handlers.api_paused.wait(10)
    answers["second"] = second(http_event("GET", "/second"))  # a whole request while the first's is under way
    handlers.api_resume.set()
    running.join(10)
    assert json.loads(answers["first"]["body"]) == {"path": "/first", "function": "stack-first"}
    assert json.loads(answers["second"]["body"]) == {"path": "/second", "function": "stack-second"}


def test_only_shared_powertools_state_is_copied_per_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """A metric emitted alone (its own provider, as `spillway.metrics` does) leaves no copy behind: a long
    `spillway dev` does not accumulate them, and a new object never inherits a dead one's copy."""
    from spillway import metrics
    from spillway_embedded import function_state

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    context = function_state.function_context()

    def emit_many() -> int:
        for _ in range(200):
            metrics.emit(metrics.Metric.TASKS_STARTED, 1)
        return len(function_state._COPIES.get())

    assert context.run(emit_many) == 0


# ---------------------------------------------------------------- one function, many containers


def test_a_function_scales_out_to_containers_of_its_own_and_reuses_the_warm_ones() -> None:
    """Two invocations of one function at once run in two containers, each with its own copy of the handler's
    module: the resolver's context the one appended its caller to is not the other's, as on Lambda."""
    import container_handlers as imported

    from helpers import http_event

    function = Function(logical_id="Agents", name="stack-agents", arn=f"{FUNCTION.arn}-agents",
                        handler="container_handlers.handler", timeout=30, memory_mb=128, environment={})
    agents = Invoker(function, REGION, "123456789012", concurrency=2)

    def whoami(caller: str, pause: bool = False, wait: float | None = None) -> dict[str, Any]:
        headers = {"x-caller": caller, **({"x-pause": "1"} if pause else {})}
        return json.loads(agents(http_event("GET", "/whoami", headers=headers, principal=None), wait=wait)["body"])

    answers: dict[str, Any] = {}
    calls = [threading.Thread(target=lambda c=caller: answers.update({c: whoami(c, pause=True)}))
             for caller in ("gpu-1", "gpu-2")]
    for call in calls:
        call.start()
    try:
        for _ in calls:
            assert runtime_handlers.under_way.acquire(timeout=10), "both invocations under way at once"
        with pytest.raises(runtime.Throttled):
            whoami("gpu-3", wait=0.1)  # both containers busy: the function's concurrency is used up
    finally:
        runtime_handlers.let_go.set()
        for call in calls:
            call.join(10)

    assert answers["gpu-1"]["caller"] == "gpu-1" and answers["gpu-2"]["caller"] == "gpu-2"
    modules = {answer["module"] for answer in answers.values()}
    assert len(modules) == 2 and id(vars(imported)) in modules, "the first container runs the imported module"
    assert all(answer["imports"] == 1 for answer in answers.values()), "each executed its own once"
    assert {whoami(f"gpu-{n}")["module"] for n in range(4)} <= modules, "the warm containers serve next"
    assert agents.containers == 2 and agents.invocations == 6
    assert agents.wait_idle(timeout=1)
