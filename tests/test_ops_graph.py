"""`spillway graph`: the dispatch definition drawn, the path a job's execution took lit, from its history
as moto's interpreter (and AWS) writes it."""

from __future__ import annotations

import json
from pathlib import Path

from spillway.models import ErrorType
from spillway_ops.graph import END, START, Lit, StateGraph, path_of, render

from conftest import Cloud
from test_state_machine import admit, next_task, ran_on, submitted_job, succeed

DEFINITION = json.loads((Path(__file__).resolve().parents[1] / "state_machines" / "dispatch.asl.json").read_text())
GRAPH = StateGraph.of(DEFINITION)


def history(cloud: Cloud, job_id: str) -> list[dict]:
    arn = cloud.physical["DispatchStateMachine"].replace(":stateMachine:", ":execution:") + f":{job_id}"
    pages = cloud.client("stepfunctions").get_paginator("get_execution_history").paginate(executionArn=arn)
    return [event for page in pages for event in page["events"]]


def test_the_graph_has_every_state_and_transition_of_the_definition() -> None:
    states = DEFINITION["States"]
    assert set(GRAPH.types) == set(states)
    pairs = {(e.source, e.target) for e in GRAPH.edges}
    assert (START, "RunAttempt") in pairs and ("RunAttempt", END) in pairs, "admission routed the first attempt"
    assert {("CloseAttempt", "Route"), ("Route", "Routed"), ("Routed", "RunAttempt"), ("Routed", "JobFailed")} <= pairs
    caught = {(e.source, e.target) for e in GRAPH.edges if e.caught}
    assert ("RunAttempt", "AttemptFailed") in caught and ("RunAttempt", "AttemptSpilled") in caught


def test_a_job_that_failed_over_from_the_office_to_the_cloud_lights_its_path(cloud: Cloud) -> None:
    job = submitted_job(cloud)
    admit(job)
    sfn = cloud.client("stepfunctions")
    for gpu in ("local-0", "local-1"):
        task = next_task(cloud, "LocalQueue")
        ran_on(cloud, job.job_id, gpu)
        sfn.send_task_failure(taskToken=task["task_token"], error="Spillway.GpuUnreachable", cause="tunnel down")
    task = next_task(cloud, "CloudQueue")
    running = path_of(history(cloud, job.job_id), GRAPH.types)
    assert running.status == "RUNNING" and running.lit["RunAttempt"] is Lit.RUNNING, "the current state"
    assert running.attempts["RunAttempt"][-1] == "cloud …"
    succeed(cloud, task, "cloud-0", "results/y.png")
    assert cloud.wait_for_execution(job.job_id)["status"] == "SUCCEEDED"

    path = path_of(history(cloud, job.job_id), GRAPH.types)
    assert path.status == "SUCCEEDED"
    assert path.attempts["RunAttempt"] == ["local ✗ GpuUnreachable", "local ✗ GpuUnreachable", "cloud ✓"], \
        "each attempt's pool and end, on the one state they all ran in"
    assert path.lit["RunAttempt"] is Lit.SUCCEEDED and path.visits["RunAttempt"] == 3
    assert path.failures["RunAttempt"] == 2
    assert path.lit["Route"] is Lit.SUCCEEDED and path.visits["Route"] == 2, "the first route was admission's"
    assert path.visits["Routed"] == 2
    assert "JobFailed" not in path.lit and "AttemptSpilled" not in path.lit
    assert {(START, "RunAttempt"), ("RunAttempt", "AttemptFailed"), ("AttemptFailed", "CloseAttempt"),
            ("CloseAttempt", "Route"), ("Route", "Routed"), ("Routed", "RunAttempt"), ("RunAttempt", END)} <= path.taken
    assert ("RunAttempt", "AttemptSpilled") not in path.taken
    assert "Route" not in path.attempts, "a Task that sends to no pool has no attempts to list"

    svg = render(GRAPH, path).decode()
    assert '<g id="state_RunAttempt" class="node state succeeded">' in svg
    assert "local ✗ GpuUnreachable" in svg and "cloud ✓" in svg
    assert '<g id="state_AttemptFailed" class="node state succeeded">' in svg
    assert '<g id="state_JobFailed" class="node state unvisited">' in svg
    assert render(GRAPH, path, fmt="png").startswith(b"\x89PNG")


def entered(name: str) -> dict:
    """Events in GetExecutionHistory's shape, for synthetic histories."""
    return {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": name}}


def exited(name: str) -> dict:
    return {"type": "TaskStateExited", "stateExitedEventDetails": {"name": name}}


def scheduled(pool: str) -> dict:
    return {"type": "TaskScheduled", "taskScheduledEventDetails": {
        "parameters": json.dumps({"QueueUrl": f"https://sqs/{pool}", "MessageBody": {"pool": pool}})}}


def test_a_bad_input_ends_in_red() -> None:
    """A synthetic history: a caught failure leaves its state with no Exited event."""
    events = [{"type": "ExecutionStarted"}, entered("RunAttempt"), scheduled("local"),
              {"type": "TaskFailed", "taskFailedEventDetails": {"error": "Spillway.BadInput"}},
              entered("AttemptFailed"), exited("AttemptFailed"), entered("CloseAttempt"), exited("CloseAttempt"),
              entered("Route"), exited("Route"), entered("Routed"), exited("Routed"), entered("JobFailed"),
              {"type": "ExecutionFailed"}]
    path = path_of(events, GRAPH.types)
    assert (path.lit["RunAttempt"], path.lit["AttemptFailed"], path.lit["JobFailed"]) == (
        Lit.FAILED, Lit.SUCCEEDED, Lit.FAILED)
    assert path.attempts["RunAttempt"] == ["local ✗ BadInput"]
    assert path.status == "FAILED" and ("JobFailed", END) in path.taken
    assert '<g id="state_RunAttempt" class="node state failed">' in render(GRAPH, path).decode()


def test_a_spill_reads_as_a_spill_not_a_failure() -> None:
    """The errors the definition's Catch sends to AttemptSpilled are those `ErrorType.spills` names, and
    the graph's attempt list marks them ↷: the attempt never ran and is not counted."""
    spilled_by_definition = {error for catch in DEFINITION["States"]["RunAttempt"]["Catch"]
                             if catch["Next"] == "AttemptSpilled" for error in catch["ErrorEquals"]}
    assert spilled_by_definition == {kind.state_machine_error for kind in ErrorType if kind.spills}

    events = [{"type": "ExecutionStarted"}, entered("RunAttempt"), scheduled("local"),
              {"type": "TaskFailed", "taskFailedEventDetails": {"error": "Spillway.WaitExpired"}},
              entered("AttemptSpilled"), entered("CloseAttempt"), entered("Route"), entered("Routed"),
              entered("RunAttempt"), scheduled("cloud"),
              {"type": "TaskFailed", "taskFailedEventDetails": {"error": "Spillway.GpuUnreachable"}},
              entered("AttemptFailed"), entered("CloseAttempt"), entered("Route"), entered("Routed"),
              entered("RunAttempt"), scheduled("cloud"), {"type": "TaskSucceeded"},
              exited("RunAttempt"), {"type": "ExecutionSucceeded"}]
    assert path_of(events, GRAPH.types).attempts["RunAttempt"] == [
        "local ↷ WaitExpired", "cloud ✗ GpuUnreachable", "cloud ✓"]
