"""A real image through the whole embedded system:
API -> SQS -> admit -> Step Functions -> poller -> agent (through the tunnel) -> S3 -> callback -> SUCCEEDED.

The stack runs as `spillway dev` in a child process; this test is its client over HTTP, as a
customer's integration would be, and reads S3 through moto's endpoint to check the pixels.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import cv2
import httpx
import numpy as np
import pytest

from spillway.rooms import furniture_mask, render_room
from spillway_embedded.client import upload
from spillway_embedded.launcher import LaunchedStack, StackInfo

import helpers

pytestmark = pytest.mark.embedded

TIMEOUT = httpx.Timeout(10.0, connect=2.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    args = ["--api-port", "0", "--parameter", "HeartbeatSeconds=10"]
    launched = LaunchedStack(tmp_path_factory.mktemp("stack"), args)
    with launched as info:
        yield info


def submit(api: httpx.Client, image: bytes, service: str = "remove_furniture") -> str:
    response = api.post("/v1/jobs", json={"service": service, "input_key": upload(api, image)})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def answered(api: httpx.Client, job_id: str) -> dict:
    return helpers.answered(api, [job_id], timeout=90.0, poll_s=0.2)[job_id]


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image.astype(np.int16)


def test_a_room_photo_is_emptied_end_to_end(stack: StackInfo, api: httpx.Client) -> None:
    seed = 11
    before = render_room(seed)
    job_id = submit(api, before)

    view = answered(api, job_id)
    assert view["status"] == "SUCCEEDED", view
    (attempt,) = view["attempts"]
    assert attempt["pool"] == "local" and attempt["gpu_id"].startswith("local-")
    assert view["result_key"] == f"results/{job_id}/attempt-1.png"

    after = httpx.get(view["result_url"], timeout=TIMEOUT).raise_for_status().content
    changed = np.abs(decode(after) - decode(before)).sum(axis=2)
    mask = furniture_mask(seed, 640, 480)
    assert changed[mask].mean() > 40, "the furniture was painted over"
    far = cv2.dilate(mask.astype(np.uint8), np.ones((25, 25), np.uint8)) == 0
    assert changed[far].mean() < 3, "the rest of the room is left alone"

    sfn = stack.boto3_client("stepfunctions")
    arn = stack.resources["DispatchStateMachine"].replace(":stateMachine:", ":execution:") + f":{job_id}"
    assert sfn.describe_execution(executionArn=arn)["status"] == "SUCCEEDED"


def test_a_cut_tunnel_fails_the_local_attempt_at_once_and_the_job_moves_to_the_cloud(
    stack: StackInfo, api: httpx.Client
) -> None:
    stack.cut_tunnels(pool="local")
    try:
        view = answered(api, submit(api, render_room(12)))
    finally:
        stack.restore_tunnels()
    assert view["status"] == "SUCCEEDED", view
    *office, cloud = view["attempts"]
    # GpuUnreachable, not States.Timeout: the push failed on the reset link, no heartbeat window waited out.
    assert 1 <= len(office) <= 2, "another office GPU at most, then the cloud"
    assert {(a["pool"], a["outcome"], a["error"]) for a in office} == {("local", "failed", "Spillway.GpuUnreachable")}
    assert (cloud["pool"], cloud["outcome"]) == ("cloud", "succeeded") and cloud["gpu_id"].startswith("cloud-")


def test_a_corrupt_image_fails_at_once_without_burning_attempts(stack: StackInfo, api: httpx.Client) -> None:
    view = answered(api, submit(api, garbled_pixels(render_room(3))))
    assert view["status"] == "FAILED"
    assert view["error"].startswith("BadInput: ")
    assert len(view["attempts"]) == 1


def garbled_pixels(png: bytes) -> bytes:
    """A PNG whole in structure (every chunk's CRC right, so the API accepts it) whose pixel data is
    noise: only a decoder finds out."""
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[start : start + 4])
    noise = np.random.default_rng(3).integers(0, 256, length, np.uint8).tobytes()
    chunk = b"IDAT" + noise
    return png[:start] + struct.pack(">I", length) + chunk + struct.pack(">I", zlib.crc32(chunk)) + \
        png[start + 12 + length:]


def test_bad_requests_over_http_get_a_reason(api: httpx.Client) -> None:
    response = api.post("/v1/jobs", content=b"{oops", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["message"]
    assert api.get("/v1/nowhere").status_code == 404


def test_the_stack_runs_the_fleets_faas_provider_and_its_chaos_switch(stack: StackInfo) -> None:
    assert stack.faas is not None and stack.faas["concurrency"] == 30 and stack.faas_endpoint_id == "spillway-dev"
    assert stack.fleet_file and stack.fleet_file.endswith("fleets/default.toml")
    assert sorted(g["gpu_id"] for g in stack.gpus) == ["cloud-0", "cloud-1"] + [f"local-{i}" for i in range(5)]
    health = httpx.get(f"{stack.faas_url}/v2/{stack.faas_endpoint_id}/health", timeout=TIMEOUT)
    assert health.status_code == 401, "the provider wants the stack's FaaS key"
    try:
        assert stack.faas_chaos("refuse")["mode"] == "refuse"
        assert httpx.get(f"{stack.faas_url}/chaos", timeout=TIMEOUT).json()["mode"] == "refuse"
    finally:
        stack.faas_chaos("normal")
