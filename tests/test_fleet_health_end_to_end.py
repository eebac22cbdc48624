"""Fleet health, end to end on the embedded stack (real agent processes, real signals): an agent killed
mid-task, or restarted without its task, costs its job one attempt and a stale window, not the attempt's
heartbeat window; its lease is given back, and a restarted agent has all its VRAM again. A GPU that fails
every model is quarantined after K failures, gets no work while it is, and after its cool-down takes one
canary task; an agent told to stop (SIGTERM) mid-load drains: every job is answered.

The module's stack runs with small windows (STALE_SECONDS, HEARTBEAT_SECONDS, QUARANTINE_*) and a fast model, so
the tests wait seconds, not minutes: a test whose chaos must land while a model runs makes every GPU's model slow
first (`slow_models`), and well again once the chaos has landed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest

from spillway_embedded.launcher import LaunchedStack, StackInfo

from helpers import answered, first_attempt, gpu_record, gpu_view, submit_room, wait_for_health

pytestmark = [pytest.mark.embedded, pytest.mark.timed]

MODEL_SECONDS = 1.0  # each task's least time on its GPU, unless a test makes the models slow
SLOW_SECONDS = 60.0  # a slow model: the chaos lands while it runs, however loaded the machine
STALE_SECONDS = 10  # AgentStaleSeconds (the template's 30: the tests would wait it out five times)
HEARTBEAT_SECONDS = 2.0  # the agents' fleet heartbeat: five to a stale window, as the template's 5 s are six to 30 s
QUARANTINE_AFTER = 3  # QuarantineAfterErrors (K)
QUARANTINE_SECONDS = 20  # QuarantineSeconds: the first cool-down
# The drain test's runs: longer than its eight submits before the SIGTERM, shorter than the agent's drain timeout
# (30 s).
DRAINED_RUN_SECONDS = 15.0
# The chaos run's: its 60 jobs keep the office's 10 slots busy past a normal job's wait bound (30 s), so the cloud
# gets work too, and every agent the chaos hits is running tasks.
CHAOS_RUN_SECONDS = 8.0
TIMEOUT = httpx.Timeout(10.0, connect=2.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    args = ["--api-port", "0", "--model-seconds", str(MODEL_SECONDS),
            "--agent-heartbeat-seconds", str(HEARTBEAT_SECONDS),
            "--parameter", f"AgentStaleSeconds={STALE_SECONDS}",
            "--parameter", f"QuarantineAfterErrors={QUARANTINE_AFTER}",
            "--parameter", f"QuarantineSeconds={QUARANTINE_SECONDS}"]
    with LaunchedStack(tmp_path_factory.mktemp("health"), args) as info:
        yield info


@contextlib.contextmanager
def slow_models(stack: StackInfo, seconds: float = SLOW_SECONDS) -> Iterator[None]:
    """Every GPU's model runs `seconds` longer (a run reads its fault as it starts) until the block is left: the
    jobs the block submits are still running when its chaos lands; their next attempts, after it, run fast."""
    every_gpu = [g["gpu_id"] for g in stack.gpus]
    stack.agents("slow", *every_gpu, seconds=seconds)
    try:
        yield
    finally:
        stack.agents("heal", *every_gpu)


def running_job(api: httpx.Client) -> tuple[str, str]:
    """Submit a job and wait until an agent runs it: (job id, GPU id)."""
    job_id = submit_room(api)
    return job_id, first_attempt(api, job_id, "running_at")["gpu_id"]


def back_to_healthy(api: httpx.Client, gpu_id: str) -> None:
    """A GPU an earlier test restarted is on probation until a canary succeeds: give it one (it is the
    best fit, or the only GPU with room, for the jobs these tests submit)."""
    for _ in range(3):
        if wait_for_health(api, gpu_id, {"probation", "healthy"})["health"] == "healthy":
            return
        answered(api, [submit_room(api)], timeout=120)
    raise AssertionError(f"{gpu_id} stays on probation")


def transitions(gpu: dict) -> list[tuple[str, str]]:
    return [(e["from"], e["to"]) for e in gpu["events"]]


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
    with slow_models(stack):
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
    gpu = wait_for_health(api, gpu_id, {"probation", "healthy"})  # restarted: probed, back on probation
    down = next(e for e in reversed(gpu["events"]) if e["to"] == "down")
    assert down["reason"].startswith("silent: no heartbeat for") and down["detect_s"] > STALE_SECONDS, down
    assert ("down", "probation") in transitions(gpu), gpu["events"]


def test_an_agent_restarted_without_its_task_gives_the_lease_back_and_the_job_moves_on(
    stack: StackInfo, api: httpx.Client
) -> None:
    with slow_models(stack):
        job_id, gpu_id = running_job(api)
        stack.agents("restart", gpu_id)  # a new process: it does not hold the task, and says so in its reports
    view = answered(api, [job_id], timeout=120)[job_id]
    assert view["status"] == "SUCCEEDED", view
    first = view["attempts"][0]
    assert (first["gpu_id"], first["outcome"]) == (gpu_id, "failed")
    assert "no longer has it" in first["reason"] or "has not reported" in first["reason"], first["reason"]
    gpu = wait_for_full_vram(stack, gpu_id)
    assert gpu["vram_total_mb"] == next(g["vram_mb"] for g in stack.gpus if g["gpu_id"] == gpu_id)


def test_a_gpu_that_fails_every_model_is_quarantined_gets_no_work_then_takes_one_canary(
    stack: StackInfo, api: httpx.Client
) -> None:
    sick = "local-0"  # the best fit of the default fleet while it is free: new jobs go there first
    for gpu in api.get("/v1/fleet").raise_for_status().json()["gpus"]:
        back_to_healthy(api, gpu["gpu_id"])
    stack.agents("fail-model", sick)
    try:
        failed_there = []
        for n in range(QUARANTINE_AFTER):  # one at a time: with every GPU free, each lands on the sick one
            failed_there.append(submit_room(api))
            first = first_attempt(api, failed_there[-1], "ended_at")
            assert (first["gpu_id"], first["error"]) == (sick, "Spillway.ModelError"), first
            if n < QUARANTINE_AFTER - 1:
                answered(api, failed_there[-1:], timeout=120)  # its next attempt, elsewhere, is over too
        gpu = wait_for_health(api, sick, {"quarantined"}, timeout=10)
        assert f"{QUARANTINE_AFTER} ModelErrors in a row" in gpu["reason"] and gpu["quarantined_until"], gpu
        later = [submit_room(api) for _ in range(3)]
        views = answered(api, failed_there + later, timeout=120)
    finally:
        stack.agents("heal", sick)
    assert {v["status"] for v in views.values()} == {"SUCCEEDED"}, "each moved on to a GPU that works"
    assert all(a["gpu_id"] != sick for j in later for a in views[j]["attempts"]), "no work while quarantined"
    gpu = wait_for_health(api, sick, {"probation"}, timeout=QUARANTINE_SECONDS + 30)  # its cool-down is over
    canary = submit_room(api)
    view = answered(api, [canary], timeout=120)[canary]
    assert [(a["gpu_id"], a["outcome"]) for a in view["attempts"]] == [(sick, "succeeded")], view["attempts"]
    gpu = wait_for_health(api, sick, {"healthy"}, timeout=10)
    assert transitions(gpu)[-3:] == [("healthy", "quarantined"), ("quarantined", "probation"),
                                     ("probation", "healthy")], gpu["events"]


def test_an_agent_told_to_stop_mid_load_drains_and_every_job_is_answered(stack: StackInfo, api: httpx.Client) -> None:
    with slow_models(stack, DRAINED_RUN_SECONDS):
        jobs = [submit_room(api) for _ in range(8)]
        gpu_id = first_attempt(api, jobs[0], "running_at")["gpu_id"]
        stack.agents("term", gpu_id)  # SIGTERM: refuse new work, finish what runs
    try:
        wait_for_health(api, gpu_id, {"draining"}, timeout=10)
        views = answered(api, jobs, timeout=180)
        assert {v["status"] for v in views.values()} == {"SUCCEEDED"}, "no job lost"
        gpu = wait_for_health(api, gpu_id, {"down"}, timeout=STALE_SECONDS + 20)  # drained, its agent gone
        assert gpu["reason"] == "drained: its agent left" and gpu["running"] == [], gpu
    finally:
        stack.agents("restart", gpu_id)
    assert views[jobs[0]]["attempts"][0]["gpu_id"] == gpu_id
    assert views[jobs[0]]["attempts"][0]["outcome"] == "succeeded", "a task running at SIGTERM finished there"
    assert wait_for_health(api, gpu_id, {"probation", "healthy"})["health"] in ("probation", "healthy")


def test_agents_killed_and_stopped_under_load_cost_no_job_and_leak_no_lease(
    stack: StackInfo, api: httpx.Client
) -> None:
    """The issue's chaos run: 60 jobs; an office and a cloud agent SIGKILLed, another office agent SIGTERMed,
    each while it runs tasks. The GPUs left can serve them all: every job succeeds."""
    for gpu in api.get("/v1/fleet").raise_for_status().json()["gpus"]:
        back_to_healthy(api, gpu["gpu_id"])
    chaos = {"local-1": "kill", "cloud-0": "kill", "local-3": "term"}
    try:
        with slow_models(stack, CHAOS_RUN_SECONDS):
            with ThreadPoolExecutor(max_workers=4) as pool:
                jobs = list(pool.map(lambda _: submit_room(api), range(60)))
            for gpu_id, action in chaos.items():  # the cloud gets work once office jobs wait past their bound
                deadline = time.monotonic() + 90
                while not gpu_view(api, gpu_id)["running"]:
                    assert time.monotonic() < deadline, f"{gpu_id} never ran a task"
                    time.sleep(0.2)
                stack.agents(action, gpu_id)
        views = answered(api, jobs, timeout=420)
    finally:
        stack.agents("restart", *chaos)
    failed = {j: v["attempts"] for j, v in views.items() if v["status"] != "SUCCEEDED"}
    assert not failed, failed
    for gpu_id in chaos:
        wait_for_full_vram(stack, gpu_id)  # a restarted agent has all its VRAM
    leased = {g["gpu_id"]: g["running"] for g in api.get("/v1/fleet").json()["gpus"] if g["running"]}
    assert not leased, f"leases left with every job answered: {leased}"


def test_spillway_fleet_lists_drains_and_readmits_on_the_running_stack(stack: StackInfo, api: httpx.Client) -> None:
    def fleet(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "spillway.cli", "fleet", "--api", stack.api_url, *args],
                              capture_output=True, text=True, timeout=60,
                              env=os.environ | {"SPILLWAY_TOKEN": stack.token})
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = fleet("--events", "2").splitlines()
    assert listed[0].split()[:3] == ["GPU", "POOL", "HEALTH"]
    assert {line.split()[0] for line in listed[1:] if not line.startswith(" ")} == {g["gpu_id"] for g in stack.gpus}
    assert "draining" in fleet("drain", "local-4") and gpu_view(api, "local-4")["health"] == "draining"
    assert "probation" in fleet("readmit", "local-4")
