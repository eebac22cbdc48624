"""The demo: a client that pushes generated room photos through the real HTTP API, in the company's
world — 5 office GPUs on a flaky link, 2 cloud GPUs, a FaaS service for US priority jobs — while
the links drop: first one office GPU's, then the whole office's, then the cloud's too.

It does what a customer's integration does: ask for an upload URL, PUT the photo, submit the job,
follow it until it is answered, and fetch the result. Then it prints, per job, where each attempt
ran, why, and what it cost, and the FaaS spend against its budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from boto3.dynamodb.types import TypeDeserializer

from spillway.faas.billing import MICRO
from spillway.rooms import render_room
from spillway.routing.rules import default_rules
from spillway_embedded.client import upload
from spillway_embedded.launcher import StackInfo

TIMEOUT = httpx.Timeout(10.0, connect=2.0)
NORMAL = {"priority": "normal", "segment": {"region": "eu"}}
US_PRIORITY = {"priority": "high", "segment": {"region": "us"}}  # FaaS-eligible by the default rules


@dataclass
class DemoJob:
    seed: int
    service: str
    how: dict[str, Any]
    job_id: str = ""
    status: str = "NEW"
    view: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "US priority" if self.how is US_PRIORITY else "normal"

    @property
    def path(self) -> str:
        """Where its attempts ran, e.g. 'local/local-2 (GpuUnreachable) -> cloud/cloud-0'."""
        return " -> ".join(map(_attempt, self.view.get("attempts", []))) or "-"


def _attempt(attempt: dict) -> str:
    where = f"{attempt['pool']}/{attempt.get('gpu_id') or 'waiting'}"
    if attempt.get("outcome") in ("failed", "spilled"):
        where += f" ({attempt['outcome']}: {(attempt.get('error') or '').removeprefix('Spillway.')})"
    return where


@dataclass(frozen=True)
class Phase:
    title: str
    cut: dict[str, Any] | None  # the links cut during it: a chaos selection ({} = every GPU's); None = none
    jobs: list[tuple[str, dict[str, Any]]]  # (service, how) of each job submitted in it


PHASES = [
    Phase("Every link up: the office GPUs take everything", None,
          [("remove_furniture", NORMAL), ("upscale_2x", NORMAL), ("remove_furniture", US_PRIORITY)]),
    Phase("local-0's link drops: its jobs move to the other office GPUs", {"gpu_ids": ["local-0"]},
          [("remove_furniture", NORMAL), ("upscale_2x", NORMAL), ("remove_furniture", NORMAL)]),
    Phase("The whole office link drops: the cloud takes over", {"pool": "local"},
          [("remove_furniture", NORMAL), ("upscale_2x", NORMAL), ("remove_furniture", US_PRIORITY)]),
    Phase("The cloud's network fails too: US priority jobs go to FaaS", {},
          [("remove_furniture", US_PRIORITY), ("remove_furniture", US_PRIORITY)]),
]


def run(stack: StackInfo, out_dir: Path, say: Callable[[str], None] = print, deadline_s: float = 300.0,
        steady: bool = False) -> bool:
    """Every phase in turn (with `steady`, no link drops); True if every job succeeded."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs: list[DemoJob] = []
    with stack.api_client(TIMEOUT) as api:
        for phase in PHASES:
            say(f"\n== {phase.title}")
            if not steady:
                stack.restore_tunnels()
                if phase.cut is not None:
                    stack.cut_tunnels(*phase.cut.get("gpu_ids", ()), pool=phase.cut.get("pool"))
            batch = [DemoJob(seed=len(jobs) + i, service=service, how=how)
                     for i, (service, how) in enumerate(phase.jobs)]
            jobs += batch
            try:
                _submit_and_follow(api, batch, out_dir, deadline_s, say)
            finally:
                if phase is PHASES[-1] and not steady:
                    stack.restore_tunnels()
                    say("Every link is back.")
        say("")
        for job in jobs:
            _report(job, out_dir, say)
    _spend(stack, say)
    return all(j.status == "SUCCEEDED" for j in jobs)


def _report(job: DemoJob, out_dir: Path, say: Callable[[str], None]) -> None:
    view = job.view
    if job.status == "SUCCEEDED":
        target = out_dir / f"room-{job.seed}-{job.service}.png"
        target.write_bytes(httpx.get(view["result_url"], timeout=TIMEOUT).raise_for_status().content)
        outcome = f"-> {target}"
    else:
        outcome = view.get("error") or job.status
    say(f"{job.job_id}  {job.service:<16} {job.kind:<11} {job.status:<9} ${view.get('cost_usd', 0):.5f}  {outcome}")
    for attempt in view.get("attempts", []):
        where = f"{attempt['pool']}/{attempt.get('gpu_id') or '-'}"
        result = attempt.get("outcome") or "open"
        if attempt.get("reason") and result != "succeeded":
            result += f": {attempt['reason'][:90]}"
        say(f"    #{attempt['number']} {where:<22} ${attempt['cost_usd']:.5f}  {result}")
        say(f"       why: {attempt.get('route') or '-'}")


def _spend(stack: StackInfo, say: Callable[[str], None]) -> None:
    """Today's FaaS spend from the budget ledger, against the daily budget and each segment's."""
    rules = default_rules()
    typed = TypeDeserializer()
    items = stack.boto3_client("dynamodb").scan(TableName=stack.resources["BudgetTable"])["Items"]
    counters = [{k: typed.deserialize(v) for k, v in i.items()} for i in items]
    counters = [c for c in counters if not str(c["budget_id"]).startswith("reservation#")]
    day = next((c for c in counters if "segment" not in c), {})
    say(f"\nFaaS spend today: ${int(day.get('settled_micro', 0)) / MICRO:.5f} settled, "
        f"${int(day.get('committed_micro', 0)) / MICRO:.5f} committed, "
        f"of a ${rules.faas.daily_budget_usd:g} daily budget")
    for segment in rules.faas.segments:
        counter = next((c for c in counters if c.get("segment") == segment.name), {})
        cap = f"${segment.daily_budget_usd:g}" if segment.daily_budget_usd is not None else "no cap of its own"
        say(f"  segment {segment.name}: ${int(counter.get('settled_micro', 0)) / MICRO:.5f} settled ({cap})")


def submit(api: httpx.Client, job: DemoJob, image: bytes) -> None:
    key = upload(api, image)
    accepted = api.post(
        "/v1/jobs",
        json={"service": job.service, "input_key": key, **job.how, "idempotency_key": f"demo-{job.seed}-{key[8:20]}"},
    ).raise_for_status().json()
    job.job_id, job.status = accepted["job_id"], accepted["status"]


def follow(api: httpx.Client, jobs: list[DemoJob], deadline_s: float, say: Callable[[str], None],
           poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + deadline_s
    while any(j.status not in ("SUCCEEDED", "FAILED") for j in jobs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still running after {deadline_s:.0f}s")
        for job in jobs:
            if job.status in ("SUCCEEDED", "FAILED"):
                continue
            before = (job.status, job.path)
            job.view = api.get(f"/v1/jobs/{job.job_id}").raise_for_status().json()
            job.status = job.view["status"]
            if (job.status, job.path) != before:
                say(f"  {job.job_id}  {job.service:<16} {job.kind:<11} {job.status:<9} {job.path}")
        time.sleep(poll_s)


def _submit_and_follow(api: httpx.Client, jobs: list[DemoJob], out_dir: Path, deadline_s: float,
                       say: Callable[[str], None]) -> None:
    for job in jobs:
        image = render_room(job.seed)
        (out_dir / f"room-{job.seed}-input.png").write_bytes(image)
        submit(api, job, image)
        say(f"  {job.job_id}  {job.service:<16} {job.kind:<11} {job.status}")
    follow(api, jobs, deadline_s, say)
