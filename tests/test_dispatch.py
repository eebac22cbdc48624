"""The poller's domain: lease, push, and fail fast by kind."""

from __future__ import annotations

import json

import httpx
import pytest

from spillway.dispatch import task_id_for
from spillway.errors import NoCapacity
from spillway.models import AgentTask, Pool, PoolTask

from conftest import Cloud
from helpers import AGENT_KEY, beat, dispatcher_for, fleet_for
from test_fleet import NOW, running_job


class FakeAgents:
    """Stands for the agents' HTTP endpoints: records pushes, answers as told."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, AgentTask]] = []
        self.keys: list[str | None] = []
        self.answer: int | Exception = 202

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if isinstance(self.answer, Exception):
            raise self.answer
        self.keys.append(request.headers.get("Authorization"))
        self.pushed.append((request.url.host, AgentTask.model_validate_json(request.content)))
        return httpx.Response(self.answer, json={"task_id": "x", "state": "accepted"})


@pytest.fixture
def agents() -> FakeAgents:
    return FakeAgents()


@pytest.fixture
def dispatcher(cloud: Cloud, agents: FakeAgents):
    fleet_for(cloud.settings).heartbeat(beat("local-0", vram_mb=6000), now=NOW)
    return dispatcher_for(cloud.settings, httpx.Client(transport=httpx.MockTransport(agents)), clock=lambda: NOW)


def queued(job_id: str = "j-1", attempt: int = 1, vram_mb: int = 2500) -> PoolTask:
    return PoolTask(job_id="j-" + job_id[2:].ljust(32, "0"), attempt=attempt, pool=Pool.LOCAL,
                    service="remove_furniture", input_key="uploads/in.png", vram_mb=vram_mb, task_token="tok")


def test_pushes_the_task_with_presigned_urls_and_no_token(cloud: Cloud, dispatcher, agents: FakeAgents) -> None:
    task = queued()
    running_job(cloud, task.job_id)
    assert dispatcher.dispatch(task) == "pushed"
    ((host, pushed),) = agents.pushed
    assert host == "local-0.agents.test"
    assert pushed.task_id == task_id_for(task.job_id, 1)
    assert "tok" not in json.dumps(pushed.model_dump(mode="json")), "task tokens never leave the control plane"
    assert "X-Amz-Signature" in str(pushed.input_url) and "X-Amz-Signature" in str(pushed.output_url)
    assert fleet_for(cloud.settings).get("local-0").vram_free_mb == 3500
    assert agents.keys == [f"Bearer {AGENT_KEY}"], "agents take tasks only from the control plane"


def test_a_redelivered_message_pushes_the_same_task_again_without_a_new_lease(
    cloud: Cloud, dispatcher, agents: FakeAgents
) -> None:
    task = queued()
    running_job(cloud, task.job_id)
    dispatcher.dispatch(task)
    dispatcher.dispatch(task)
    assert [p.task_id for _, p in agents.pushed] == [task_id_for(task.job_id, 1)] * 2
    assert fleet_for(cloud.settings).get("local-0").vram_free_mb == 3500


def test_no_free_gpu_means_retry_later(cloud: Cloud, dispatcher) -> None:
    first, second, third = queued("j-1"), queued("j-2"), queued("j-3")
    for t in (first, second, third):
        running_job(cloud, t.job_id)
    dispatcher.dispatch(first)
    dispatcher.dispatch(second)
    with pytest.raises(NoCapacity):
        dispatcher.dispatch(third)  # 6000 MB hold two tasks of 2500, not three


def test_a_stale_attempt_is_dropped(cloud: Cloud, dispatcher, agents: FakeAgents) -> None:
    task = queued()
    running_job(cloud, task.job_id, attempt=2)
    assert dispatcher.dispatch(task) == "stale"
    assert agents.pushed == []


@pytest.mark.parametrize(
    "answer", [httpx.ConnectError("connection refused"), 500, 401], ids=["refused", "broken", "another key"]
)
def test_unreachable_agent_fails_the_attempt_at_once_and_frees_the_gpu(
    cloud: Cloud, dispatcher, agents: FakeAgents, monkeypatch: pytest.MonkeyPatch, answer: int | Exception
) -> None:
    failures = []
    monkeypatch.setattr(dispatcher._sfn, "send_task_failure", lambda **kw: failures.append(kw))
    agents.answer = answer
    task = queued()
    running_job(cloud, task.job_id)
    assert dispatcher.dispatch(task) == "GpuUnreachable"
    assert [(f["taskToken"], f["error"]) for f in failures] == [("tok", "Spillway.GpuUnreachable")]
    assert fleet_for(cloud.settings).get("local-0").vram_free_mb == 6000


def test_a_refusing_agent_gives_the_lease_back(cloud: Cloud, dispatcher, agents: FakeAgents) -> None:
    agents.answer = 503
    task = queued()
    running_job(cloud, task.job_id)
    with pytest.raises(NoCapacity):
        dispatcher.dispatch(task)
    fleet = fleet_for(cloud.settings)
    assert fleet.get("local-0").vram_free_mb == 6000
    assert fleet.task(task_id_for(task.job_id, 1)) is None
    agents.answer = 202
    assert dispatcher.dispatch(task) == "pushed", "the same attempt can lease again"
