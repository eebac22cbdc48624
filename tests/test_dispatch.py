"""The pool dispatcher: into the waiting room, onto a GPU, pushed to its agent; failing fast by kind."""

from __future__ import annotations

import json

import httpx
import pytest

from spillway import credentials, signing
from spillway.dispatch import Dispatcher
from spillway.fleet import Fleet
from spillway.models import ErrorType, Pool, PoolTask, Priority, TaskState

from conftest import Cloud
from helpers import (
    CONTROL_KEY,
    Clock,
    FakeAgents,
    RecordingStepFunctions,
    beat,
    dispatcher_for,
    fleet_for,
    job_id_for,
    pool_task,
    running_job,
    task_id_for,
    token_for,
)
from test_fleet import NOW


@pytest.fixture
def cloud(shared_cloud: Cloud) -> Cloud:
    """One stack for the module, emptied before each test (see conftest)."""
    return shared_cloud


@pytest.fixture
def agents() -> FakeAgents:
    return FakeAgents()


@pytest.fixture
def sfn() -> RecordingStepFunctions:
    return RecordingStepFunctions()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def fleet(cloud: Cloud) -> Fleet:
    fleet = fleet_for(cloud.settings)
    fleet.enroll("local-0", Pool.LOCAL, "https://local-0.agents.test:9000", 6000,
                 credentials.credential("local-0", CONTROL_KEY, 1))
    fleet.heartbeat(beat("local-0", vram_mb=6000, slots=4), now=NOW)
    return fleet


@pytest.fixture
def dispatcher(cloud: Cloud, fleet: Fleet, agents: FakeAgents, sfn: RecordingStepFunctions, clock: Clock) -> Dispatcher:
    return dispatcher_for(cloud.settings, agents.client(), clock=clock, sfn=sfn)


def queued(cloud: Cloud, job: int = 1, attempt: int = 1, vram_mb: int = 2500, opened: int | None = None) -> PoolTask:
    """An attempt the state machine sends to the local pool; its job record opened attempt `opened`."""
    task = pool_task(job_id_for(job), NOW, attempt=attempt, vram_mb=vram_mb)
    running_job(cloud.settings, task.job_id, opened or attempt)
    return task


def state(fleet: Fleet, task: PoolTask) -> TaskState:
    stored = fleet.task(task_id_for(task.job_id, task.attempt))
    assert stored is not None
    return stored.state


def test_pushes_the_task_signed_with_the_agents_secret_with_presigned_urls_its_secret_and_no_token(
    cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher, agents: FakeAgents
) -> None:
    task = queued(cloud)
    task_id = task_id_for(task.job_id, 1)
    assert dispatcher.enqueue(task) == {task_id: "pushed"}
    ((gpu_id, pushed),) = agents.pushed
    assert (gpu_id, pushed.task_id, pushed.job_id, pushed.service) == ("local-0", task_id, task.job_id,
                                                                      "remove_furniture")
    assert task.task_token not in json.dumps(pushed.model_dump(mode="json")), "tokens never leave the control plane"
    assert "X-Amz-Signature" in str(pushed.input_url) and "X-Amz-Signature" in str(pushed.output_url)
    assert "uploads/in.png" in str(pushed.input_url)
    assert f"results/{task.job_id}/attempt-1.png" in str(pushed.output_url)
    ((headers, body),) = agents.signed
    agent_key = signing.secret_bytes(credentials.agent_secret(CONTROL_KEY, "local-0", 1))
    assert signing.verify([agent_key], headers, body, NOW), "agents take tasks only from the control plane"
    assert credentials.matches(pushed.task_secret, fleet.task(task_id).secret_hash), "its reports present it"
    assert fleet.get("local-0").vram_free_mb == 3500
    stored = fleet.task(task_id)
    assert (stored.state, stored.gpu_id, stored.running_at, stored.beat_at) == (TaskState.RUNNING, "local-0", NOW, NOW)
    assert stored.task_token == task.task_token, "the token stays in the tasks table"


def test_a_redelivered_message_never_leases_twice(cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher,
                                                  agents: FakeAgents) -> None:
    task = queued(cloud)
    dispatcher.enqueue(task)
    assert dispatcher.enqueue(task) == {}, "running already: nothing to do"
    assert agents.task_ids() == [task_id_for(task.job_id, 1)]
    assert (fleet.get("local-0").vram_free_mb, fleet.get("local-0").running) == (3500, 1)
    assert fleet.waiting_room.depth(Pool.LOCAL) == 0


def test_a_redelivery_after_a_crash_between_lease_and_push_pushes_the_same_lease(
    cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher, agents: FakeAgents
) -> None:
    task = queued(cloud)
    agents.answer = RuntimeError("the poller's invocation died here")
    with pytest.raises(RuntimeError):
        dispatcher.enqueue(task)
    assert state(fleet, task) is TaskState.ASSIGNED
    agents.answer = 202
    assert dispatcher.enqueue(task) == {task_id_for(task.job_id, 1): "pushed"}, "SQS delivers it again"
    assert agents.task_ids() == [task_id_for(task.job_id, 1)]
    assert (fleet.get("local-0").vram_free_mb, fleet.get("local-0").running) == (3500, 1)
    assert state(fleet, task) is TaskState.RUNNING


def test_a_redelivery_after_the_task_ended_changes_nothing(cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher,
                                                          agents: FakeAgents, sfn: RecordingStepFunctions) -> None:
    task = queued(cloud)
    dispatcher.enqueue(task)
    dispatcher.fail(fleet.task(task_id_for(task.job_id, 1)), ErrorType.MODEL_ERROR, "crashed")
    assert dispatcher.enqueue(task) == {}
    assert agents.task_ids() == [task_id_for(task.job_id, 1)]
    assert fleet.waiting_room.depth(Pool.LOCAL) == 0 and fleet.open_tasks(Pool.LOCAL) == []
    assert (fleet.get("local-0").vram_free_mb, fleet.get("local-0").running) == (6000, 0)
    assert len(sfn.failures()) == 1


def test_two_dispatchers_racing_for_the_last_slot_never_oversubscribe_it(
    cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher, agents: FakeAgents, clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet.heartbeat(beat("local-0", vram_mb=6000, slots=1, draining=True), now=NOW)  # nothing starts yet
    first = queued(cloud, 1)
    dispatcher.enqueue(first)
    clock.advance(1)
    second = queued(cloud, 2)
    dispatcher.enqueue(second)
    dispatcher.on_heartbeat(beat("local-0", vram_mb=6000, slots=1))  # back from its drain: probed, on probation
    seen_by_the_other = fleet.available(Pool.LOCAL, clock.now, cloud.settings.agent_stale_seconds)
    other = dispatcher_for(cloud.settings, agents.client(), clock=clock)
    assert dispatcher.pump(Pool.LOCAL) == {task_id_for(first.job_id, 1): "pushed"}
    # The other dispatcher read the fleet before that assignment: to it, local-0 still has its slot.
    monkeypatch.setattr(other._fleet, "available", lambda *args, **kwargs: seen_by_the_other)
    assert other.pump(Pool.LOCAL) == {}
    assert (fleet.get("local-0").vram_free_mb, fleet.get("local-0").running) == (3500, 1)
    assert agents.task_ids() == [task_id_for(first.job_id, 1)]
    assert [e.task_id for e in fleet.waiting_room.front(Pool.LOCAL)] == [task_id_for(second.job_id, 1)]


def test_with_no_free_gpu_the_task_waits_in_the_room(cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher,
                                                    agents: FakeAgents) -> None:
    first, second, third = (queued(cloud, job) for job in (1, 2, 3))
    dispatcher.enqueue(first)
    dispatcher.enqueue(second)
    assert dispatcher.enqueue(third) == {}, "6000 MB hold two tasks of 2500, not three"
    assert len(agents.pushed) == 2
    assert [e.task_id for e in fleet.waiting_room.front(Pool.LOCAL)] == [task_id_for(third.job_id, 1)]
    assert state(fleet, third) is TaskState.WAITING


def test_an_attempt_that_moved_on_is_never_started_and_leaves_the_room(
    cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher, agents: FakeAgents, sfn: RecordingStepFunctions
) -> None:
    task = queued(cloud, attempt=1, opened=2)
    assert dispatcher.enqueue(task) == {}
    assert agents.pushed == []
    assert fleet.waiting_room.depth(Pool.LOCAL) == 0, "its entry is cleaned up"
    stored = fleet.task(task_id_for(task.job_id, 1))
    assert (stored.state, stored.outcome) == (TaskState.DONE, "abandoned")
    assert fleet.get("local-0").vram_free_mb == 6000
    assert fleet.open_tasks(Pool.LOCAL) == []
    assert sfn.calls == [], "nobody waits on that token any more"


@pytest.mark.parametrize(
    "answer", [httpx.ConnectError("connection refused"), httpx.ConnectTimeout("tunnel down"), 500, 401],
    ids=["refused", "connect-timeout", "broken", "another-key"],
)
def test_unreachable_agent_fails_the_attempt_at_once_and_frees_the_gpu(
    cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher, agents: FakeAgents, sfn: RecordingStepFunctions,
    answer: int | Exception,
) -> None:
    agents.answer = answer
    task = queued(cloud)
    assert dispatcher.enqueue(task) == {task_id_for(task.job_id, 1): "GpuUnreachable"}
    assert sfn.failures() == [(token_for(task.job_id), "Spillway.GpuUnreachable")]
    assert "local-0" in sfn.calls[0][1]["cause"]
    assert (fleet.get("local-0").vram_free_mb, fleet.get("local-0").running) == (6000, 0)
    stored = fleet.task(task_id_for(task.job_id, 1))
    assert (stored.state, stored.outcome, stored.error_type) == (TaskState.DONE, "failed", "GpuUnreachable")


def test_an_agent_that_rejects_the_task_fails_it_as_a_model_error(
    cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher, agents: FakeAgents, sfn: RecordingStepFunctions
) -> None:
    agents.answer = 422
    task = queued(cloud)
    assert dispatcher.enqueue(task) == {task_id_for(task.job_id, 1): "ModelError"}
    assert sfn.failures() == [(token_for(task.job_id), "Spillway.ModelError")]
    assert fleet.get("local-0").vram_free_mb == 6000


def test_a_refusing_agent_gives_the_task_back_to_the_room_in_its_place(
    cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher, agents: FakeAgents, sfn: RecordingStepFunctions,
    clock: Clock,
) -> None:
    agents.answer = 503
    first = queued(cloud, 1)
    assert dispatcher.enqueue(first) == {task_id_for(first.job_id, 1): "refused"}
    clock.advance(1)
    second = queued(cloud, 2)
    assert dispatcher.enqueue(second) == {task_id_for(first.job_id, 1): "refused",
                                          task_id_for(second.job_id, 1): "refused"}, "once per pump each"
    assert (fleet.get("local-0").vram_free_mb, fleet.get("local-0").running) == (6000, 0)
    assert [e.task_id for e in fleet.waiting_room.front(Pool.LOCAL)] == [
        task_id_for(first.job_id, 1), task_id_for(second.job_id, 1)], "each back in its place"
    assert sfn.calls == [], "a refusal is not a failure"
    agents.answer = 202
    agents.pushed.clear()
    dispatcher.pump(Pool.LOCAL)
    assert agents.task_ids() == [task_id_for(first.job_id, 1), task_id_for(second.job_id, 1)]


def test_a_refused_task_goes_to_another_gpu_in_the_same_pump(
    cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher, agents: FakeAgents
) -> None:
    fleet.heartbeat(beat("local-1", vram_mb=16000), now=NOW)
    agents.answers["local-0"] = 503  # best fit (less free VRAM), but draining
    task = queued(cloud)
    assert dispatcher.enqueue(task) == {task_id_for(task.job_id, 1): "pushed"}
    assert [gpu_id for gpu_id, _ in agents.pushed] == ["local-0", "local-1"]
    assert fleet.task(task_id_for(task.job_id, 1)).gpu_id == "local-1"
    assert fleet.get("local-0").vram_free_mb == 6000


def test_a_stale_or_draining_agent_gets_no_work(cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher,
                                                agents: FakeAgents, clock: Clock) -> None:
    fleet.heartbeat(beat("local-1", vram_mb=16000, draining=True), now=NOW + 31)
    clock.advance(cloud.settings.agent_stale_seconds + 1)
    task = queued(cloud)
    assert dispatcher.enqueue(task) == {}
    assert agents.pushed == []
    assert dispatcher.on_heartbeat(beat("local-0", vram_mb=6000, slots=4)), "back from silence: probed, probation"
    assert dispatcher.pump(Pool.LOCAL) == {task_id_for(task.job_id, 1): "pushed"}


def test_an_attempt_alone_in_an_empty_room_is_leased_at_once_and_one_behind_a_queue_waits_its_turn(
    cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher, agents: FakeAgents, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody waits: the task is written leased in one transaction, never entering the room (half the write
    units). Somebody waits: it enters the room, and the room's order decides."""
    fleet.heartbeat(beat("local-0", vram_mb=6000, slots=1), now=NOW)
    entered: list[str] = []
    enqueue = Fleet.enqueue
    monkeypatch.setattr(Fleet, "enqueue", lambda self, task: entered.append(task.task_id) or enqueue(self, task))
    first = queued(cloud, job=1)
    assert dispatcher.enqueue(first) == {task_id_for(first.job_id, 1): "pushed"}
    assert entered == [] and state(fleet, first) is TaskState.RUNNING
    assert cloud.job_item(first.job_id)["attempts"][0]["gpu_id"] == "local-0", "the job's note, as an assignment's"
    second, third = queued(cloud, job=2), queued(cloud, job=3)
    assert dispatcher.enqueue(second) == {}, "no free slot: it waits in the room"
    assert dispatcher.enqueue(third) == {}
    assert entered == [task_id_for(second.job_id, 1), task_id_for(third.job_id, 1)]
    assert sorted(e.task_id for e in fleet.waiting_room.front(Pool.LOCAL)) == sorted(entered)


def test_a_batch_enters_the_room_together_and_starts_in_the_rooms_order(
    cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher, agents: FakeAgents
) -> None:
    """A poller's batch of arrivals is pumped once: with one free slot the high one starts, though it
    came last in the batch; the low ones wait, each held to its wait bound."""
    fleet.heartbeat(beat("local-0", vram_mb=6000, slots=1), now=NOW)
    lows = [pool_task(job_id_for(n), NOW, priority=Priority.LOW) for n in (1, 2)]
    high = pool_task(job_id_for(3), NOW, priority=Priority.HIGH)
    for task in (*lows, high):
        running_job(cloud.settings, task.job_id)
    outcomes = dispatcher.enqueue_batch([*lows, high])
    assert outcomes == {task_id_for(high.job_id, 1): "pushed"}
    assert agents.task_ids() == [task_id_for(high.job_id, 1)]
    # Both arrived at the same instant: their ids break the tie.
    assert sorted(e.task_id for e in fleet.waiting_room.front(Pool.LOCAL)) == sorted(task_id_for(t.job_id, 1)
                                                                                     for t in lows)


def test_a_lone_arrival_whose_gpu_another_dispatcher_took_meanwhile_goes_to_the_next_that_fits(
    cloud: Cloud, fleet: Fleet, dispatcher: Dispatcher, agents: FakeAgents, clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet.heartbeat(beat("local-0", vram_mb=6000, slots=1), now=NOW)
    fleet.heartbeat(beat("local-1", vram_mb=16000, slots=1), now=NOW)
    seen_before = fleet.available(Pool.LOCAL, NOW, cloud.settings.agent_stale_seconds)
    other = dispatcher_for(cloud.settings, agents.client(), clock=clock)
    first = queued(cloud, job=1)
    assert other.enqueue(first) == {task_id_for(first.job_id, 1): "pushed"}
    assert fleet.task(task_id_for(first.job_id, 1)).gpu_id == "local-0", "the best fit"
    # This dispatcher read the fleet before the other's lease: local-0, the best fit, still looks free to it.
    monkeypatch.setattr(dispatcher._fleet, "available", lambda *args, **kwargs: seen_before)
    second = queued(cloud, job=2)
    assert dispatcher.enqueue(second) == {task_id_for(second.job_id, 1): "pushed"}
    assert fleet.task(task_id_for(second.job_id, 1)).gpu_id == "local-1"
    assert sorted((g.gpu_id, g.running) for g in fleet.gpus(Pool.LOCAL)) == [("local-0", 1), ("local-1", 1)]
    assert fleet.waiting_room.depth(Pool.LOCAL) == 0


def test_a_push_or_a_cancel_on_a_connection_the_agent_dropped_is_sent_again_signed_anew(
    cloud: Cloud, fleet: Fleet, clock: Clock
) -> None:
    """A pooled connection the agent's end dropped (it restarted) fails before any answer: the same message goes
    again, under a new message id (the agent refuses one it has seen), and the call does not fail."""
    sent: list[tuple[str, str]] = []  # (path, message id) of every send
    dropped: set[str] = set()  # paths whose first send met a dropped connection

    def agent(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, request.headers[signing.ID]))
        if request.url.path not in dropped:
            dropped.add(request.url.path)
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(202 if request.url.path == "/v1/tasks" else 200, json={"task_id": "x", "state": "ok"})

    dispatcher = dispatcher_for(cloud.settings, httpx.Client(transport=httpx.MockTransport(agent)), clock=clock)
    task = queued(cloud)
    task_id = task_id_for(task.job_id, 1)
    assert dispatcher.enqueue(task) == {task_id: "pushed"}
    assert dispatcher.cancel(task_id) == "agent_told"
    cancel = f"/v1/tasks/{task_id}/cancel"
    assert [path for path, _ in sent] == ["/v1/tasks", "/v1/tasks", cancel, cancel]
    assert len({msg_id for _, msg_id in sent}) == 4, "each send signed anew"
