"""The job API through its Lambda handler, with API Gateway HTTP API (v2) events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spillway import aws
from spillway.rooms import render_room

from conftest import Cloud
from helpers import TENANT_ARN, UPLOAD_A, UPLOAD_B, LambdaContext, http_event

OTHER_TENANT = "arn:aws:sts::123456789012:assumed-role/other-app/session-7"


def call(method: str, path: str, body: Any = None, raw: str | None = None,
         headers: dict[str, str] | None = None, principal: str | None = TENANT_ARN,
         query: dict[str, str] | None = None) -> tuple[int, dict]:
    from spillway.handlers import api

    event = http_event(method, path, body, raw, headers, principal=principal, query=query)
    response = api.handler(event, LambdaContext("ApiFunction"))
    return response["statusCode"], json.loads(response["body"])


def upload(cloud: Cloud, data: bytes, principal: str = TENANT_ARN) -> str:
    status, ticket = call("POST", "/v1/uploads", {"content_type": "image/png"}, principal=principal)
    assert status == 200
    aws.client("s3").put_object(Bucket=cloud.settings.images_bucket, Key=ticket["input_key"], Body=data)
    return ticket["input_key"]


def written(cloud: Cloud) -> tuple[int, int]:
    """(job records, intake messages): what a submission leaves behind."""
    jobs = aws.table(cloud.settings.jobs_table).scan()["Count"]
    sqs = aws.client("sqs")
    queued = sum(
        int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
            ["Attributes"]["ApproximateNumberOfMessages"])
        for url in cloud.settings.intake_queue_urls.values()
    )
    return jobs, queued


def test_upload_ticket_is_a_presigned_post_with_a_byte_limit(cloud: Cloud) -> None:
    import base64

    from spillway.intake import MAX_INPUT_BYTES

    status, ticket = call("POST", "/v1/uploads", {})
    assert status == 200
    assert ticket["method"] == "POST" and ticket["input_key"].startswith("uploads/")
    assert ticket["fields"]["key"] == ticket["input_key"] and ticket["fields"]["Content-Type"] == "image/png"
    policy = json.loads(base64.b64decode(ticket["fields"]["policy"]))
    assert ["content-length-range", 1, MAX_INPUT_BYTES] in policy["conditions"]
    assert ticket["max_bytes"] == MAX_INPUT_BYTES


def test_the_job_runs_on_the_version_of_the_input_judged(cloud: Cloud) -> None:
    """Pinned at submit by the upload's S3 version (the bucket is versioned; no copy is written): a later
    write to the upload's key (its URL is valid for 15 min) changes nothing."""
    image = render_room(1, 320, 240)
    key = upload(cloud, image)
    status, accepted = call("POST", "/v1/jobs", {"service": "upscale_2x", "input_key": key})
    assert status == 202
    (message,) = cloud.queue_messages("IntakeNormalQueue")
    assert message["input_key"] == key and message["input_version"]
    s3 = aws.client("s3")
    s3.put_object(Bucket=cloud.settings.images_bucket, Key=key, Body=render_room(1, 4000, 3000))
    pinned = s3.get_object(Bucket=cloud.settings.images_bucket, Key=key, VersionId=message["input_version"])
    assert pinned["Body"].read() == image
    assert s3.list_objects_v2(Bucket=cloud.settings.images_bucket, Prefix="inputs/").get("KeyCount") == 0


def test_submit_records_the_job_and_queues_it_by_priority(cloud: Cloud) -> None:
    key = upload(cloud, render_room(1, 800, 600))
    status, accepted = call("POST", "/v1/jobs", {"service": "remove_furniture", "input_key": key, "priority": "high"})
    assert status == 202 and accepted["status"] == "QUEUED"
    (message,) = cloud.queue_messages("IntakeHighQueue")
    assert message["job_id"] == accepted["job_id"]
    assert message["vram_mb"] == 2000 + 720, "VRAM need grows with the image: 0.48 MP at 1500 MB/MP"
    assert message["compute"] == 25 + 3, "and its compute share: 0.48 MP at 5% a MP, rounded up"

    status, view = call("GET", f"/v1/jobs/{accepted['job_id']}")
    assert status == 200
    assert (view["status"], view["width"], view["height"], view["attempts"]) == ("QUEUED", 800, 600, [])


def test_a_job_no_registered_gpu_could_ever_hold_is_refused_at_submit(cloud: Cloud) -> None:
    import time

    from helpers import beat, fleet_for

    fleet_for(cloud.settings).heartbeat(beat("local-0", vram_mb=8000), now=time.time())
    big = upload(cloud, render_room(4, 2000, 2000))  # 4 MP: remove_furniture needs 2000 + 1500 x 4 = 8000 MB
    assert call("POST", "/v1/jobs", {"service": "remove_furniture", "input_key": big})[0] == 202, "it just fits"
    bigger = upload(cloud, render_room(4, 2100, 2000))
    status, body = call("POST", "/v1/jobs", {"service": "remove_furniture", "input_key": bigger})
    assert status == 422 and "8300 MB" in body["message"] and "8000 MB" in body["message"], body
    assert written(cloud) == (1, 1), "nothing written for the refused one"


def test_a_job_that_needs_more_compute_than_any_gpu_has_is_refused_at_submit(cloud: Cloud) -> None:
    import time

    from helpers import beat, fleet_for

    fleet_for(cloud.settings).heartbeat(beat("local-0", vram_mb=80_000, compute=30), now=time.time())
    small = upload(cloud, render_room(4, 640, 480))  # upscale_2x: 20 + 10 x 0.31 MP = 24%
    assert call("POST", "/v1/jobs", {"service": "upscale_2x", "input_key": small})[0] == 202
    bigger = upload(cloud, render_room(4, 2000, 1500))  # 3 MP: 50%
    status, body = call("POST", "/v1/jobs", {"service": "upscale_2x", "input_key": bigger})
    assert status == 422 and "50% of a GPU's compute" in body["message"] and "30% compute in local" in body["message"]


def test_a_deadline_given_at_submit_is_the_jobs_and_its_executions(cloud: Cloud) -> None:
    from datetime import UTC, datetime, timedelta

    key = upload(cloud, render_room(1))
    deadline = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=0)
    status, accepted = call("POST", "/v1/jobs", {"service": "upscale_2x", "input_key": key,
                                                 "deadline_at": deadline.isoformat()})
    assert status == 202
    (message,) = cloud.queue_messages("IntakeNormalQueue")
    assert datetime.fromisoformat(message["deadline_at"]) == deadline, "the execution's clocks count to it"
    status, view = call("GET", f"/v1/jobs/{accepted['job_id']}")
    assert datetime.fromisoformat(view["deadline_at"]) == deadline and view["cost_usd"] == 0


def test_same_idempotency_key_returns_the_same_job(cloud: Cloud) -> None:
    key = upload(cloud, render_room(2))
    request = {"service": "upscale_2x", "input_key": key, "idempotency_key": "order-1234"}
    first = call("POST", "/v1/jobs", request)
    again = call("POST", "/v1/jobs", request)
    assert first == again
    assert written(cloud) == (1, 1)
    status, body = call("POST", "/v1/jobs", request | {"priority": "low"})
    assert status == 422 and "idempotency_key" in body["message"]


def test_a_webhook_url_is_kept_on_the_job_and_part_of_what_an_idempotency_key_stands_for(cloud: Cloud) -> None:
    key = upload(cloud, render_room(2))
    request = {"service": "upscale_2x", "input_key": key, "idempotency_key": "order-5678",
               "webhook_url": "https://hooks.example.com/spillway?order=5678"}
    status, first = call("POST", "/v1/jobs", request)
    assert status == 202 and call("POST", "/v1/jobs", request) == (202, first)
    status, view = call("GET", f"/v1/jobs/{first['job_id']}")
    assert view["webhook_url"] == "https://hooks.example.com/spillway?order=5678"
    status, body = call("POST", "/v1/jobs", request | {"webhook_url": "https://hooks.example.com/other"})
    assert status == 422 and "idempotency_key" in body["message"]


BAD_REQUESTS = [
    ({"service": "paint_it_pink", "input_key": UPLOAD_A}, "unknown service"),
    ({"service": "remove_furniture", "input_key": UPLOAD_B}, "nothing was uploaded"),
    ({"service": "remove_furniture", "input_key": "../etc/passwd"}, "input_key"),
    ({"service": 7, "input_key": UPLOAD_A}, "service"),
    ({"service": "remove_furniture", "input_key": UPLOAD_A, "priority": "urgent"}, "priority"),
    ({"service": "remove_furniture", "input_key": UPLOAD_A, "colour": "red"}, "colour"),
    ({"input_key": UPLOAD_A}, "service"),
    ({"service": "remove_furniture", "input_key": UPLOAD_A,
      "deadline_at": "2020-01-01T00:00:00Z"}, "deadline_at"),  # in the past
    ({"service": "remove_furniture", "input_key": UPLOAD_A,
      "deadline_at": "2099-01-01T00:00:00Z"}, "7 days"),  # too far ahead
    ({"service": "remove_furniture", "input_key": UPLOAD_A,
      "deadline_at": "2026-12-01T00:00:00"}, "timezone"),  # no zone: ambiguous
    ({"service": "remove_furniture", "input_key": UPLOAD_A,
      "deadline_at": "tomorrow"}, "deadline_at"),
]


@pytest.mark.parametrize("request_body,reason", BAD_REQUESTS)
def test_bad_submissions_get_a_reason_and_write_nothing(cloud: Cloud, request_body: dict, reason: str) -> None:
    aws.client("s3").put_object(
        Bucket=cloud.settings.images_bucket, Key=UPLOAD_A, Body=render_room(0)
    )
    status, body = call("POST", "/v1/jobs", request_body)
    assert status == 422
    assert reason in body["message"]
    assert written(cloud) == (0, 0)


@pytest.mark.parametrize("raw", ["{not json", "", "[1, 2]", "null", "1" * 5000, "[" * 100_000 + "]" * 100_000])
def test_malformed_bodies_are_refused(cloud: Cloud, raw: str) -> None:
    status, body = call("POST", "/v1/jobs", raw=raw)
    assert status == 422 and body["message"]
    assert written(cloud) == (0, 0)


@pytest.mark.parametrize("data", ['{"service": "café"}'.encode("latin-1"), '{"service": "x"}'.encode("utf-16")])
def test_bodies_not_in_utf8_get_415_with_the_reason(cloud: Cloud, data: bytes) -> None:
    import base64

    event = http_event("POST", "/v1/jobs", raw=base64.b64encode(data).decode())
    from spillway.handlers import api

    response = api.handler(event | {"isBase64Encoded": True}, LambdaContext("ApiFunction"))
    assert response["statusCode"] == 415 and "UTF-8" in json.loads(response["body"])["message"]


@pytest.mark.parametrize(
    "data,reason",
    [(b"", "empty"), (b"this is a text file, not a photo", "not a PNG or JPEG"), (b"\x89PNG\r\n\x1a\n", "truncated"),
     (render_room(1, 320, 240)[:-100], "truncated"),
     (render_room(1, 320, 240) + b"PK\x05\x06" + bytes(18), "more than an image")],
)
def test_uploads_that_are_not_images_are_refused_at_submit(cloud: Cloud, data: bytes, reason: str) -> None:
    key = upload(cloud, data)
    status, body = call("POST", "/v1/jobs", {"service": "remove_furniture", "input_key": key})
    assert status == 422 and reason in body["message"]
    assert written(cloud) == (0, 0)


def test_images_over_the_service_limit_are_refused(cloud: Cloud) -> None:
    key = upload(cloud, render_room(1, 4000, 3200))  # 12.8 MP, over upscale_2x's 12
    status, body = call("POST", "/v1/jobs", {"service": "upscale_2x", "input_key": key})
    assert status == 422 and "at most 12 MP" in body["message"]


def test_files_over_the_byte_limit_are_refused_whatever_wrote_them(cloud: Cloud) -> None:
    from spillway.intake import MAX_INPUT_BYTES

    key = upload(cloud, render_room(1, 320, 240) + bytes(MAX_INPUT_BYTES))
    status, body = call("POST", "/v1/jobs", {"service": "upscale_2x", "input_key": key})
    assert status == 422 and f"the limit is {MAX_INPUT_BYTES} bytes" in body["message"]
    assert written(cloud) == (0, 0)


def test_unknown_and_malformed_job_ids(cloud: Cloud) -> None:
    assert call("GET", "/v1/jobs/j-" + "0" * 32)[0] == 404
    status, body = call("GET", "/v1/jobs/not-a-job-id")
    assert status == 422 and "job_id" in body["message"]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_body_not_declared_json_gets_415_with_the_fix(cloud: Cloud, content_type: str) -> None:
    """curl's `-d` declares a form; the answer says what to send instead of listing odd fields."""
    key = upload(cloud, render_room(1))
    body = {"service": "remove_furniture", "input_key": key}
    status, answer = call("POST", "/v1/jobs", body, headers={"content-type": content_type})
    assert status == 415 and "Content-Type: application/json" in answer["message"]
    assert written(cloud) == (0, 0)
    assert call("POST", "/v1/jobs", body, headers={"content-type": "application/json; charset=utf-8"})[0] == 202


def test_the_job_accepted_line_keeps_powertools_service_and_names_the_job(
        cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    from spillway.handlers import api

    key = upload(cloud, render_room(3))
    status, accepted = call("POST", "/v1/jobs", {"service": "remove_furniture", "input_key": key})
    assert status == 202
    (record,) = [r for r in caplog.records if r.getMessage() == "job accepted"]
    line = json.loads(api.logger.registered_formatter.format(record))  # as Powertools writes it
    assert line["service"] == "spillway" and line["job_service"] == "remove_furniture"
    assert line["job_id"] == line["correlation_id"] == accepted["job_id"]


# ---- tenants: the caller is the IAM principal API Gateway names; each sees and uses only its own


def test_a_tenant_cannot_see_another_tenants_job(cloud: Cloud) -> None:
    status, accepted = call("POST", "/v1/jobs", {"service": "upscale_2x", "input_key": upload(cloud, render_room(1))})
    assert status == 202
    mine = call("GET", f"/v1/jobs/{accepted['job_id']}")
    theirs = call("GET", f"/v1/jobs/{accepted['job_id']}", principal=OTHER_TENANT)
    unknown = call("GET", "/v1/jobs/j-" + "0" * 32)
    assert mine[0] == 200 and theirs[0] == 404
    assert theirs[1]["message"].replace(accepted["job_id"], "?") == unknown[1]["message"].replace("j-" + "0" * 32, "?")


def test_a_tenant_cannot_submit_another_tenants_upload(cloud: Cloud) -> None:
    key = upload(cloud, render_room(1))
    status, body = call("POST", "/v1/jobs", {"service": "upscale_2x", "input_key": key}, principal=OTHER_TENANT)
    assert status == 422 and "nothing was uploaded" in body["message"]
    assert written(cloud) == (0, 0)


def test_an_idempotency_key_is_each_tenants_own(cloud: Cloud) -> None:
    mine = call("POST", "/v1/jobs", {"service": "upscale_2x", "input_key": upload(cloud, render_room(1)),
                                     "idempotency_key": "order-1234"})
    their_key = upload(cloud, render_room(2), OTHER_TENANT)
    theirs = call("POST", "/v1/jobs", {"service": "upscale_2x", "idempotency_key": "order-1234",
                                       "input_key": their_key}, principal=OTHER_TENANT)
    assert mine[0] == theirs[0] == 202 and mine[1]["job_id"] != theirs[1]["job_id"]
    assert written(cloud) == (2, 2)


def test_a_request_with_no_caller_identity_is_refused(cloud: Cloud) -> None:
    for method, path in (("POST", "/v1/uploads"), ("GET", "/v1/jobs/j-" + "0" * 32)):
        status, body = call(method, path, {} if method == "POST" else None, principal=None)
        assert status == 403 and "SigV4" in body["message"]


def test_every_session_of_an_assumed_role_is_one_tenant() -> None:
    from spillway.tenancy import Tenant

    one = Tenant.of_principal("arn:aws:sts::123456789012:assumed-role/app/session-1")
    two = Tenant.of_principal("arn:aws:sts::123456789012:assumed-role/app/session-2")
    assert one == two and one.principal == "arn:aws:iam::123456789012:role/app"
    assert one.tenant_id != Tenant.of_principal("arn:aws:iam::123456789012:user/app").tenant_id


def test_a_tenant_lists_its_own_jobs_newest_first_a_page_at_a_time(cloud: Cloud) -> None:
    key = upload(cloud, render_room(1))
    mine = [call("POST", "/v1/jobs", {"service": "upscale_2x", "input_key": key})[1]["job_id"] for _ in range(5)]
    call("POST", "/v1/jobs", {"service": "upscale_2x", "input_key": upload(cloud, render_room(2), OTHER_TENANT)},
         principal=OTHER_TENANT)
    seen, cursor, pages = [], None, 0
    while True:
        status, page = call("GET", "/v1/jobs", query={"limit": "2", **({"cursor": cursor} if cursor else {})})
        assert status == 200 and len(page["jobs"]) <= 2
        seen += page["jobs"]
        pages += 1
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert sorted(j["job_id"] for j in seen) == sorted(mine) and pages == 3, "every job once, no other tenant's"
    created = [j["created_at"] for j in seen]
    assert created == sorted(created, reverse=True), "newest first"
    assert call("GET", "/v1/jobs", query={"status": "SUCCEEDED"})[1] == {"jobs": [], "next_cursor": None}
    assert len(call("GET", "/v1/jobs", query={"status": "QUEUED"})[1]["jobs"]) == 5
    assert len(call("GET", "/v1/jobs", principal=OTHER_TENANT)[1]["jobs"]) == 1


@pytest.mark.parametrize("query,status,reason", [
    ({"cursor": "not-a-cursor"}, 400, "cursor"),
    ({"cursor": "WyJ4IiwgImotMSJd"}, 400, "cursor"),  # base64 JSON, but not a place in the list
    ({"limit": "101"}, 422, "limit"),
    ({"limit": "0"}, 422, "limit"),
    ({"status": "DONE"}, 422, "status"),
])
def test_a_bad_list_request_is_a_4xx_with_its_reason(cloud: Cloud, query: dict, status: int, reason: str) -> None:
    answer = call("GET", "/v1/jobs", query=query)
    assert answer[0] == status and reason in answer[1]["message"]
