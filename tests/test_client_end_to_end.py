"""The client surface end to end on the embedded stack (real HTTP, real agent processes): cancel frees a GPU
within seconds and the job ends CANCELLED; every job end (SUCCEEDED, FAILED, CANCELLED) is told once to its
webhook — a real local HTTP server — signed Standard-Webhooks style, and a receiver that fails gets the retry;
`spillway submit`, `wait` and `status` drive a job through the Python client.

Each task takes at least MODEL_SECONDS on its GPU, so a cancel lands while the model runs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from spillway import cli
from spillway.client import ApiError, Client
from spillway.rooms import render_room
from spillway_embedded.launcher import LaunchedStack, StackInfo

pytestmark = [pytest.mark.embedded, pytest.mark.timed]

Drained = Callable[[], None]  # returns once the webhooks queue holds nothing: no event is on its way

MODEL_SECONDS = 6.0
FREED_WITHIN_S = 5.0


class Receiver:
    """A webhook receiver: records every request; a path listed in `failing` answers 500 that many times first."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.failing: dict[str, int] = {}
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.requests.append((self.path, dict(self.headers.items()), body))
                    fail = receiver.failing.get(self.path, 0)
                    receiver.failing[self.path] = max(0, fail - 1)
                    receiver._lock.notify_all()
                self.send_response(500 if fail else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def at(self, path: str, count: int, timeout: float = 60.0) -> list[tuple[dict[str, str], bytes]]:
        """The requests to `path` once there are `count` of them (bounded)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._of(path)) >= count, timeout):
                raise AssertionError(f"{path}: {len(self._of(path))} requests, not {count}, after {timeout} s")
            return self._of(path)

    def _of(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(headers, body) for p, headers, body in self.requests if p == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, StackInfo]]:
    state_dir = tmp_path_factory.mktemp("client")
    with LaunchedStack(state_dir, ["--api-port", "0", "--model-seconds", str(MODEL_SECONDS)]) as info:
        yield state_dir, info


@pytest.fixture(scope="module")
def client(launched: tuple[Path, StackInfo]) -> Iterator[Client]:
    with Client.for_dev(launched[0]) as client:
        yield client


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def verifier(launched: tuple[Path, StackInfo]) -> Webhook:
    """A receiver's own Standard Webhooks library, with the deployment's signing secret."""
    info = launched[1]
    secret = info.boto3_client("secretsmanager").get_secret_value(
        SecretId=info.resources["WebhookSigningSecret"])["SecretString"]
    return Webhook("whsec_" + secret)


def room() -> bytes:
    return render_room(3, 320, 240)


def the_one_event(receiver: Receiver, verifier: Webhook, path: str, queue_drained: Drained) -> dict:
    """The path's one event, verified; once the webhooks queue is empty, so no other is on its way."""
    (headers, body), = receiver.at(path, 1)
    queue_drained()
    assert len(receiver.at(path, 1)) == 1, "exactly one event per job end"
    return verifier.verify(body, headers) | {"webhook-id": headers["webhook-id"]}


@pytest.fixture(scope="module")
def queue_drained(launched: tuple[Path, StackInfo]) -> Drained:
    info = launched[1]
    sqs = info.boto3_client("sqs")

    def drained(timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            attributes = sqs.get_queue_attributes(
                QueueUrl=info.resources["WebhookQueue"],
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                                "ApproximateNumberOfMessagesDelayed"])["Attributes"]
            if not any(int(v) for v in attributes.values()):
                return
            assert time.monotonic() < deadline, f"the webhooks queue still holds {attributes}"
            time.sleep(0.2)

    return drained


def running_attempt(client: Client, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.status(job_id)
        if job.attempts and job.attempts[-1].running_at:
            return job.attempts[-1].model_dump()
        assert time.monotonic() < deadline, f"{job_id} never ran: {job.status}"
        time.sleep(0.1)


def gpu(client: Client, gpu_id: str) -> dict:
    return next(g for g in client._call("GET", "/v1/fleet")["gpus"] if g["gpu_id"] == gpu_id)


def test_cancel_of_a_running_job_frees_its_gpu_within_seconds_and_tells_its_webhook_once(
        launched: tuple[Path, StackInfo], client: Client, receiver: Receiver, verifier: Webhook,
        queue_drained: Drained) -> None:
    job_id = client.submit("upscale_2x", room(), webhook_url=f"{receiver.url}/cancelled").job_id
    attempt = running_attempt(client, job_id)
    before = gpu(client, attempt["gpu_id"])
    assert before["running"] and before["vram_used_mb"] > 0, "the GPU holds the task"

    asked = time.monotonic()
    cancelled = client.cancel(job_id, reason="the listing was withdrawn")
    assert cancelled.status.value == "CANCELLED"
    assert "the listing was withdrawn" in (cancelled.error or "")
    while (now := gpu(client, attempt["gpu_id"]))["running"] or now["vram_used_mb"]:
        assert time.monotonic() - asked < FREED_WITHIN_S, f"not freed within {FREED_WITHIN_S} s: {now}"
        time.sleep(0.1)
    freed_in = time.monotonic() - asked
    print(f"cancel -> GPU {attempt['gpu_id']} free in {freed_in:.2f} s")

    again = client.cancel(job_id)  # idempotent: the same answer, nothing more
    assert again.status.value == "CANCELLED" and again.error == cancelled.error

    event = the_one_event(receiver, verifier, "/cancelled", queue_drained)
    assert event["type"] == "job.cancelled" and event["data"]["job_id"] == job_id
    assert event["data"]["status"] == "CANCELLED" and "withdrawn" in event["data"]["error"]

    # The agent was told: it dropped the run, and when its model ended it neither uploaded nor reported it.
    agent_log_line(launched[0], attempt["gpu_id"], job_id, "dropping its result", timeout=MODEL_SECONDS + 10)
    assert "cancelled by the control plane" in (launched[0] / "agents" / f"{attempt['gpu_id']}.log").read_text()
    assert client.status(job_id).status.value == "CANCELLED"


def agent_log_line(state_dir: Path, gpu_id: str, job_id: str, words: str, timeout: float) -> str:
    """The first line of the GPU's agent log about the job that says `words` (bounded wait)."""
    log, deadline = state_dir / "agents" / f"{gpu_id}.log", time.monotonic() + timeout
    while not (found := [line for line in log.read_text().splitlines() if f"job_id={job_id} " in line
                         and words in line]):
        assert time.monotonic() < deadline, f"{gpu_id} never logged {words!r} for {job_id}"
        time.sleep(0.2)
    return found[0]


def test_an_agent_the_cancel_cannot_reach_frees_its_gpu_all_the_same_and_its_late_result_changes_nothing(
        launched: tuple[Path, StackInfo], client: Client, receiver: Receiver, verifier: Webhook,
        queue_drained: Drained) -> None:
    state_dir, info = launched
    job_id = client.submit("upscale_2x", room(), webhook_url=f"{receiver.url}/unreachable").job_id
    attempt = running_attempt(client, job_id)
    info.cut_tunnels(attempt["gpu_id"])  # the control plane can no longer reach it; its reports still get out
    try:
        asked = time.monotonic()
        assert client.cancel(job_id).status.value == "CANCELLED"
        while (now := gpu(client, attempt["gpu_id"]))["running"] or now["vram_used_mb"]:
            assert time.monotonic() - asked < FREED_WITHIN_S, f"not freed within {FREED_WITHIN_S} s: {now}"
            time.sleep(0.1)
        # Its model ends and it reports a success the control plane no longer wants.
        agent_log_line(state_dir, attempt["gpu_id"], job_id, " succeeded", timeout=MODEL_SECONDS + 20)
    finally:
        info.restore_tunnels(attempt["gpu_id"])
    job = client.status(job_id)
    assert job.status.value == "CANCELLED" and job.result_url is None
    assert the_one_event(receiver, verifier, "/unreachable", queue_drained)["type"] == "job.cancelled"


def test_cancel_of_a_finished_job_is_a_409_with_its_status(client: Client) -> None:
    job_id = client.submit("upscale_2x", room()).job_id
    assert client.wait(job_id, timeout=90, poll_s=0.3).status.value == "SUCCEEDED"
    with pytest.raises(ApiError) as refused:
        client.cancel(job_id)
    assert refused.value.status == 409 and "SUCCEEDED" in refused.value.message


def test_each_end_is_told_once_signed_and_a_failing_receiver_gets_the_retry(
        launched: tuple[Path, StackInfo], client: Client, receiver: Receiver, verifier: Webhook,
        queue_drained: Drained) -> None:
    receiver.failing["/flaky"] = 1
    ok = client.submit("upscale_2x", room(), webhook_url=f"{receiver.url}/ok").job_id
    flaky = client.submit("upscale_2x", room(), webhook_url=f"{receiver.url}/flaky").job_id
    assert client.wait(ok, timeout=90, poll_s=0.3).status.value == "SUCCEEDED"
    assert client.wait(flaky, timeout=90, poll_s=0.3).status.value == "SUCCEEDED"

    event = the_one_event(receiver, verifier, "/ok", queue_drained)
    assert event["type"] == "job.succeeded" and event["data"]["job_id"] == ok

    (first, _), (retry, body) = receiver.at("/flaky", 2)
    queue_drained()
    assert len(receiver.at("/flaky", 2)) == 2, "one failure, one retry, nothing after it was taken"
    assert first["webhook-id"] == retry["webhook-id"], "a retry is the same event: receivers dedupe on its id"
    assert verifier.verify(body, retry)["data"]["job_id"] == flaky

    # A job that fails (every GPU's model fails: three attempts) is told too.
    info = launched[1]
    gpu_ids = [g["gpu_id"] for g in info.gpus]
    info.agents("fail-model", *gpu_ids)
    try:
        failed = client.submit("upscale_2x", room(), webhook_url=f"{receiver.url}/failed").job_id
        assert client.wait(failed, timeout=120, poll_s=0.3).status.value == "FAILED"
    finally:
        info.agents("heal", *gpu_ids)
    event = the_one_event(receiver, verifier, "/failed", queue_drained)
    assert event["type"] == "job.failed" and event["data"]["job_id"] == failed and event["data"]["error"]


def test_the_cli_submits_waits_shows_and_lists_a_job(launched: tuple[Path, StackInfo], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    state = ["--state-dir", str(launched[0])]
    image = tmp_path / "room.png"
    image.write_bytes(room())
    assert cli.main(["submit", "remove_furniture", str(image), "--priority", "high", *state]) == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("j-")
    assert cli.main(["wait", job_id, "--timeout", "90", "--poll", "0.3", *state]) == 0
    waited = capsys.readouterr().out
    assert waited.startswith(f"{job_id}  SUCCEEDED  remove_furniture  high") and "result: http" in waited
    assert cli.main(["status", job_id, "--json", *state]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "SUCCEEDED" and shown["result_url"]
    assert cli.main(["cancel", job_id, *state]) == 1
    assert "409" in capsys.readouterr().err
    assert cli.main(["jobs", "--status", "SUCCEEDED", "--limit", "100", *state]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"{job_id}  SUCCEEDED") for line in listed), listed
    assert cli.main(["jobs", "--limit", "1", "--json", *state]) == 0
    page = json.loads(capsys.readouterr().out)
    assert len(page["jobs"]) == 1 and page["next_cursor"], "one job a page, and a cursor to the next"
