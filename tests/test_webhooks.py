"""Completion webhooks: where a webhook_url may point, what the sender signs and sends, when it retries."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from spillway import aws, signing, webhooks
from spillway.jobs import JobStore
from spillway.models import JobStatus
from spillway.webhooks import DeliveryFailed, NotYet, WebhookSender

from conftest import Cloud
from helpers import LambdaContext, http_event, job_id_for, running_job

SECRET = base64.b64encode(b"s" * 32).decode()
NOW = 1_790_000_000.0


@pytest.mark.parametrize("url, why", [
    ("http://hooks.example.com/x", "must be https"),
    ("https://10.1.2.3/x", "public address"),
    ("https://169.254.169.254/latest/meta-data", "public address"),
    ("https://[fd00::1]/x", "public address"),
    ("ftp://hooks.example.com/x", "URL scheme"),
])
def test_a_webhook_url_must_be_public_https(url: str, why: str) -> None:
    assert why in (webhooks.refusal(url, allow_loopback=True) or "")


def test_loopback_is_for_the_embedded_stack_only() -> None:
    assert webhooks.refusal("http://127.0.0.1:8000/hook", allow_loopback=True) is None
    assert "loopback" in (webhooks.refusal("http://127.0.0.1:9001/2018-06-01/runtime", allow_loopback=False) or "")
    assert "loopback" in (webhooks.refusal("https://localhost/hook", allow_loopback=False) or "")
    assert webhooks.refusal("https://hooks.example.com/spillway", allow_loopback=False) is None


def test_submit_refuses_a_bad_webhook_url_with_a_reason(cloud: Cloud) -> None:
    from spillway.handlers import api

    body = {"service": "upscale_2x", "input_key": "uploads/" + "a" * 32 + ".png",
            "webhook_url": "http://hooks.example.com/x"}
    response = api.handler(http_event("POST", "/v1/jobs", body), LambdaContext("ApiFunction"))
    assert response["statusCode"] == 422 and "https" in json.loads(response["body"])["message"]


class Receiver:
    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.answers.pop(0) if self.answers else 204)


def sender(cloud: Cloud, receiver: Receiver) -> tuple[WebhookSender, JobStore]:
    jobs = JobStore(aws.table(cloud.settings.jobs_table))
    http = httpx.Client(transport=httpx.MockTransport(receiver))
    return WebhookSender(jobs, http, lambda: [signing.secret_bytes(SECRET)], allow_loopback=False,
                         clock=lambda: NOW), jobs


def ended_job(cloud: Cloud, jobs: JobStore, status: JobStatus | None, url: str = "https://hooks.example.com/s"
              ) -> str:
    job_id = job_id_for(7)
    running_job(cloud.settings, job_id)
    aws.table(cloud.settings.jobs_table).update_item(
        Key={"job_id": job_id}, UpdateExpression="SET webhook_url = :u, attempts[0].started_at = :t",
        ExpressionAttributeValues={":u": url, ":t": "2026-11-26T11:59:00+00:00"})
    if status is not None:
        jobs.close(job_id, status, "2026-11-26T12:00:00.000+00:00", error="Spillway.ModelError: it broke")
    return job_id


def test_an_ended_job_is_told_once_signed_and_its_delivery_noted(cloud: Cloud) -> None:
    receiver = Receiver([204])
    send, jobs = sender(cloud, receiver)
    job_id = ended_job(cloud, jobs, JobStatus.FAILED)
    assert send.deliver(job_id) == "delivered"
    (request,) = receiver.requests
    assert str(request.url) == "https://hooks.example.com/s"
    assert signing.verify([signing.secret_bytes(SECRET)], request.headers, request.content, NOW) \
        == f"msg_{job_id}_failed"
    event = json.loads(request.content)
    assert event["type"] == "job.failed" and event["timestamp"] == "2026-11-26T12:00:00.000+00:00"
    assert event["data"] | {"cost_usd": 0} == {"job_id": job_id, "status": "FAILED", "service": "remove_furniture",
                                               "finished_at": "2026-11-26T12:00:00.000+00:00", "cost_usd": 0,
                                               "error": "Spillway.ModelError: it broke"}
    assert jobs.get(job_id).webhook_delivered_at
    assert send.deliver(job_id) == "delivered_before" and len(receiver.requests) == 1


def test_a_job_not_ended_yet_or_a_refusing_receiver_is_retried_and_nothing_is_noted(cloud: Cloud) -> None:
    receiver = Receiver([500, 302])
    send, jobs = sender(cloud, receiver)
    job_id = ended_job(cloud, jobs, None)
    with pytest.raises(NotYet):
        send.deliver(job_id)
    assert receiver.requests == []
    jobs.close(job_id, JobStatus.SUCCEEDED, "2026-11-26T12:00:00.000+00:00")
    with pytest.raises(DeliveryFailed, match="500"):
        send.deliver(job_id)
    with pytest.raises(DeliveryFailed, match="302"):  # a redirect is not followed: the event goes where it was sent
        send.deliver(job_id)
    assert jobs.get(job_id).webhook_delivered_at is None
    assert send.deliver(job_id) == "delivered"
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {f"msg_{job_id}_succeeded"}, "every retry is the same event"


def test_a_webhook_url_the_sender_may_not_call_is_dropped(cloud: Cloud) -> None:
    receiver = Receiver([])
    send, jobs = sender(cloud, receiver)
    job_id = ended_job(cloud, jobs, JobStatus.CANCELLED, url="http://127.0.0.1:9001/runtime")
    assert send.deliver(job_id) == "dropped" and receiver.requests == []


def test_retries_back_off_from_two_seconds_to_a_quarter_hour() -> None:
    assert [webhooks.retry_delay(n) for n in range(1, 12)] == [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]
