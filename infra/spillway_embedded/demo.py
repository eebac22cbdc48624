"""The demo: a client that pushes generated room photos through the real HTTP API.

It does what a customer's integration does: ask for an upload URL, PUT the photo, submit the
job, follow it until it is answered, and fetch the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from spillway.rooms import render_room

TIMEOUT = httpx.Timeout(10.0, connect=2.0)


@dataclass
class DemoJob:
    seed: int
    service: str
    priority: str
    job_id: str = ""
    status: str = "NEW"
    view: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        """Where its attempts ran, e.g. 'local/local-2 (GpuUnreachable) -> cloud/cloud-0'."""
        return " -> ".join(map(_attempt, self.view.get("attempts", []))) or "-"


def _attempt(attempt: dict) -> str:
    where = f"{attempt['pool']}/{attempt.get('gpu_id') or 'waiting'}"
    if attempt.get("outcome") == "failed":
        where += f" ({(attempt.get('error') or 'failed').removeprefix('Spillway.')})"
    return where


def plan(count: int) -> list[DemoJob]:
    services = ["remove_furniture", "remove_furniture", "upscale_2x"]
    priorities = ["high", "normal", "normal", "low"]
    return [DemoJob(seed=i, service=services[i % 3], priority=priorities[i % 4]) for i in range(count)]


def submit(api: httpx.Client, job: DemoJob, image: bytes) -> None:
    ticket = api.post("/v1/uploads", json={"content_type": "image/png"}).raise_for_status().json()
    httpx.put(ticket["upload_url"], content=image, headers=ticket["headers"], timeout=TIMEOUT).raise_for_status()
    accepted = api.post(
        "/v1/jobs",
        json={"service": job.service, "input_key": ticket["input_key"], "priority": job.priority,
              "idempotency_key": f"demo-{job.seed}-{ticket['input_key'][8:20]}"},
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
                say(f"  {job.job_id}  {job.service:<17} {job.status:<10} {job.path}")
        time.sleep(poll_s)


def run(api_url: str, out_dir: Path, count: int, say: Callable[[str], None] = print,
        deadline_s: float = 300.0, link: Callable[[bool], None] | None = None) -> bool:
    """Push `count` photos through; with `link`, the second half goes while the office link is down."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = plan(count)
    halves = [jobs[: (count + 1) // 2], jobs[(count + 1) // 2:]] if link else [jobs]
    with httpx.Client(base_url=api_url, timeout=TIMEOUT) as api:
        for phase, batch in enumerate(halves):
            if not batch:
                continue
            if phase == 1 and link:
                say("\nThe office link drops (the tunnel in front of the local GPUs is cut) ...")
                link(False)
            try:
                _submit_and_follow(api, batch, out_dir, deadline_s, say)
            finally:
                if phase == 1 and link:
                    link(True)
                    say("The link is back.")
        say("")
        say(f"{'job':<35} {'service':<17} {'status':<10} {'ran on':<48} result")
        for job in jobs:
            result = "-"
            if job.status == "SUCCEEDED":
                target = out_dir / f"room-{job.seed}-{job.service}.png"
                target.write_bytes(httpx.get(job.view["result_url"], timeout=TIMEOUT).raise_for_status().content)
                result = str(target)
            elif job.view.get("error"):
                result = job.view["error"]
            say(f"{job.job_id:<35} {job.service:<17} {job.status:<10} {job.path:<48} {result}")
    return all(j.status == "SUCCEEDED" for j in jobs)


def _submit_and_follow(api: httpx.Client, jobs: list[DemoJob], out_dir: Path, deadline_s: float,
                       say: Callable[[str], None]) -> None:
    say(f"Submitting {len(jobs)} room photos through {api.base_url} ...")
    for job in jobs:
        image = render_room(job.seed)
        (out_dir / f"room-{job.seed}-input.png").write_bytes(image)
        submit(api, job, image)
        say(f"  {job.job_id}  {job.service:<17} {job.status:<10} (priority {job.priority})")
    say("Following them until each is answered:")
    follow(api, jobs, deadline_s, say)
