"""Cancel: the record ends CANCELLED first, the execution is stopped, the task ends (out of the room, or its GPU
freed and its agent told), the job's webhook is queued once; a finished job is a 409; idempotent."""

from __future__ import annotations

import json
import time

import httpx
from test_api import OTHER_TENANT, call

from spillway import aws, credentials
from spillway.handlers.wiring import admission
from spillway.jobs import JobStore
from spillway.models import JobStatus, Pool, TaskState, WebhookNotice

from conftest import Cloud
from helpers import (
    CONTROL_KEY,
    beat,
    dispatcher_for,
    job_id_for,
    pool_task,
    running_job,
    task_id_for,
)
from test_state_machine import admit, executions, next_task, submitted_job, tenant_slots


def notices(cloud: Cloud) -> list[str]:
    """The jobs named by the webhook notices queued since the last look (taken off the queue)."""
    return [WebhookNotice.model_validate(m).job_id for m in cloud.queue_messages("WebhookQueue")]


def test_a_running_job_is_cancelled_its_execution_stopped_and_its_webhook_queued_once(cloud: Cloud,
                                                                                      monkeypatch) -> None:
    job = submitted_job(cloud, webhook_url="https://hooks.example.com/spillway")
    admit(job)
    next_task(cloud, "LocalQueue")  # the execution waits in RunAttempt
    reads: list[str] = []
    get = JobStore.get
    monkeypatch.setattr(JobStore, "get", lambda self, job_id: reads.append(job_id) or get(self, job_id))

    status, view = call("POST", f"/v1/jobs/{job.job_id}/cancel", {"reason": "a typo in the order"})
    assert status == 200, view
    assert reads == [job.job_id], "read once: the answer is the record as the closing write left it"
    assert view["status"] == "CANCELLED" and view["error"] == "Spillway.Cancelled: a typo in the order"
    assert view["finished_at"]
    assert cloud.wait_for_execution(job.job_id)["status"] == "ABORTED"
    assert notices(cloud) == [job.job_id]

    status, again = call("POST", f"/v1/jobs/{job.job_id}/cancel")
    assert (status, again["status"], again["error"]) == (200, "CANCELLED", view["error"]), "idempotent"
    assert notices(cloud) == [], "its end is told once (the first notice was taken above)"


def test_a_job_not_admitted_yet_is_cancelled_and_gets_no_execution(cloud: Cloud) -> None:
    job = submitted_job(cloud)
    status, view = call("POST", f"/v1/jobs/{job.job_id}/cancel")
    assert (status, view["status"]) == (200, "CANCELLED")
    assert view["error"] == "Spillway.Cancelled: cancelled by its client"
    assert notices(cloud) == [], "no webhook_url: nothing to tell"
    assert admission().start(job) is None, "its intake message arrives after the cancel: no execution starts"
    assert executions(cloud) == []
    assert tenant_slots(cloud) == set(), "its slot given back there: no execution will end to give it back"
    assert cloud.job_item(job.job_id)["status"] == "CANCELLED"


def test_cancel_of_a_finished_job_is_a_409_with_its_status_and_of_no_job_a_404(cloud: Cloud) -> None:
    job = submitted_job(cloud)
    status, answer = call("POST", f"/v1/jobs/{job.job_id}/cancel", principal=OTHER_TENANT)
    assert status == 404 and "no job" in answer["message"], "another tenant's job is no job to its caller"
    assert cloud.job_item(job.job_id)["status"] == "QUEUED", "and nothing is cancelled"
    JobStore(aws.table(cloud.settings.jobs_table)).close(job.job_id, JobStatus.SUCCEEDED, "2026-01-01T00:00:00+00:00")
    status, answer = call("POST", f"/v1/jobs/{job.job_id}/cancel")
    assert status == 409 and "SUCCEEDED" in answer["message"]
    assert cloud.job_item(job.job_id)["status"] == "SUCCEEDED"
    status, answer = call("POST", f"/v1/jobs/{job_id_for(404)}/cancel")
    assert status == 404 and "no job" in answer["message"]
    status, answer = call("POST", f"/v1/jobs/{job.job_id}/cancel", {"reason": "x" * 501})
    assert status == 422 and "reason" in answer["message"]


class Agent:
    """The agents' side of the link: takes pushes, records cancels."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cancel"):
            task_id = request.url.path.split("/")[3]
            assert request.headers.get("webhook-signature"), "a cancel is signed, as a push is"
            assert json.loads(request.content) == {"task_id": task_id}, "and its signed body names the task"
            self.cancelled.append(task_id)
            return httpx.Response(200, json={"task_id": "x", "state": "cancelled"})
        return httpx.Response(202, json={"task_id": "x", "state": "accepted"})


def test_a_cancelled_task_leaves_the_room_or_frees_its_gpu_and_its_agent_is_told(cloud: Cloud) -> None:
    agent = Agent()
    dispatcher = dispatcher_for(cloud.settings, httpx.Client(transport=httpx.MockTransport(agent)), time.time)
    waiting, running = job_id_for(1), job_id_for(2)
    for job_id in (waiting, running):
        running_job(cloud.settings, job_id)
    dispatcher.enqueue(pool_task(waiting, time.time()))  # no GPU yet: it waits
    assert dispatcher.cancel(task_id_for(waiting, 1)) == "left_room"
    assert list(dispatcher._fleet.waiting_room.front(pool_task(waiting, 0).pool)) == []

    dispatcher._fleet.enroll("local-0", Pool.LOCAL, "https://local-0.agents.test:9000", 8000,
                             credentials.credential("local-0", CONTROL_KEY, 1))
    dispatcher.on_heartbeat(beat("local-0"))
    dispatcher.enqueue(pool_task(running, time.time()))
    task_id = task_id_for(running, 1)
    assert dispatcher._fleet.task(task_id).state is TaskState.RUNNING
    assert dispatcher._fleet.get("local-0").vram_free_mb < 8000

    assert dispatcher.cancel(task_id) == "agent_told"
    assert agent.cancelled == [task_id]
    gpu = dispatcher._fleet.get("local-0")
    assert (gpu.vram_free_mb, gpu.running) == (8000, 0), "its VRAM and slot are back"
    task = dispatcher._fleet.task(task_id)
    assert (task.state, task.outcome, task.open_pool) == (TaskState.DONE, "cancelled", None)
    assert dispatcher.cancel(task_id) == "over", "once"
