"""The RunPod adapter against a real local HTTP server speaking RunPod's serverless shapes; billing
arithmetic; webhook tokens."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import ValidationError

from spillway.faas.billing import billed_seconds, cost_micro, reservation_micro, seconds_for
from spillway.faas.provider import (
    FaasFailureKind,
    FaasRefused,
    FaasRejected,
    FaasRequest,
    FaasState,
    FaasStatus,
    FaasUnavailable,
)
from spillway.faas.runpod import TIMEOUT, RunPodProvider, parse_status
from spillway.faas.webhook import verify, webhook_token, webhook_url
from spillway.models import ErrorType

ENDPOINT = "ep-abc123"
KEY = "rp-test-key"
TASK = "t-" + "0" * 32
JOB = "6de99fd1-4474-4565-9243-694ffeb65218-u1"


@dataclass
class Answer:
    status: int
    body: Any
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeRunPod:
    """A local server answering what a test scripts, per (method, path); it records every request."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Answer] = {}
        self.seen: list[Seen] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # see DESIGN.md: else ~40 ms per request on a kept connection
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                      json.loads(raw) if raw else None))
                answer = fake.answers.get((self.command, self.path), Answer(404, {"error": "not found"}))
                time.sleep(answer.delay_s)
                body = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (a timeout test)

            do_GET = do_POST = answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def on(self, method: str, path: str, status: int, body: Any, **extra: Any) -> None:
        self.answers[(method, f"/v2/{ENDPOINT}{path}")] = Answer(status, body, **extra)


@pytest.fixture(scope="module")
def runpod_server() -> Iterator[FakeRunPod]:
    fake = FakeRunPod()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def runpod(runpod_server: FakeRunPod) -> FakeRunPod:
    """The module's server, with no answers scripted and nothing seen yet."""
    runpod_server.answers.clear()
    runpod_server.seen.clear()
    return runpod_server


@pytest.fixture
def sent_timeouts() -> list[dict[str, float]]:
    return []


@pytest.fixture
def http(sent_timeouts: list[dict[str, float]]) -> Iterator[httpx.Client]:
    # The hook sees the timeouts each request actually carries.
    with httpx.Client(event_hooks={"request": [lambda r: sent_timeouts.append(r.extensions["timeout"])]}) as client:
        yield client


@pytest.fixture
def provider(runpod: FakeRunPod, http: httpx.Client) -> RunPodProvider:
    return RunPodProvider(runpod.url, ENDPOINT, lambda: KEY, http)


def request(**changes: Any) -> FaasRequest:
    fields: dict[str, Any] = {
        "task_id": TASK, "service": "remove_furniture",
        "input_url": "https://images.s3.amazonaws.com/uploads/a.png?X-Amz-Signature=abc%2Fdef",
        "output_url": "https://images.s3.amazonaws.com/results/a.png?X-Amz-Signature=123",
        "webhook_url": f"https://api.example.com/v1/faas/webhook/{TASK}?token=tok",
        "execution_timeout_s": 30,
    }
    return FaasRequest(**(fields | changes))


# ---- submit


def test_submit_posts_the_job_to_the_endpoints_run_route_with_the_key(provider: RunPodProvider,
                                                                      runpod: FakeRunPod) -> None:
    runpod.on("POST", "/run", 200, {"id": JOB, "status": "IN_QUEUE"})

    assert provider.submit(request()) == JOB

    (seen,) = runpod.seen
    assert (seen.method, seen.path) == ("POST", f"/v2/{ENDPOINT}/run")
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == {
        "input": {"service": "remove_furniture",
                  "input_url": "https://images.s3.amazonaws.com/uploads/a.png?X-Amz-Signature=abc%2Fdef",
                  "output_url": "https://images.s3.amazonaws.com/results/a.png?X-Amz-Signature=123",
                  "task_id": TASK},
        "webhook": f"https://api.example.com/v1/faas/webhook/{TASK}?token=tok",
        "policy": {"executionTimeout": 30_000},
    }


def test_submit_sends_a_ttl_when_asked_and_no_webhook_when_there_is_none(provider: RunPodProvider,
                                                                        runpod: FakeRunPod) -> None:
    runpod.on("POST", "/run", 200, {"id": JOB, "status": "IN_QUEUE"})

    provider.submit(request(webhook_url=None, ttl_s=120))

    body = runpod.seen[0].body
    assert "webhook" not in body
    assert body["policy"] == {"executionTimeout": 30_000, "ttl": 120_000}


def test_the_key_is_read_for_every_call_so_a_rotated_key_is_used(runpod: FakeRunPod, http: httpx.Client) -> None:
    keys = iter(["old-key", "new-key"])
    provider = RunPodProvider(runpod.url + "/", ENDPOINT, lambda: next(keys), http)
    runpod.on("POST", "/run", 200, {"id": JOB, "status": "IN_QUEUE"})

    provider.submit(request())
    provider.submit(request())

    assert [s.headers["authorization"] for s in runpod.seen] == ["Bearer old-key", "Bearer new-key"]


def test_an_accepted_submit_without_a_job_id_is_not_taken_for_a_job(provider: RunPodProvider,
                                                                   runpod: FakeRunPod) -> None:
    runpod.on("POST", "/run", 200, {"status": "IN_QUEUE"})
    with pytest.raises(FaasUnavailable) as caught:
        provider.submit(request())
    assert caught.value.request_sent is True


@pytest.mark.parametrize("changes", [{"execution_timeout_s": 5}, {"ttl_s": 9}, {"task_id": "t/../x"},
                                     {"input_url": "not a url"}, {"extra": 1}])
def test_a_request_runpod_would_refuse_is_refused_before_it_is_sent(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        request(**changes)


# ---- status and cancel


@pytest.mark.parametrize("answer, state, final", [
    ({"id": JOB, "status": "IN_QUEUE", "delayTime": 120}, FaasState.IN_QUEUE, False),
    ({"id": JOB, "status": "IN_PROGRESS", "delayTime": 2400}, FaasState.IN_PROGRESS, False),
    ({"id": JOB, "status": "RUNNING", "delayTime": 2400}, FaasState.IN_PROGRESS, False),
    ({"id": JOB, "status": "COMPLETED", "delayTime": 824, "executionTime": 3391,
      "output": {"result_key": "results/j/attempt-1.png"}}, FaasState.COMPLETED, True),
    ({"id": JOB, "status": "FAILED", "delayTime": 10, "executionTime": 20, "error": "BadInput: not an image"},
     FaasState.FAILED, True),
    ({"id": JOB, "status": "CANCELLED"}, FaasState.CANCELLED, True),
    ({"id": JOB, "status": "TIMED_OUT", "delayTime": 86_400_000}, FaasState.TIMED_OUT, True),
])
def test_status_reads_each_runpod_state(provider: RunPodProvider, runpod: FakeRunPod, answer: dict[str, Any],
                                        state: FaasState, final: bool) -> None:
    runpod.on("GET", f"/status/{JOB}", 200, answer)

    status = provider.status(JOB)

    assert (status.job_id, status.state, status.final) == (JOB, state, final)
    assert status.delay_ms == answer.get("delayTime")
    assert status.execution_ms == answer.get("executionTime")
    assert status.output == answer.get("output")
    assert runpod.seen[0].method == "GET"
    assert runpod.seen[0].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("error, kind, message", [
    ("BadInput: the image is corrupt", FaasFailureKind.BAD_INPUT, "BadInput: the image is corrupt"),
    ("InputUnavailable: GET input: 403", FaasFailureKind.INPUT_UNAVAILABLE, "InputUnavailable: GET input: 403"),
    ("OutputUpload: PUT output: 500", FaasFailureKind.OUTPUT_UPLOAD, "OutputUpload: PUT output: 500"),
    ("CUDA out of memory", FaasFailureKind.MODEL_ERROR, "CUDA out of memory"),
    ("BadInputs are fine", FaasFailureKind.MODEL_ERROR, "BadInputs are fine"),  # the prefix needs its colon
    # An unhandled exception in a worker built on RunPod's SDK: a JSON object in a string.
    (json.dumps({"error_type": "<class 'ValueError'>", "error_message": "BadInput: 0 bytes",
                 "error_traceback": "Traceback ..."}), FaasFailureKind.BAD_INPUT, "BadInput: 0 bytes"),
    (json.dumps({"error_type": "<class 'RuntimeError'>", "error_message": "boom"}), FaasFailureKind.MODEL_ERROR,
     "boom"),
    (None, FaasFailureKind.MODEL_ERROR, None),
])
def test_a_failed_jobs_error_says_its_kind(error: Any, kind: FaasFailureKind, message: str | None) -> None:
    status = parse_status({"id": JOB, "status": "FAILED", "error": error})
    assert (status.failure_kind, status.error) == (kind, message)


def test_failure_kinds_are_the_attempt_error_types() -> None:
    assert {ErrorType(kind.value) for kind in FaasFailureKind} <= set(ErrorType)


def test_only_a_failed_job_has_a_failure_kind() -> None:
    assert parse_status({"id": JOB, "status": "TIMED_OUT", "error": "BadInput: x"}).failure_kind is None


def test_an_unknown_state_is_not_guessed(provider: RunPodProvider, runpod: FakeRunPod) -> None:
    runpod.on("GET", f"/status/{JOB}", 200, {"id": JOB, "status": "PAUSED"})
    with pytest.raises(FaasUnavailable, match="unknown job status"):
        provider.status(JOB)


def test_cancel_posts_to_the_cancel_route(provider: RunPodProvider, runpod: FakeRunPod) -> None:
    runpod.on("POST", f"/cancel/{JOB}", 200, {"id": JOB, "status": "CANCELLED"})

    status = provider.cancel(JOB)

    assert (status.job_id, status.state) == (JOB, FaasState.CANCELLED)
    assert (runpod.seen[0].method, runpod.seen[0].path) == ("POST", f"/v2/{ENDPOINT}/cancel/{JOB}")


def test_a_job_id_cannot_reach_another_route(provider: RunPodProvider, runpod: FakeRunPod) -> None:
    runpod.on("GET", "/status/..%2Fpurge-queue", 200, {"id": "x", "status": "IN_QUEUE"})
    provider.status("../purge-queue")
    assert runpod.seen[0].path == f"/v2/{ENDPOINT}/status/..%2Fpurge-queue"


# ---- errors by kind


@pytest.mark.parametrize("status", [429, 503])
def test_throttled_or_out_of_capacity_is_refused(provider: RunPodProvider, runpod: FakeRunPod, status: int) -> None:
    runpod.on("POST", "/run", status, {"error": "too many requests"}, headers={"Retry-After": "3"})
    with pytest.raises(FaasRefused) as caught:
        provider.submit(request())
    assert (caught.value.status_code, caught.value.retry_after_s) == (status, 3.0)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_server_error_is_unavailable(provider: RunPodProvider, runpod: FakeRunPod, status: int) -> None:
    runpod.on("POST", "/run", status, {"error": "internal"})
    with pytest.raises(FaasUnavailable) as caught:
        provider.submit(request())
    assert (caught.value.status_code, caught.value.request_sent) == (status, True)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_request_runpod_refuses_is_rejected(provider: RunPodProvider, runpod: FakeRunPod, status: int) -> None:
    runpod.on("GET", f"/status/{JOB}", status, {"error": "no"})
    with pytest.raises(FaasRejected) as caught:
        provider.status(JOB)
    assert caught.value.status_code == status
    assert KEY not in str(caught.value)


def test_a_body_that_is_not_json_is_unavailable(provider: RunPodProvider, runpod: FakeRunPod) -> None:
    runpod.on("GET", f"/status/{JOB}", 200, b"<html>gateway</html>")
    with pytest.raises(FaasUnavailable, match="not a JSON object"):
        provider.status(JOB)


def test_a_refused_connection_is_unavailable_and_nothing_was_sent(http: httpx.Client) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = RunPodProvider(f"http://127.0.0.1:{port}", ENDPOINT, lambda: KEY, http)

    with pytest.raises(FaasUnavailable) as caught:
        provider.submit(request())
    assert caught.value.request_sent is False  # the caller may release its reservation


def test_a_provider_that_does_not_answer_in_time_is_unavailable_and_the_job_may_exist(
        runpod: FakeRunPod, http: httpx.Client) -> None:
    runpod.on("POST", "/run", 200, {"id": JOB, "status": "IN_QUEUE"}, delay_s=1.0)
    provider = RunPodProvider(runpod.url, ENDPOINT, lambda: KEY, http,
                              timeout=httpx.Timeout(connect=2.0, read=0.2, write=2.0, pool=2.0))

    with pytest.raises(FaasUnavailable) as caught:  # the answer comes after 1 s: only the 0.2 s timeout ends it
        provider.submit(request())
    assert caught.value.request_sent is True  # RunPod may have queued it: keep the reservation
    assert len(runpod.seen) == 1  # and the submit was not retried


def test_every_call_carries_explicit_timeouts(provider: RunPodProvider, runpod: FakeRunPod,
                                              sent_timeouts: list[dict[str, float]]) -> None:
    runpod.on("POST", "/run", 200, {"id": JOB, "status": "IN_QUEUE"})
    runpod.on("GET", f"/status/{JOB}", 200, {"id": JOB, "status": "IN_QUEUE"})
    runpod.on("POST", f"/cancel/{JOB}", 200, {"id": JOB, "status": "CANCELLED"})

    provider.submit(request())
    provider.status(JOB)
    provider.cancel(JOB)

    assert (TIMEOUT.connect, TIMEOUT.read) == (2.0, 10.0)
    assert sent_timeouts == [{"connect": 2.0, "read": 10.0, "write": 10.0, "pool": 2.0}] * 3


# ---- billing


def final(execution_ms: int | None, state: FaasState = FaasState.COMPLETED) -> FaasStatus:
    return FaasStatus(job_id=JOB, state=state, delay_ms=5000, execution_ms=execution_ms)


@pytest.mark.parametrize("execution_ms, overhead_s, price, seconds, micro", [
    (1000, 0, "0.00031", 1, 310),
    (1001, 0, "0.00031", 2, 620),  # a started second is a billed second
    (0, 0, "0.00031", 0, 0),
    (3391, 0, Decimal("0.00019"), 4, 760),
    (12_345, 5, "0.00031", 18, 5580),  # overhead: the job's share of cold start and idle timeout
    (2300, 0.7, "0.00031", 3, 930),  # exactly 3 s: not a fourth
    (3000, 0, "0.0001305", 3, 392),  # 391.5 micro-dollars, rounded up
    (3000, 0, 0.00031, 3, 930),  # a float price is read through its text
    (600_000, 0, "0.00076", 600, 456_000),
])
def test_a_job_costs_its_billed_seconds_at_the_price(execution_ms: int, overhead_s: float, price: Any,
                                                     seconds: int, micro: int) -> None:
    assert billed_seconds(final(execution_ms), overhead_s) == seconds
    assert cost_micro(final(execution_ms), price, overhead_s) == micro


def test_the_queue_wait_is_not_billed() -> None:
    quick = FaasStatus(job_id=JOB, state=FaasState.COMPLETED, delay_ms=0, execution_ms=2000)
    waited = FaasStatus(job_id=JOB, state=FaasState.COMPLETED, delay_ms=60_000, execution_ms=2000)
    assert cost_micro(quick, "0.00031") == cost_micro(waited, "0.00031") == 620


@pytest.mark.parametrize("state", [FaasState.CANCELLED, FaasState.TIMED_OUT, FaasState.FAILED])
def test_a_cost_the_status_does_not_tell_is_unknown(state: FaasState) -> None:
    assert billed_seconds(final(None, state)) is None
    assert cost_micro(final(None, state), "0.00031") is None


def test_a_job_still_under_way_has_no_cost_yet() -> None:
    with pytest.raises(ValueError, match="not known yet"):
        cost_micro(final(1000, FaasState.IN_PROGRESS), "0.00031")


@pytest.mark.parametrize("max_seconds, price, micro", [
    (30, "0.00031", 9300),
    (30.2, "0.00031", 9610),
    (35, "0.0001305", 4568),  # 4567.5, rounded up
    (0, "0.00031", 0),
])
def test_the_reservation_covers_the_most_a_job_can_cost(max_seconds: float, price: str, micro: int) -> None:
    assert reservation_micro(max_seconds, price) == micro
    # Nothing the job is billed within its bound costs more than was reserved.
    assert cost_micro(final(int(max_seconds * 1000)), price) <= micro


def test_float_noise_never_bills_an_extra_second() -> None:
    assert 0.1 * 3 * 10 > 3
    assert seconds_for(0.1 * 3 * 10) == 3


def test_prices_and_durations_are_never_negative() -> None:
    with pytest.raises(ValueError):
        reservation_micro(10, "-0.1")


# ---- webhook tokens

WEBHOOK_KEY = b"k" * 32


def test_a_webhook_url_carries_the_tasks_token() -> None:
    url = webhook_url("https://api.example.com/", TASK, WEBHOOK_KEY)

    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "api.example.com", f"/v1/faas/webhook/{TASK}")
    (token,) = parse_qs(parts.query)["token"]
    assert verify(WEBHOOK_KEY, TASK, token)
    assert "=" not in token and "+" not in token and "/" not in token  # URL-safe as it is


def test_verify_accepts_the_tasks_token_only() -> None:
    token = webhook_token(WEBHOOK_KEY, TASK)
    other_task = "t-" + "1" * 32

    assert verify(WEBHOOK_KEY, TASK, token) is True
    assert verify(WEBHOOK_KEY, TASK, token[:-1] + ("A" if token[-1] != "A" else "B")) is False
    assert verify(WEBHOOK_KEY, TASK, webhook_token(WEBHOOK_KEY, other_task)) is False  # another task's
    assert verify(WEBHOOK_KEY, other_task, token) is False
    assert verify(b"x" * 32, TASK, token) is False  # another key (a rotated one)
    assert verify(WEBHOOK_KEY, TASK, "") is False
    assert verify(WEBHOOK_KEY, TASK, None) is False
    assert verify(WEBHOOK_KEY, TASK, "é" * 43) is False  # not even ASCII: refused, not an exception
    assert verify(b"", TASK, token) is False


def test_a_webhook_key_must_be_long_enough() -> None:
    with pytest.raises(ValueError):
        webhook_token(b"short", TASK)
