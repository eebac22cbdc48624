"""Dispatch by capacity, end to end on the embedded stack (real processes, real HTTP):
a burst well beyond the fleet's slots is a backlog, never a failure; under contention high
priority starts first and low still finishes.

Each task takes at least MODEL_SECONDS on its GPU (`spillway dev --model-seconds`), so the
office GPUs' 10 slots are the bottleneck and work really waits in the waiting room.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest
from boto3.dynamodb.types import TypeDeserializer

from spillway.aws import from_item
from spillway.models import Priority
from spillway.priorities import PRIORITY_CLASSES
from spillway.rooms import render_room
from spillway_embedded.client import upload
from spillway_embedded.launcher import LaunchedStack, StackInfo

import helpers

pytestmark = [pytest.mark.embedded, pytest.mark.timed]

MODEL_SECONDS = 2.5
TIMEOUT = httpx.Timeout(10.0, connect=2.0)
# A pump that read the room's front just before a task arrived may still start what it read: the
# order is strict from the moment a task is in the room, less this much for decisions in flight.
IN_FLIGHT_S = 0.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    folder = tmp_path_factory.mktemp("capacity")
    # FaaS off: this module measures the office and the cloud.
    (folder / "rules.toml").write_text("[faas]\ndaily_budget_usd = 0\n")
    args = ["--api-port", "0", "--model-seconds", str(MODEL_SECONDS), "--rules", str(folder / "rules.toml")]
    with LaunchedStack(folder, args) as info:
        yield info


@pytest.fixture(scope="module")
def inputs(stack: StackInfo) -> Iterator[list[str]]:
    """Small room photos, uploaded once; a job may reuse another's input."""
    with stack.api_client(TIMEOUT) as api:
        yield [upload(api, render_room(seed, 320, 240)) for seed in range(8)]


def submit_all(stack: StackInfo, jobs: list[dict[str, Any]]) -> list[str]:
    """As fast as the API takes them, eight at a time."""
    def one(body: dict[str, Any]) -> str:
        with stack.api_client(TIMEOUT) as api:
            response = api.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            return response.json()["job_id"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, jobs))


def answered(stack: StackInfo, job_ids: list[str]) -> dict[str, dict]:
    with stack.api_client(TIMEOUT) as api:
        return helpers.answered(api, job_ids, timeout=240.0, poll_s=0.5)


def table_items(stack: StackInfo, logical_id: str) -> list[dict[str, Any]]:
    ddb = stack.boto3_client("dynamodb")
    items, query = [], {"TableName": stack.resources[logical_id], "ConsistentRead": True}
    while True:
        page = ddb.scan(**query)
        items += [from_item({k: _DESERIALIZER.deserialize(v) for k, v in i.items()}) for i in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return items
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def assert_fleet_at_rest(stack: StackInfo) -> None:
    """No task open, nothing waiting, every GPU's VRAM and slots all back."""
    def at_rest() -> bool:
        gpus = table_items(stack, "FleetTable")
        return all(g["vram_free_mb"] == g["vram_total_mb"] and g["running"] == 0 for g in gpus)

    wait_until(at_rest, 10, "every GPU's VRAM back to full")
    open_tasks = [(t["task_id"], t["state"]) for t in table_items(stack, "TasksTable") if t["state"] != "done"]
    assert open_tasks == []
    assert table_items(stack, "WaitingRoomTable") == []


def test_a_burst_beyond_the_fleets_slots_is_a_backlog_not_a_failure(stack: StackInfo, inputs: list[str]) -> None:
    services = ("remove_furniture", "upscale_2x")
    bodies = [{"service": services[i % 2], "input_key": inputs[i % len(inputs)]} for i in range(60)]
    job_ids = submit_all(stack, bodies)

    views = answered(stack, job_ids)
    failed = {j: (v["error"], [a["error"] for a in v["attempts"]]) for j, v in views.items()
              if v["status"] != "SUCCEEDED"}
    assert failed == {}, failed
    waits = [seconds(a["running_at"]) - seconds(a["started_at"]) for v in views.values() for a in v["attempts"]
             if a["outcome"] == "succeeded"]
    assert max(waits) > MODEL_SECONDS, "the burst really waited for GPUs"

    sfn = stack.boto3_client("stepfunctions")
    executions = [e for page in sfn.get_paginator("list_executions").paginate(
        stateMachineArn=stack.resources["DispatchStateMachine"]) for e in page["executions"]]
    mine = [e["name"] for e in executions if e["name"] in set(job_ids)]
    assert sorted(mine) == sorted(job_ids), "one execution each, none missing, none twice"
    assert_fleet_at_rest(stack)


def test_jobs_past_their_office_wait_bound_spill_to_the_free_cloud_without_a_failed_attempt(
    stack: StackInfo, inputs: list[str]
) -> None:
    office_slots = sum(g["slots"] for g in table_items(stack, "FleetTable") if g["pool"] == "local")
    # Low jobs fill the office and queue (they wait up to 10 min there); then high ones, which may wait 5 s:
    # more than the office can start in that time, so the rest spill to the free cloud.
    lows = submit_all(stack, [{"service": "upscale_2x", "input_key": inputs[i % len(inputs)], "priority": "low"}
                              for i in range(2 * office_slots)])
    highs = submit_all(stack, [{"service": "upscale_2x", "input_key": inputs[i % len(inputs)], "priority": "high"}
                               for i in range(5 * office_slots)])
    views = answered(stack, lows + highs)
    assert {v["status"] for v in views.values()} == {"SUCCEEDED"}
    attempts = [a for v in views.values() for a in v["attempts"]]
    assert not [a for a in attempts if a["outcome"] == "failed"], "a spill is not a failed attempt"
    spilled = [v for v in views.values() if v["attempts"][0]["outcome"] == "spilled"]
    assert spilled, "the backlog spilled over"
    for view in spilled:
        first, then = view["attempts"]
        assert (first["pool"], first["error"]) == ("local", "Spillway.WaitExpired")
        assert "high priority" in first["reason"] and first["gpu_id"] is None
        assert (then["pool"], then["outcome"]) == ("cloud", "succeeded") and "spilled over from local" in then["route"]
    on_cloud = [v for v in views.values() if v["attempts"][-1]["pool"] == "cloud"]
    assert len(on_cloud) == len(spilled), "the cloud took only what the office could not start in time"


def test_high_priority_starts_before_low_and_low_still_finishes(stack: StackInfo, inputs: list[str]) -> None:
    office_slots = sum(g["slots"] for g in table_items(stack, "FleetTable") if g["pool"] == "local")
    lows = submit_all(stack, [{"service": "remove_furniture", "input_key": inputs[i % len(inputs)],
                               "priority": "low"} for i in range(3 * office_slots)])
    wait_until(lambda: len(table_items(stack, "WaitingRoomTable")) >= office_slots // 2, 60,
               "the low jobs fill every office slot and queue behind them")
    highs = submit_all(stack, [{"service": "remove_furniture", "input_key": inputs[i % len(inputs)],
                                "priority": "high"} for i in range(5)])

    views = answered(stack, lows + highs)
    assert {v["status"] for v in views.values()} == {"SUCCEEDED"}, "every low job still finishes"

    # The waiting room's order, from the tasks themselves: no low task was assigned a GPU while a
    # high task of the same pool was waiting in the room.
    # A high task that spilled to the cloud (past its spill bound) left the office room then.
    tasks = [t for t in table_items(stack, "TasksTable") if t["job_id"] in set(lows + highs)]
    office_highs = [t for t in tasks if t["priority"] == "high" and t["pool"] == "local"]
    assert len(office_highs) == len(highs)

    def left_room(task: dict) -> float:
        return task.get("assigned_at") or task["arrived_at"] + PRIORITY_CLASSES[Priority.HIGH].spill_after_s

    jumped = [(low["job_id"], high["job_id"]) for high in office_highs for low in tasks
              if low["priority"] == "low" and low["pool"] == "local" and "assigned_at" in low
              and high["arrived_at"] + IN_FLIGHT_S < low["assigned_at"] < left_room(high)]
    assert jumped == [], "low tasks started while a high one waited"
    high_waits = [left_room(t) - t["arrived_at"] for t in office_highs]
    low_waits = [t["assigned_at"] - t["arrived_at"] for t in tasks if t["priority"] == "low"]
    assert max(high_waits) < max(low_waits), (high_waits, low_waits)
    assert_fleet_at_rest(stack)


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


_DESERIALIZER = TypeDeserializer()
