"""Fleet health, end to end on the embedded stack (real agent processes, real signals): an agent killed
mid-task, or restarted without its task, costs its job one attempt and a stale window, not the attempt's
heartbeat window; its lease is given back, and a restarted agent has all its VRAM again.

Each task takes at least MODEL_SECONDS on its GPU, so the chaos lands while the model runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from boto3.dynamodb.types import TypeDeserializer

from spillway.rooms import render_room
from spillway_embedded.client import upload
from spillway_embedded.launcher import LaunchedStack, StackInfo

from helpers import answered

pytestmark = pytest.mark.embedded

MODEL_SECONDS = 15.0
STALE_SECONDS = 30  # the template's AgentStaleSeconds
TIMEOUT = httpx.Timeout(10.0, connect=2.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    args = ["--api-port", "0", "--model-seconds", str(MODEL_SECONDS)]
    with LaunchedStack(tmp_path_factory.mktemp("health"), args) as info:
        yield info


@pytest.fixture(scope="module")
def api(stack: StackInfo) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=TIMEOUT) as client:
        yield client


def running_job(api: httpx.Client) -> tuple[str, str]:
    """Submit a job and wait until an agent runs it: (job id, GPU id)."""
    job_id = api.post("/v1/jobs", json={"service": "upscale_2x", "input_key": upload(api, render_room(3, 320, 240)),
                                        "segment": {"region": "eu"}}).raise_for_status().json()["job_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        attempts = api.get(f"/v1/jobs/{job_id}").raise_for_status().json()["attempts"]
        if attempts and attempts[-1].get("running_at"):
            return job_id, attempts[-1]["gpu_id"]
        time.sleep(0.2)
    raise AssertionError(f"{job_id} never started")


def gpu_record(stack: StackInfo, gpu_id: str) -> dict:
    item = stack.boto3_client("dynamodb").get_item(TableName=stack.resources["FleetTable"],
                                                   Key={"gpu_id": {"S": gpu_id}}, ConsistentRead=True)["Item"]
    typed = TypeDeserializer()
    return {k: typed.deserialize(v) for k, v in item.items()}


def wait_for_full_vram(stack: StackInfo, gpu_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        gpu = gpu_record(stack, gpu_id)
        if gpu["vram_free_mb"] == gpu["vram_total_mb"] and gpu["running"] == 0:
            return gpu
        if time.monotonic() > deadline:
            raise AssertionError(f"{gpu_id} still leased: {gpu}")
        time.sleep(0.5)


def test_an_agent_killed_mid_task_costs_its_job_a_stale_window_and_gets_its_vram_back(
    stack: StackInfo, api: httpx.Client
) -> None:
    job_id, gpu_id = running_job(api)
    stack.agents("kill", gpu_id)
    killed_at = time.time()
    try:
        view = answered(api, [job_id], timeout=120)[job_id]
    finally:
        stack.agents("restart", gpu_id)
    assert view["status"] == "SUCCEEDED", view
    first, *_, last = view["attempts"]
    assert (first["gpu_id"], first["outcome"], first["error"]) == (gpu_id, "failed", "Spillway.GpuUnreachable")
    assert "its agent has not reported" in first["reason"], first["reason"]
    moved_on_after = datetime.fromisoformat(first["ended_at"]).timestamp() - killed_at
    assert moved_on_after < STALE_SECONDS + 10, f"moved on {moved_on_after:.0f} s after the kill, not 60 s"
    assert last["gpu_id"] != gpu_id and last["outcome"] == "succeeded"
    wait_for_full_vram(stack, gpu_id)


def test_an_agent_restarted_without_its_task_gives_the_lease_back_and_the_job_moves_on(
    stack: StackInfo, api: httpx.Client
) -> None:
    job_id, gpu_id = running_job(api)
    stack.agents("restart", gpu_id)  # a new process: it does not hold the task, and says so in its reports
    view = answered(api, [job_id], timeout=120)[job_id]
    assert view["status"] == "SUCCEEDED", view
    first = view["attempts"][0]
    assert (first["gpu_id"], first["outcome"]) == (gpu_id, "failed")
    assert "no longer has it" in first["reason"] or "has not reported" in first["reason"], first["reason"]
    gpu = wait_for_full_vram(stack, gpu_id)
    assert gpu["vram_total_mb"] == next(g["vram_mb"] for g in stack.gpus if g["gpu_id"] == gpu_id)
