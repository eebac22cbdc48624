"""The simulator against the real thing: one small scenario (`scenarios/validation.toml`: the default fleet,
40 jobs at fixed times, the office link cut and then the cloud's) run by the simulator and on the embedded
stack — the same jobs at the same times, the same cuts through the chaos switchboard — agrees on where
the jobs ran, on how many failed, and roughly on how long they took."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from boto3.dynamodb.types import TypeDeserializer

from spillway.rooms import render_room
from spillway_embedded.client import upload
from spillway_embedded.launcher import LaunchedStack, StackInfo
from spillway_sim.engine import Simulation
from spillway_sim.scenario import DEFAULT_SCENARIO, load_world
from spillway_sim.workload import Outage, SimJob, draw

from helpers import answered

pytestmark = [pytest.mark.embedded, pytest.mark.timed]

VALIDATION = DEFAULT_SCENARIO.with_name("validation.toml")
TIMEOUT = httpx.Timeout(10.0, connect=2.0)
POOL_TOLERANCE = 3  # jobs a pool may serve more or fewer on the stack (its clocks are real, its cuts HTTP calls)


def ready(info: StackInfo, gpus: int) -> None:
    """Every GPU of the fleet registered and healthy: the scenario starts from a healthy fleet."""
    typed = TypeDeserializer()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        items = info.boto3_client("dynamodb").scan(TableName=info.resources["FleetTable"], ConsistentRead=True)
        fleet = [{k: typed.deserialize(v) for k, v in i.items()} for i in items["Items"]]
        if len(fleet) == gpus and all(g["health"]["state"] == "healthy" for g in fleet):
            return
        time.sleep(0.3)
    raise AssertionError("the fleet did not come up healthy in 60 s")


def on_the_stack(info: StackInfo, jobs: list[SimJob], outages: list[Outage]) -> dict[str, dict[str, Any]]:
    """Submit each job at its time and cut/restore links at theirs; every job's view once answered."""
    with info.api_client(TIMEOUT) as api:
        key = upload(api, render_room(7, 320, 240))
        t0 = time.monotonic() + 1.0

        def at(moment: float) -> None:
            time.sleep(max(0.0, t0 + moment - time.monotonic()))

        def submit(job: SimJob) -> str:
            at(job.at)
            body = {"service": job.service, "input_key": key, "priority": job.priority.value,
                    "segment": job.segment.model_dump(mode="json")}
            return api.post("/v1/jobs", json=body).raise_for_status().json()["job_id"]

        def chaos() -> None:
            for moment, call, gpu_ids in sorted([(o.start, info.cut_tunnels, o.gpu_ids) for o in outages]
                                                 + [(o.end, info.restore_tunnels, o.gpu_ids) for o in outages]):
                at(moment)
                call(*gpu_ids)

        switchboard = threading.Thread(target=chaos)
        switchboard.start()
        with ThreadPoolExecutor(max_workers=8) as pool:
            job_ids = list(pool.map(submit, jobs))
        switchboard.join()
        return answered(api, job_ids, timeout=180)


def latency(view: dict[str, Any]) -> float:
    return (datetime.fromisoformat(view["finished_at"]) - datetime.fromisoformat(view["created_at"])).total_seconds()


def test_the_simulator_and_the_embedded_stack_agree_on_one_small_scenario(tmp_path: Path) -> None:
    world = load_world(VALIDATION)
    workload = draw(world)
    simulated = Simulation(world, workload, "spillway").run().results

    with LaunchedStack(tmp_path, ["--api-port", "0", "--model-seconds", "2"]) as info:
        ready(info, len(world.gpus))
        views = list(on_the_stack(info, workload.jobs, workload.outages).values())

    sim_pools = Counter(r.pool.value for r in simulated if r.succeeded)
    stack_pools = Counter(v["attempts"][-1]["pool"] for v in views if v["status"] == "SUCCEEDED")
    sim_failed = sum(not r.succeeded for r in simulated)
    stack_failed = sum(v["status"] == "FAILED" for v in views)
    sim_p50 = statistics.median(r.latency for r in simulated if r.succeeded)
    stack_p50 = statistics.median(latency(v) for v in views if v["status"] == "SUCCEEDED")
    sim_mean = statistics.mean(r.latency for r in simulated if r.succeeded)
    stack_mean = statistics.mean(latency(v) for v in views if v["status"] == "SUCCEEDED")
    report = (f"jobs by pool: sim {dict(sim_pools)}, stack {dict(stack_pools)}; failed: sim {sim_failed}, stack "
              f"{stack_failed}; time to result p50 sim {sim_p50:.2f} s, stack {stack_p50:.2f} s; mean sim "
              f"{sim_mean:.2f} s, stack {stack_mean:.2f} s")
    print(report)
    assert stack_failed == sim_failed, report
    for pool in ("local", "cloud", "faas"):
        assert abs(sim_pools[pool] - stack_pools[pool]) <= POOL_TOLERANCE, report
    assert abs(sim_p50 - stack_p50) <= max(1.0, 0.5 * stack_p50), report
    assert abs(sim_mean - stack_mean) <= max(2.0, 0.5 * stack_mean), report
