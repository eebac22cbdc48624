"""A fleet whose agent fronts a model server, end to end on the embedded stack (real processes): the fleet file's
`model_server = true` starts the stand-in model server beside the GPU's agent (`--model-url`), jobs run through
it, and the model chaos (fail-model, heal) happens in the model server, reaching the agent through the contract.
A GPU whose agent fronts a model server the stack did not start (`model_url`) is not the stack's to upset, and one
whose model server does not answer gets no work."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from spillway_embedded.launcher import LaunchedStack, StackInfo

from helpers import answered, submit_room, wait_for_health

pytestmark = pytest.mark.embedded

TIMEOUT = httpx.Timeout(10.0, connect=2.0)
# local-0 (the best fit while free) fronts the stand-in; cloud-0 fronts a server of its own that is not there (its
# agent runs, answers, but is never ready).
FLEET = """
[pools.local]
gpus = [{ id = "local-0", vram_mb = 6000, model_server = true }, { id = "local-1", vram_mb = 8000 }]

[pools.cloud]
gpus = [{ id = "cloud-0", vram_mb = 24000, model_url = "http://127.0.0.1:9" }]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    state = tmp_path_factory.mktemp("model-server-fleet")
    (state / "fleet.toml").write_text(FLEET)
    with LaunchedStack(state / "stack", ["--api-port", "0", "--fleet", str(state / "fleet.toml")]) as info:
        yield info


def run_one(api: httpx.Client) -> dict:
    job = submit_room(api)
    return answered(api, [job], timeout=120)[job]


def test_the_stand_in_model_server_runs_beside_its_agent_and_takes_the_gpus_model_faults(
    stack: StackInfo, api: httpx.Client
) -> None:
    gpus = {g["gpu_id"]: g for g in stack.gpus}
    model_url = gpus["local-0"]["model_url"]
    assert model_url and model_url.startswith("http://127.0.0.1:"), gpus["local-0"]
    assert httpx.get(f"{model_url}/v2/health/ready", timeout=TIMEOUT).status_code == 200, "the stand-in serves v2"
    assert gpus["local-1"]["model_url"] is None, "the built-in model stays the default"

    view = run_one(api)
    assert [(a["gpu_id"], a["outcome"]) for a in view["attempts"]] == [("local-0", "succeeded")], view["attempts"]

    stack.agents("fail-model", "local-0")
    try:
        view = run_one(api)
    finally:
        stack.agents("heal", "local-0")
    first, last = view["attempts"][0], view["attempts"][-1]
    assert (first["gpu_id"], first["error"]) == ("local-0", "Spillway.ModelError"), first
    assert "answered 500" in first["reason"] and "fails every model run" in first["reason"], \
        "the model server failed the run, and the agent said so through the contract"
    assert (view["status"], last["gpu_id"]) == ("SUCCEEDED", "local-1"), view["attempts"]


def test_a_model_server_the_stack_did_not_start_is_not_its_to_upset(stack: StackInfo) -> None:
    answer = httpx.post(f"{stack.chaos_url}/agents/fail-model", json={"gpu_ids": ["cloud-0"]}, timeout=TIMEOUT)
    assert answer.status_code == 409 and "did not start" in answer.json()["message"], answer.text


def test_a_gpu_whose_model_server_is_down_gets_no_work(stack: StackInfo, api: httpx.Client) -> None:
    """Its agent beats and answers probes, but says it is not ready: out of service, not merely unlucky."""
    gpu = wait_for_health(api, "cloud-0", {"suspect", "down"}, timeout=30)
    reasons = [e["reason"] for e in gpu["events"]]
    assert any(r.startswith("its agent is not ready: the model server at http://127.0.0.1:9 did not answer")
               for r in reasons), reasons
    assert gpu["running"] == [] and gpu["model_errors"] == 0, "no task was ever pushed there"
