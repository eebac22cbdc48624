"""Issue #10's attacks on the agents' side of the trust boundary, over real HTTP on the embedded stack.

The attacker holds the strongest credential someone outside the control plane can: an enrolled agent's
own (a rogue or stolen agent; here `rogue-0`, enrolled but never run), knows every public id (the job,
the GPU its attempt runs on) and, to show that it does not help, even the task's id read from the tables.
Each test is one defect of the issue: a forged result or failure, a callback's answer naming the GPU,
a GPU registered (or moved) by a heartbeat, an agent taking a task from someone else, an SSRF URL in a
task, a replayed push, readiness for anyone.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from spillway import credentials, signing
from spillway.rooms import render_room
from spillway_embedded.client import upload
from spillway_embedded.launcher import LaunchedStack, StackInfo

import helpers

pytestmark = pytest.mark.embedded

TIMEOUT = httpx.Timeout(10.0, connect=2.0)
ROGUE = "rogue-0"


class Recorder:
    """An HTTP server that records every request it gets: where a forged task's URLs point, and the rogue's URL."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                recorder.requests.append((self.command, self.path))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PUT = do_POST = _record  # noqa: N815 (http.server's naming)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with LaunchedStack(tmp_path_factory.mktemp("trust"), ["--api-port", "0"]) as info:
        yield info


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.stop()


@pytest.fixture(scope="module")
def rogue(api: httpx.Client, recorder: Recorder) -> str:
    """The attacker's credential: rogue-0's own secret (enrolled by an operator, pointed at the recorder)."""
    enrolled = api.put(f"/v1/fleet/{ROGUE}", json={"pool": "local", "url": recorder.url, "vram_mb": 80_000})
    assert enrolled.status_code == 200, enrolled.text
    return enrolled.json()["secret"]


@pytest.fixture(scope="module")
def control_key(stack: StackInfo) -> bytes:
    """The control plane's own key, for tests that stand in for it (signing pushes as the pollers do)."""
    secret = stack.boto3_client("secretsmanager").get_secret_value(SecretId=stack.resources["ControlKeySecret"])
    return secret["SecretString"].encode()


def as_agent(secret: str, gpu_id: str = ROGUE) -> dict[str, str]:
    return {"Authorization": credentials.bearer(gpu_id, secret)}


def gpu_url(stack: StackInfo, gpu_id: str) -> str:
    """Where the control plane reaches the GPU's agent: through its link (the office tunnel)."""
    return next(g["advertised_url"] for g in stack.gpus if g["gpu_id"] == gpu_id)


def fleet_item(stack: StackInfo, gpu_id: str) -> dict[str, Any] | None:
    table = stack.boto3_client("dynamodb")
    return table.get_item(TableName=stack.resources["FleetTable"], Key={"gpu_id": {"S": gpu_id}}).get("Item")


def submit(api: httpx.Client) -> str:
    response = api.post("/v1/jobs", json={"service": "remove_furniture", "input_key": upload(api, render_room(4))})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def running_attempt(api: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        attempts = api.get(f"/v1/jobs/{job_id}").raise_for_status().json()["attempts"]
        if attempts and attempts[-1].get("running_at") and not attempts[-1].get("ended_at"):
            return attempts[-1]
        time.sleep(0.1)
    raise AssertionError(f"{job_id} never ran")


def task_id_of(stack: StackInfo, job_id: str) -> str:
    """The running attempt's task id, read from the jobs table: more than an attacker can know."""
    item = stack.boto3_client("dynamodb").get_item(TableName=stack.resources["JobsTable"],
                                                   Key={"job_id": {"S": job_id}})["Item"]
    return item["attempts"]["L"][-1]["M"]["task_id"]["S"]


def signed_push(url: str, task: dict[str, Any], secret: str, headers: dict[str, str] | None = None
                ) -> tuple[httpx.Response, dict[str, str], bytes]:
    body = json.dumps(task).encode()
    headers = headers or signing.sign([signing.secret_bytes(secret)], f"msg_{uuid.uuid4().hex}", body, time.time())
    response = httpx.post(f"{url}/v1/tasks", content=body, headers={"Content-Type": "application/json", **headers},
                          timeout=TIMEOUT)
    return response, headers, body


def a_task(input_url: str, output_url: str) -> dict[str, Any]:
    name = uuid.uuid4().hex
    return {"task_id": f"t-{name}", "job_id": f"j-{name}", "service": "remove_furniture", "input_url": input_url,
            "output_url": output_url, "heartbeat_interval_s": 30, "task_secret": "s" * 43}


def test_a_forged_result_or_failure_changes_nothing_and_its_answer_names_no_gpu(
        stack: StackInfo, api: httpx.Client, rogue: str) -> None:
    gpus = [g["gpu_id"] for g in stack.gpus]
    stack.agents("slow", *gpus, seconds=4)  # long enough to forge while the real task runs
    try:
        job_id = submit(api)
        attempt = running_attempt(api, job_id)
        gpu, task_id = attempt["gpu_id"], task_id_of(stack, job_id)
        succeeded = {"outcome": "succeeded", "duration_ms": 5}
        failed = {"outcome": "failed", "error_type": "BadInput", "message": "forged", "duration_ms": 5}
        guessed = {credentials.TASK_SECRET_HEADER: "g" * 43}
        for body in (succeeded, failed):
            # As the GPU the task runs on: the credential is not that GPU's.
            forged = api.post(f"/v1/agent/tasks/{task_id}/result", json={"gpu_id": gpu, **body},
                              headers=as_agent(rogue) | guessed)
            assert forged.status_code == 403, forged.text
            # As itself, naming the task: the same answer as for a task that does not exist, naming no GPU.
            forged = api.post(f"/v1/agent/tasks/{task_id}/result", json={"gpu_id": ROGUE, **body},
                              headers=as_agent(rogue) | guessed)
            unknown = api.post(f"/v1/agent/tasks/t-{'0' * 32}/result", json={"gpu_id": ROGUE, **body},
                               headers=as_agent(rogue) | guessed)
            assert forged.status_code == unknown.status_code == 404, forged.text
            assert gpu not in forged.text and forged.json()["message"].replace(task_id, "?") == \
                unknown.json()["message"].replace(f"t-{'0' * 32}", "?"), "it reveals nothing"
        beat = api.post(f"/v1/agent/tasks/{task_id}/heartbeat", json={"gpu_id": ROGUE},
                        headers=as_agent(rogue) | guessed)
        assert beat.status_code == 404 and gpu not in beat.text
        view = helpers.answered(api, [job_id], timeout=90.0)[job_id]
    finally:
        stack.agents("heal", *gpus)
    assert view["status"] == "SUCCEEDED" and len(view["attempts"]) == 1, view
    assert view["attempts"][0]["gpu_id"] == gpu, "its own GPU's report ended it"
    assert httpx.get(view["result_url"], timeout=TIMEOUT).status_code == 200, "with a result that exists"


def test_a_heartbeat_cannot_register_a_gpu_move_one_or_speak_for_another(
        stack: StackInfo, api: httpx.Client, rogue: str, recorder: Recorder) -> None:
    local_0 = fleet_item(stack, "local-0")
    claims = {"vram_total_mb": 80_000, "slots": 8, "services": ["remove_furniture", "upscale_2x"]}
    where = {"pool": "local", "url": recorder.url}
    for gpu_id, body, status in [
        ("evil-1", claims | where, None),  # as before issue #10: a GPU of its own, where it likes
        ("evil-1", claims, 403),  # a GPU the credential is not
        ("local-0", claims, 403),  # another, real GPU
        (ROGUE, claims | where, 422),  # its own, moved: a beat says nothing of pool or URL
    ]:
        answer = api.post("/v1/agent/heartbeat", json={"gpu_id": gpu_id, **body}, headers=as_agent(rogue))
        assert answer.status_code == status if status else answer.status_code in (401, 403, 422), answer.text
    assert fleet_item(stack, "evil-1") is None, "nothing written"
    assert "last_heartbeat" not in fleet_item(stack, ROGUE), "nothing refreshed either"
    assert fleet_item(stack, "local-0")["url"] == local_0["url"] and fleet_item(stack, "local-0")["pool"] == \
        local_0["pool"]
    assert {g["gpu_id"] for g in api.get("/v1/fleet").json()["gpus"]} == {g["gpu_id"] for g in stack.gpus}
    jobs = [submit(api) for _ in range(3)]
    views = helpers.answered(api, jobs, timeout=90.0)
    assert {v["status"] for v in views.values()} == {"SUCCEEDED"}
    assert recorder.requests == [], "no push ever went to the attacker's URL"


def test_an_agent_takes_no_task_from_a_key_holder(stack: StackInfo, rogue: str, recorder: Recorder) -> None:
    url = gpu_url(stack, "local-0")
    task = a_task(f"{recorder.url}/input.png", f"{recorder.url}/output.png")
    by_bearer = httpx.post(f"{url}/v1/tasks", json=task, headers=as_agent(rogue), timeout=TIMEOUT)
    assert by_bearer.status_code == 401, by_bearer.text
    by_own_secret = signed_push(url, task, rogue)[0]  # signed, but with the rogue's secret, not local-0's
    assert by_own_secret.status_code == 401, by_own_secret.text
    assert recorder.requests == [], "nothing fetched or stored on a key holder's say"


def test_a_signed_task_with_urls_outside_the_bucket_is_refused(
        stack: StackInfo, control_key: bytes, recorder: Recorder) -> None:
    secret = credentials.agent_secret(control_key, "local-0", 1)
    for task in (a_task(f"{recorder.url}/input.png", f"{recorder.url}/output.png"),
                 a_task("http://169.254.169.254/latest/meta-data/iam/", f"{recorder.url}/output.png")):
        response = signed_push(gpu_url(stack, "local-0"), task, secret)[0]
        assert response.status_code == 422 and "storage" in response.json()["message"], response.text
    assert recorder.requests == [], "SSRF: the agent fetched and stored nothing outside its bucket"


def test_a_replayed_push_is_refused(stack: StackInfo, control_key: bytes) -> None:
    s3 = stack.boto3_client("s3")
    bucket = stack.resources["ImagesBucket"]
    task = a_task(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "inputs/none.png"}),
                  s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "results/none.png"}))
    url, secret = gpu_url(stack, "local-1"), credentials.agent_secret(control_key, "local-1", 1)
    first, headers, _ = signed_push(url, task, secret)
    assert first.status_code == 202, first.text
    replayed, _, _ = signed_push(url, task, secret, headers=headers)
    assert replayed.status_code == 401 and "replay" in replayed.json()["message"], replayed.text


def test_readiness_is_for_the_control_plane_and_the_agent_itself(stack: StackInfo, control_key: bytes,
                                                                 rogue: str) -> None:
    url = gpu_url(stack, "local-2")
    assert httpx.get(f"{url}/readyz", timeout=TIMEOUT).status_code == 401
    assert httpx.get(f"{url}/readyz", headers=as_agent(rogue, "local-2"), timeout=TIMEOUT).status_code == 401
    probe = signing.sign([signing.secret_bytes(credentials.agent_secret(control_key, "local-2", 1))],
                         f"msg_{uuid.uuid4().hex}", b"", time.time())
    assert httpx.get(f"{url}/readyz", headers=probe, timeout=TIMEOUT).status_code == 200
