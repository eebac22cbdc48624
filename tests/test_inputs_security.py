"""The API's trust boundary for inputs (issue #10, items 3 and 4), over real HTTP on the embedded stack.

Each defect found by probing the old main has its test: an input swapped after submit, no byte limit,
bad images accepted (truncated, polyglots, a job no GPU can hold), malformed bodies answered with a 500.
Then schemathesis generates requests from docs/openapi.json (fixed seed, bounded examples): no 5xx,
a reason with every 4xx, and nothing written for a request refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from spillway import imageinfo
from spillway.intake import MAX_INPUT_BYTES
from spillway.rooms import render_room
from spillway_embedded.launcher import LaunchedStack, StackInfo

import helpers

pytestmark = pytest.mark.embedded

TIMEOUT = httpx.Timeout(10.0, connect=2.0)
OPENAPI = Path(__file__).parent.parent / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with LaunchedStack(tmp_path_factory.mktemp("stack"), ["--api-port", "0"]) as info:
        yield info


def stored_at_a_ticket(stack: StackInfo, api: httpx.Client, data: bytes) -> str:
    """An upload ticket's key with these bytes at it, written straight to the bucket: what any writer
    holding the ticket (a bug, an attacker, an old client) could leave there."""
    key = api.post("/v1/uploads", json={}).raise_for_status().json()["input_key"]
    stack.boto3_client("s3").put_object(Bucket=stack.resources["ImagesBucket"], Key=key, Body=data)
    return key


def written(stack: StackInfo) -> tuple[int, int]:
    """(job records, dispatch executions): what the stack holds."""
    jobs = stack.boto3_client("dynamodb").scan(TableName=stack.resources["JobsTable"], Select="COUNT")["Count"]
    sfn = stack.boto3_client("stepfunctions")
    executions = sum(len(page["executions"]) for page in sfn.get_paginator("list_executions").paginate(
        stateMachineArn=stack.resources["DispatchStateMachine"]))
    return jobs, executions


def png(width: int, height: int) -> bytes:
    return cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))[1].tobytes()


def test_an_upload_over_the_byte_limit_is_refused_by_the_storage(api: httpx.Client) -> None:
    ticket = api.post("/v1/uploads", json={}).raise_for_status().json()
    too_big = api.post(ticket["upload_url"], data=ticket["fields"],
                       files={"file": ("room.png", render_room(1) + bytes(MAX_INPUT_BYTES), "image/png")})
    assert too_big.status_code == 400 and "EntityTooLarge" in too_big.text


def test_an_input_swapped_after_submit_changes_nothing(stack: StackInfo, api: httpx.Client) -> None:
    """The old main ran the swapped 4000x3000 photo (an 8000x6000 result, past upscale_2x's 12 MP)."""
    key = stored_at_a_ticket(stack, api, render_room(2, 640, 480))
    job_id = api.post("/v1/jobs", json={"service": "upscale_2x", "input_key": key}).raise_for_status().json()["job_id"]
    stack.boto3_client("s3").put_object(Bucket=stack.resources["ImagesBucket"], Key=key, Body=png(4000, 3000))

    view = helpers.answered(api, [job_id], timeout=90.0, poll_s=0.2)[job_id]
    assert view["status"] == "SUCCEEDED", view
    result = httpx.get(view["result_url"], timeout=TIMEOUT).raise_for_status().content
    assert imageinfo.inspect(result)[1:] == (1280, 960), "the photo judged at submit is the one that ran"


_PHOTO = render_room(3, 320, 240)
_JPEG = cv2.imencode(".jpg", np.zeros((240, 320, 3), np.uint8))[1].tobytes()
BAD_INPUTS = [
    pytest.param("remove_furniture", _PHOTO[:-100], "truncated", id="truncated"),
    pytest.param("remove_furniture", _PHOTO[:33], "truncated", id="header-only"),
    pytest.param("remove_furniture", _PHOTO[:33] + b"<html><script>alert(1)</script></html>" * 20, "truncated",
                 id="png-header-html-polyglot"),
    pytest.param("remove_furniture", _PHOTO + b"PK\x03\x04" + bytes(26) + b"PK\x05\x06" + bytes(18),
                 "more than an image", id="png-zip-polyglot"),
    pytest.param("remove_furniture", _JPEG[:_JPEG.index(b"\xff\xda") + 14], "truncated",
                 id="jpeg-headers-without-data"),  # every header, up to its scan's, and no pixels
    pytest.param("remove_furniture", png(4000, 4000), "largest GPU", id="fits-no-gpu"),  # 26 GB; 24 GB at most
    pytest.param("upscale_2x", _PHOTO + bytes(MAX_INPUT_BYTES), "the limit is", id="over-the-byte-limit"),
]


@pytest.mark.parametrize("service,data,reason", BAD_INPUTS)
def test_a_bad_input_is_refused_at_submit_with_its_reason(stack: StackInfo, api: httpx.Client, service: str,
                                                          data: bytes, reason: str) -> None:
    key = stored_at_a_ticket(stack, api, data)
    before = written(stack)
    response = api.post("/v1/jobs", json={"service": service, "input_key": key})
    assert response.status_code == 422 and reason in response.json()["message"], response.text
    assert written(stack) == before, "no job, no execution"


MALFORMED = [
    pytest.param('{"service": "café"}'.encode("latin-1"), "application/json", 415, "UTF-8", id="latin-1"),
    pytest.param('{"service": "x"}'.encode("utf-16"), "application/json", 415, "UTF-8", id="utf-16"),
    pytest.param(b'{"service": ' + b"9" * 5000 + b"}", "application/json", 422, "not valid JSON",
                 id="5000-digit-integer"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "application/json", 422, "nested too deeply", id="deep-nesting"),
    pytest.param(b'{"service": "upscale_2x"}', "text/plain", 415, "Content-Type: application/json",
                 id="text-plain"),
]


@pytest.mark.parametrize("body,content_type,status,reason", MALFORMED)
def test_a_malformed_body_is_a_4xx_with_its_reason(stack: StackInfo, api: httpx.Client, body: bytes,
                                                   content_type: str, status: int, reason: str) -> None:
    before = written(stack)
    for path in ("/v1/jobs", "/v1/uploads"):
        response = api.post(path, content=body, headers={"Content-Type": content_type})
        assert response.status_code == status and reason in response.json()["message"], (path, response.text)
    assert written(stack) == before


# ---- generated: every operation of the published document, positive and negative cases

schema = schemathesis.openapi.from_path(OPENAPI)


@schema.parametrize()
@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_get_no_5xx_and_a_reason_with_every_4xx(case: schemathesis.Case, stack: StackInfo) -> None:
    before = written(stack)
    response = case.call(base_url=stack.api_url, headers=stack.auth_headers(), timeout=10)
    assert response.status_code < 500, (case.as_curl_command(), response.text)
    if response.status_code >= 400:
        assert json.loads(response.content)["message"], (case.as_curl_command(), response.text)
        assert written(stack) == before, ("a refused request wrote something", case.as_curl_command())

