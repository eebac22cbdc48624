"""The agent against a stand-in control plane over real HTTP: tasks, heartbeats, results, drain.

The stand-in plays both the Spillway API (agent routes) and S3's presigned URLs, and records
what the agent sent. Waits are bounded waits on events, never sleeps that hope.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from spillway import credentials, signing
from spillway.agent import model
from spillway.agent.server import MAX_REQUEST_BYTES, Agent, AgentConfig
from spillway.rooms import furniture_mask, render_room
from spillway_embedded.launcher import wait_for_ready_file

AGENT_SECRET = credentials.agent_secret(b"the control key of the agent tests", "local-7", 1)
OTHER_SECRET = credentials.agent_secret(b"someone else's key", "local-7", 1)
TASK_SECRET = "s" * 43
WAIT = 20.0  # the bound on every wait: generous for a loaded machine, never reached when it works


@dataclass
class ControlPlane:
    """Records every call; `answers` decides the status (and body) of the next call to a path suffix."""

    url: str = ""
    calls: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    objects: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # key -> (content type, bytes)
    answers: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def posted(self, suffix: str) -> list[dict[str, Any]]:
        with self.changed:
            return [json.loads(body) for method, path, _, body in self.calls
                    if method == "POST" and path.endswith(suffix)]

    def wait_for(self, predicate: Callable[[], Any], what: str) -> Any:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout=WAIT):
                raise AssertionError(f"timed out waiting for {what}; calls: {[c[:2] for c in self.calls]}")
            return predicate()

    def results(self, task_id: str) -> list[dict[str, Any]]:
        return self.posted(f"/tasks/{task_id}/result")


def _handler(plane: ControlPlane) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with plane.changed:
                plane.calls.append((self.command, self.path, dict(self.headers), body))
                planned = next((k for k in plane.answers if self.path.endswith(k) and plane.answers[k]), None)
                status, answer = plane.answers[planned].pop(0) if planned else (200, {"current": True})
                if self.command == "PUT" and status == 200:
                    plane.objects[self.path] = (self.headers.get("Content-Type", ""), body)
                data = json.dumps(answer).encode()
                if self.command == "GET":  # a presigned GET of an input
                    status, data = (200, plane.objects[self.path][1]) if self.path in plane.objects else (404, b"")
                plane.changed.notify_all()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve  # noqa: N815 (http.server's naming)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def plane() -> Iterator[ControlPlane]:
    plane = ControlPlane()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(plane))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    plane.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield plane
    server.shutdown()
    server.server_close()


class GatedModel:
    """The real model, held at a gate when asked, and counted."""

    def __init__(self, gated: bool = False):
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.runs = 0
        if not gated:
            self.gate.set()

    def __call__(self, service: str, image: bytes) -> bytes:
        self.runs += 1
        self.entered.set()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        return model.run(service, image)


@pytest.fixture
def start_agent(plane: ControlPlane) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(run_model: Callable[[str, bytes], bytes] = model.run,
              model_not_ready: Callable[[], str | None] = lambda: None, **config: Any) -> Agent:
        settings = {"gpu_id": "local-7", "vram_mb": 8000, "control_url": plane.url, "secret": AGENT_SECRET,
                    "storage_url": plane.url, "listen": ("127.0.0.1", 0), "heartbeat_interval_s": 60.0,
                    "drain_timeout_s": 5.0} | config
        agent = Agent(AgentConfig(**settings), run_model=run_model, wait=lambda seconds: None,
                      model_not_ready=model_not_ready)
        agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.drain_and_stop()


def task(plane: ControlPlane, image: bytes | None, service: str = "remove_furniture") -> dict[str, Any]:
    name = uuid.uuid4().hex
    if image is not None:
        plane.objects[f"/in/{name}"] = ("image/png", image)
    return {"task_id": f"t-{name}", "job_id": f"j-{name}", "service": service,
            "input_url": f"{plane.url}/in/{name}", "output_url": f"{plane.url}/out/{name}",
            "heartbeat_interval_s": 30, "task_secret": TASK_SECRET}


def signed(body: bytes, key: str | None = AGENT_SECRET, at: float | None = None) -> dict[str, str]:
    """Standard Webhooks headers for `body`, as the control plane signs a push (none without a key)."""
    if key is None:
        return {}
    return signing.sign([signing.secret_bytes(key)], f"msg_{uuid.uuid4().hex}", body, time.time() if at is None else at)


def push(agent: Agent | str, body: dict[str, Any] | str, key: str | None = AGENT_SECRET,
         headers: dict[str, str] | None = None) -> httpx.Response:
    """POST a task to an agent (in this process, or at a URL), signed with `key` (or with the `headers` given)."""
    content = (body if isinstance(body, str) else json.dumps(body)).encode()
    url = agent if isinstance(agent, str) else agent.listen_url
    return httpx.post(f"{url}/v1/tasks", content=content, headers=signed(content, key) if headers is None else headers,
                      timeout=5)


def ready(url: str, gpu_id: str = "local-7") -> httpx.Response:
    """GET /readyz with the agent's own credential."""
    return httpx.get(f"{url}/readyz", headers={"Authorization": credentials.bearer(gpu_id, AGENT_SECRET)}, timeout=5)


def settled(agent: Agent, task_id: str) -> None:
    run = agent.task(task_id)
    assert run is not None and run.settled.wait(WAIT), f"{task_id} did not settle"


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)


# ---------------------------------------------------------------- tasks


def test_a_task_runs_uploads_its_result_and_reports_success(plane: ControlPlane, start_agent: Any) -> None:
    agent = start_agent()
    before = render_room(5)
    t = task(plane, before)
    response = push(agent, t)
    assert response.status_code == 202 and response.json() == {"task_id": t["task_id"], "state": "accepted"}

    (result,) = plane.wait_for(lambda: plane.results(t["task_id"]), "the result")
    assert result["outcome"] == "succeeded" and result["gpu_id"] == "local-7" and result["error_type"] is None
    content_type, after = plane.objects[f"/out/{t['job_id'][2:]}"]
    assert content_type == "image/png", "the presigned PUT is signed for image/png"
    changed = np.abs(decode(after) - decode(before)).sum(axis=2)
    assert changed[furniture_mask(5)].mean() > 40
    assert not plane.posted(f"/tasks/{t['task_id']}/heartbeat"), \
        "a task shorter than its heartbeat interval is one callback: the push's answer started its liveness clock"
    authorizations = {headers.get("Authorization") for method, path, headers, _ in plane.calls if "/v1/agent/" in path}
    assert authorizations == {credentials.bearer("local-7", AGENT_SECRET)}, "its credential names its GPU"
    task_secrets = {headers.get(credentials.TASK_SECRET_HEADER) for _, path, headers, _ in plane.calls
                    if "/v1/agent/tasks/" in path}
    assert task_secrets == {TASK_SECRET}, "a task's reports present the secret its push carried"
    s3_calls = [headers for _, path, headers, _ in plane.calls if path.startswith(("/in/", "/out/"))]
    assert all("Authorization" not in headers for headers in s3_calls), "the agent's secret never goes to S3"


def test_a_repeated_push_is_answered_and_not_run_twice(plane: ControlPlane, start_agent: Any) -> None:
    counted = GatedModel()
    agent = start_agent(run_model=counted)
    t = task(plane, render_room(1))
    assert push(agent, t).status_code == 202
    settled(agent, t["task_id"])
    again = push(agent, t)
    assert again.status_code == 200 and again.json()["state"] == "succeeded"
    assert counted.runs == 1 and len(plane.results(t["task_id"])) == 1


@pytest.mark.parametrize(
    "image,error_type",
    [(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "BadInput"), (None, "InputUnavailable")],
    ids=["corrupt image", "input missing"],
)
def test_failures_are_reported_by_kind(plane: ControlPlane, start_agent: Any, image: bytes | None,
                                       error_type: str) -> None:
    agent = start_agent()
    t = task(plane, image)
    push(agent, t)
    (result,) = plane.wait_for(lambda: plane.results(t["task_id"]), "the result")
    assert (result["outcome"], result["error_type"]) == ("failed", error_type)
    assert result["message"]


def test_an_upload_refused_by_storage_is_reported(plane: ControlPlane, start_agent: Any) -> None:
    agent = start_agent()
    t = task(plane, render_room(2))
    plane.answers["/out/" + t["job_id"][2:]] = [(403, {"message": "SignatureDoesNotMatch"})]
    push(agent, t)
    (result,) = plane.wait_for(lambda: plane.results(t["task_id"]), "the result")
    assert (result["outcome"], result["error_type"]) == ("failed", "OutputUpload")


def test_a_model_crash_is_a_model_error(plane: ControlPlane, start_agent: Any) -> None:
    def crashing(service: str, image: bytes) -> bytes:
        raise MemoryError("CUDA out of memory")

    agent = start_agent(run_model=crashing)
    t = task(plane, render_room(2))
    push(agent, t)
    (result,) = plane.wait_for(lambda: plane.results(t["task_id"]), "the result")
    assert result["error_type"] == "ModelError" and "CUDA out of memory" in result["message"]


def test_full_slots_refuse_with_503(plane: ControlPlane, start_agent: Any) -> None:
    held = GatedModel(gated=True)
    agent = start_agent(run_model=held, slots=1)
    first, second = task(plane, render_room(1)), task(plane, render_room(2))
    assert push(agent, first).status_code == 202
    refused = push(agent, second)
    assert refused.status_code == 503 and "slots" in refused.json()["message"]
    held.gate.set()
    settled(agent, first["task_id"])
    assert push(agent, second).status_code == 202, "a freed slot takes work again"


@pytest.mark.parametrize(
    "body,reason",
    [("{not json", "invalid task"), ({"task_id": "t-1"}, "job_id"), ("[]", "invalid task")],
)
def test_invalid_tasks_get_422_with_a_reason(plane: ControlPlane, start_agent: Any, body: Any, reason: str) -> None:
    response = push(start_agent(), body)
    assert response.status_code == 422 and reason in response.json()["message"]


@pytest.mark.parametrize("key", [None, OTHER_SECRET], ids=["unsigned", "signed with another secret"])
def test_only_the_control_plane_pushes_tasks(plane: ControlPlane, start_agent: Any, key: str | None) -> None:
    counted = GatedModel()
    agent = start_agent(run_model=counted)
    t = task(plane, render_room(1))
    response = push(agent, t, key=key)
    assert response.status_code == 401 and "signed" in response.json()["message"]
    assert counted.runs == 0 and agent.task(t["task_id"]) is None
    assert not [c for c in plane.calls if c[1].startswith("/in/")], "nothing fetched on its say"


def test_a_replayed_or_stale_push_is_refused(plane: ControlPlane, start_agent: Any) -> None:
    counted = GatedModel()
    agent = start_agent(run_model=counted)
    first = task(plane, render_room(1))
    body = json.dumps(first)
    headers = signed(body.encode())
    assert push(agent, body, headers=headers).status_code == 202
    settled(agent, first["task_id"])
    replayed = push(agent, body, headers=headers)
    assert replayed.status_code == 401 and "replay" in replayed.json()["message"]
    stale = json.dumps(task(plane, render_room(2)))
    old = push(agent, stale, headers=signed(stale.encode(), at=time.time() - signing.TOLERANCE_SECONDS - 60))
    assert old.status_code == 401 and "window" in old.json()["message"]
    assert counted.runs == 1


@pytest.mark.parametrize("which", ["input_url", "output_url"])
@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:1/in/x",
                                 "{plane}/in/../out/x", "{plane}/in/%2e%2e/out/x"])
def test_urls_outside_the_storage_are_refused(plane: ControlPlane, start_agent: Any, which: str, url: str) -> None:
    agent = start_agent(storage_url=plane.url + "/in/")
    t = task(plane, render_room(1)) | {"output_url": f"{plane.url}/in/result"}  # both in the storage ...
    t[which] = url.format(plane=plane.url)  # ... but one
    response = push(agent, t)
    assert response.status_code == 422 and "storage" in response.json()["message"]
    assert agent.task(t["task_id"]) is None
    assert [c[1] for c in plane.calls if c[1] != "/v1/agent/heartbeat"] == [], "nothing fetched, stored or reported"


def test_readiness_is_for_the_control_plane_and_the_agents_own_credential(plane: ControlPlane,
                                                                          start_agent: Any) -> None:
    agent = start_agent()
    plane.wait_for(lambda: plane.posted("/v1/agent/heartbeat"), "a fleet heartbeat")
    assert httpx.get(f"{agent.listen_url}/readyz", timeout=5).status_code == 401
    assert httpx.get(f"{agent.listen_url}/readyz", headers=signed(b"", OTHER_SECRET), timeout=5).status_code == 401
    assert httpx.get(f"{agent.listen_url}/readyz", headers=signed(b""), timeout=5).status_code == 200, "a probe"
    assert ready(agent.listen_url).status_code == 200


def test_unknown_service_and_route(plane: ControlPlane, start_agent: Any) -> None:
    agent = start_agent()
    response = push(agent, task(plane, render_room(1), service="paint_it_pink"))
    assert response.status_code == 422 and "paint_it_pink" in response.json()["message"]
    assert httpx.get(f"{agent.listen_url}/v2/else", timeout=5).status_code == 404


def test_an_attempt_that_moved_on_is_dropped(plane: ControlPlane, start_agent: Any) -> None:
    held = GatedModel(gated=True)
    agent = start_agent(run_model=held)
    t = task(plane, render_room(3)) | {"heartbeat_interval_s": 0.05}
    plane.answers[f"/tasks/{t['task_id']}/heartbeat"] = [(200, {"current": False})]
    push(agent, t)
    plane.wait_for(lambda: plane.posted(f"/tasks/{t['task_id']}/heartbeat"), "the task heartbeat, an interval in")
    held.gate.set()
    settled(agent, t["task_id"])
    assert plane.results(t["task_id"]) == [], "no result for an attempt the control plane let go"
    assert f"/out/{t['job_id'][2:]}" not in plane.objects, "and no upload over a newer attempt's result"


def cancel(agent: Agent, task_id: str, key: str | None = AGENT_SECRET, names: str | None = None) -> httpx.Response:
    """POST a cancel for `task_id`, signed like a push; its body names `names` (default: that task)."""
    content = json.dumps({"task_id": names or task_id}).encode()
    return httpx.post(f"{agent.listen_url}/v1/tasks/{task_id}/cancel", content=content,
                      headers=signed(content, key), timeout=5)


def test_a_cancelled_task_frees_its_slot_at_once_and_is_neither_uploaded_nor_reported(
        plane: ControlPlane, start_agent: Any) -> None:
    held = GatedModel(gated=True)
    agent = start_agent(run_model=held, slots=1)
    t, after = task(plane, render_room(3)), task(plane, render_room(4))
    push(agent, t)
    assert held.entered.wait(WAIT)
    assert cancel(agent, t["task_id"], key=None).status_code == 401, "only the control plane cancels"
    assert cancel(agent, t["task_id"], names=after["task_id"]).status_code == 422, "the signed body names the task"
    assert cancel(agent, "t-" + "0" * 32).status_code == 404
    cancelled = cancel(agent, t["task_id"])
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert push(agent, after).status_code == 202, "its slot is free while its model call finishes"
    assert agent.beat()
    assert plane.posted("/agent/heartbeat")[-1]["running"] == [after["task_id"]], "nor does it report it held"
    held.gate.set()
    settled(agent, t["task_id"])
    settled(agent, after["task_id"])
    assert plane.results(t["task_id"]) == [] and f"/out/{t['job_id'][2:]}" not in plane.objects
    assert [r["outcome"] for r in plane.results(after["task_id"])] == ["succeeded"]


def test_a_result_is_retried_until_the_control_plane_has_it(plane: ControlPlane, start_agent: Any) -> None:
    agent = start_agent()
    t = task(plane, render_room(4))
    plane.answers[f"/tasks/{t['task_id']}/result"] = [(503, {"message": "busy"}), (502, {})]
    push(agent, t)
    results = plane.wait_for(lambda: len(plane.results(t["task_id"])) == 3 and plane.results(t["task_id"]), "3 tries")
    assert [r["outcome"] for r in results] == ["succeeded"] * 3


def test_a_refused_result_is_not_retried(plane: ControlPlane, start_agent: Any) -> None:
    agent = start_agent()
    t = task(plane, render_room(4))
    plane.answers[f"/tasks/{t['task_id']}/result"] = [(404, {"message": "unknown task"})]
    push(agent, t)
    settled(agent, t["task_id"])
    assert len(plane.results(t["task_id"])) == 1


# ---------------------------------------------------------------- the HTTP connection


def connect(agent: Agent) -> http.client.HTTPConnection:
    host, port = agent.listen_url.removeprefix("http://").rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=5)


def exchange(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
             key: str | None = AGENT_SECRET) -> tuple[int, bytes, http.client.HTTPResponse]:
    headers = signed(body or b"", key)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read(), response


@pytest.mark.parametrize("method,path,key,status", [
    ("POST", "/v1/tasks", OTHER_SECRET, 401),
    ("POST", "/v1/tasks", None, 401),
    ("POST", "/v2/else", AGENT_SECRET, 404),
    ("GET", "/v2/else", AGENT_SECRET, 404),  # a GET with a body, as odd as it is
], ids=["wrong signature", "unsigned", "unknown POST route", "unknown GET route"])
def test_an_early_answer_leaves_the_keep_alive_connection_usable(
        plane: ControlPlane, start_agent: Any, method: str, path: str, key: str | None, status: int) -> None:
    counted = GatedModel()
    agent = start_agent(run_model=counted)
    connection = connect(agent)
    try:
        body = json.dumps(task(plane, render_room(1))).encode()
        answered, _, response = exchange(connection, method, path, body, key=key)
        assert answered == status and not response.will_close, "the connection stays open"
        reused = connection.sock
        again, health, _ = exchange(connection, "GET", "/healthz")
        assert again == 200, f"the unread body is not parsed as the next request: {again} {health[:200]!r}"
        assert connection.sock is reused, "on the same connection"
        valid = task(plane, render_room(2))
        assert exchange(connection, "POST", "/v1/tasks", json.dumps(valid).encode())[0] == 202
        settled(agent, valid["task_id"])
        assert counted.runs == 1, "only the signed task ran"
    finally:
        connection.close()


@pytest.mark.parametrize("key", [AGENT_SECRET, OTHER_SECRET], ids=["signed", "wrong signature"])
def test_an_oversized_body_is_refused_and_the_connection_closed_cleanly(
        plane: ControlPlane, start_agent: Any, key: str) -> None:
    agent = start_agent()
    connection = connect(agent)
    try:
        status, answer, response = exchange(connection, "POST", "/v1/tasks", b"x" * (MAX_REQUEST_BYTES + 1), key=key)
        assert status == 413 and json.loads(answer)["message"], "refused unread, whoever signed it"
        assert response.will_close and response.getheader("Connection") == "close"
    finally:
        connection.close()
    fresh = connect(agent)
    try:
        assert exchange(fresh, "GET", "/healthz")[0] == 200, "a new connection works"
    finally:
        fresh.close()


def test_an_oversized_push_gets_its_answer_and_a_fin_not_a_reset(plane: ControlPlane, start_agent: Any) -> None:
    agent = start_agent()
    host, port = agent.listen_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        body = b"x" * (4 * MAX_REQUEST_BYTES)  # far more than is read: unread bytes must not turn the close into a RST
        raw.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: agent\r\nwebhook-signature: v1,c2lnbmVk"
                    + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while chunk := raw.recv(65536):  # ConnectionResetError here would be the RST
            received += chunk
    head, _, answer = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"Connection: close" in head
    assert json.loads(answer)["message"]


def test_a_push_without_a_usable_length_is_refused_and_the_connection_closed(
        plane: ControlPlane, start_agent: Any) -> None:
    agent = start_agent()
    host, port = agent.listen_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: agent\r\nwebhook-signature: v1,c2lnbmVk"
                    + b"\r\nContent-Length: lots\r\n\r\n{}")
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 411") and b"Connection: close" in received


def test_the_agent_sends_without_nagle(plane: ControlPlane, start_agent: Any) -> None:
    """Headers and body go out in two writes: with Nagle, the body waits for the client's delayed ACK (~40 ms)."""
    agent = start_agent()
    assert agent._server is not None
    nodelay: list[int] = []

    class Spy(agent._server.RequestHandlerClass):  # type: ignore[name-defined,misc]
        def setup(self) -> None:
            super().setup()
            nodelay.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    agent._server.RequestHandlerClass = Spy
    assert httpx.get(f"{agent.listen_url}/healthz", timeout=5).status_code == 200
    assert len(nodelay) == 1 and nodelay[0] != 0


# ---------------------------------------------------------------- fleet, readiness, drain


def test_registers_with_a_fleet_heartbeat_and_is_then_ready(plane: ControlPlane, start_agent: Any) -> None:
    agent = start_agent(vram_mb=12000)
    (beat, *_) = plane.wait_for(lambda: plane.posted("/v1/agent/heartbeat"), "a fleet heartbeat")
    assert beat["gpu_id"] == "local-7" and beat["vram_total_mb"] == 12000
    assert "pool" not in beat and "url" not in beat, "the GPU's enrollment says those, not its agent"
    assert set(beat["services"]) == {"remove_furniture", "upscale_2x"} and beat["draining"] is False
    assert httpx.get(f"{agent.listen_url}/healthz", timeout=5).json()["status"] == "ok"
    answer = ready(agent.listen_url)
    assert answer.status_code == 200 and answer.json()["free_slots"] == 2


def test_not_ready_until_the_control_plane_answers(plane: ControlPlane, start_agent: Any) -> None:
    plane.answers["/v1/agent/heartbeat"] = [(500, {})]
    agent = start_agent()
    plane.wait_for(lambda: plane.posted("/v1/agent/heartbeat"), "a fleet heartbeat")
    assert httpx.get(f"{agent.listen_url}/healthz", timeout=5).status_code == 200, "alive"
    assert ready(agent.listen_url).status_code == 503, "but not taking work"
    assert agent.beat() is True
    assert ready(agent.listen_url).status_code == 200


def test_not_ready_while_its_model_server_is_not(plane: ControlPlane, start_agent: Any) -> None:
    problem: list[str] = ["the model server answered 503"]
    agent = start_agent(model_not_ready=lambda: problem[0] if problem else None)
    plane.wait_for(lambda: plane.posted("/v1/agent/heartbeat"), "a fleet heartbeat")
    answer = ready(agent.listen_url)
    assert answer.status_code == 503 and "model server" in answer.json()["status"] and "503" in answer.json()["status"]
    problem.clear()
    assert ready(agent.listen_url).status_code == 200


def test_drain_refuses_new_work_and_gives_back_what_still_runs(plane: ControlPlane, start_agent: Any) -> None:
    held = GatedModel(gated=True)
    agent = start_agent(run_model=held, drain_timeout_s=0.5)
    running, late = task(plane, render_room(1)), task(plane, render_room(2))
    push(agent, running)
    assert held.entered.wait(WAIT)

    draining = threading.Thread(target=agent.drain_and_stop)
    draining.start()
    plane.wait_for(lambda: any(b["draining"] for b in plane.posted("/v1/agent/heartbeat")), "a draining heartbeat")
    draining.join(WAIT)
    assert not draining.is_alive()
    (result,) = plane.results(running["task_id"])
    assert (result["outcome"], result["error_type"]) == ("failed", "Draining"), "given back so the job moves on now"
    with pytest.raises(httpx.TransportError):
        push(agent, late)  # stopped
    held.gate.set()
    settled(agent, running["task_id"])
    assert len(plane.results(running["task_id"])) == 1, "the late finish reports nothing more"


def test_drain_lets_a_short_task_finish(plane: ControlPlane, start_agent: Any) -> None:
    held = GatedModel(gated=True)
    agent = start_agent(run_model=held, drain_timeout_s=WAIT)
    t = task(plane, render_room(1))
    push(agent, t)
    assert held.entered.wait(WAIT)
    draining = threading.Thread(target=agent.drain_and_stop)
    draining.start()
    plane.wait_for(lambda: any(b["draining"] for b in plane.posted("/v1/agent/heartbeat")), "a draining heartbeat")
    refused = push(agent, task(plane, render_room(2)))
    assert refused.status_code == 503 and "draining" in refused.json()["message"]
    held.gate.set()
    draining.join(WAIT)
    (result,) = plane.results(t["task_id"])
    assert result["outcome"] == "succeeded"


# ---------------------------------------------------------------- the real process


def agent_command(plane: ControlPlane, ready_file: Path) -> list[str]:
    return [sys.executable, "-m", "spillway.cli", "agent", "--gpu-id", "cloud-9", "--storage-url", plane.url,
            "--vram-mb", "24000", "--control-url", plane.url, "--listen", "127.0.0.1:0",
            "--heartbeat-interval", "30", "--ready-file", str(ready_file)]


def test_the_agent_process_serves_registers_and_exits_cleanly_on_sigterm(plane: ControlPlane, tmp_path: Path) -> None:
    ready_file = tmp_path / "ready.json"
    process = subprocess.Popen(agent_command(plane, ready_file),
                               env=os.environ | {"SPILLWAY_AGENT_SECRET": AGENT_SECRET},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        plane.wait_for(lambda: plane.posted("/v1/agent/heartbeat"), "the process's first heartbeat")
        serving = json.loads(ready_file.read_text())  # written before the first heartbeat
        assert serving["gpu_id"] == "cloud-9" and serving["pid"] == process.pid
        assert ready(serving["listen_url"], "cloud-9").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert plane.posted("/v1/agent/heartbeat")[-1]["draining"] is True


def test_the_agent_process_needs_its_secret(plane: ControlPlane, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPILLWAY_AGENT_SECRET"}
    done = subprocess.run(agent_command(plane, tmp_path / "r.json"), env=env, capture_output=True, text=True,
                          timeout=WAIT)
    assert done.returncode == 2 and "SPILLWAY_AGENT_SECRET" in done.stderr


def test_the_agent_process_fronts_a_model_server_process(plane: ControlPlane, tmp_path: Path) -> None:
    """Both as real processes, through the contract (KServe's v2): a task's result comes from the model
    server; with the model server gone the agent is not ready, and a task pushed anyway fails as a ModelError."""
    model_ready = tmp_path / "model.json"
    with (tmp_path / "model.log").open("wb") as log:  # the processes' logs, for a failure's reader
        model_server = subprocess.Popen([sys.executable, "-m", "spillway.agent.model_server", "--listen",
                                         "127.0.0.1:0", "--ready-file", str(model_ready)], stdout=log, stderr=log)
    agent = None
    try:
        model_url = wait_for_ready_file(model_ready, model_server, WAIT, "the model server")
        agent_ready = tmp_path / "agent.json"
        with (tmp_path / "agent.log").open("wb") as log:
            agent = subprocess.Popen(agent_command(plane, agent_ready) + ["--model-url", model_url],
                                     env=os.environ | {"SPILLWAY_AGENT_SECRET": AGENT_SECRET}, stdout=log, stderr=log)
        agent_url = wait_for_ready_file(agent_ready, agent, WAIT, "the agent")
        plane.wait_for(lambda: plane.posted("/v1/agent/heartbeat"), "the agent's first heartbeat")
        assert ready(agent_url, "cloud-9").status_code == 200

        before = render_room(6)
        served = task(plane, before)
        assert push(agent_url, served).status_code == 202
        (result,) = plane.wait_for(lambda: plane.results(served["task_id"]), "the result")
        assert result["outcome"] == "succeeded", result
        _, after = plane.objects[f"/out/{served['job_id'][2:]}"]
        assert after == model.run("remove_furniture", before), "the model server's result, stored as is"

        model_server.kill()
        model_server.wait(WAIT)
        answer = ready(agent_url, "cloud-9")
        assert answer.status_code == 503 and "the model server is not ready" in answer.json()["status"], answer.text
        failed = task(plane, render_room(7))
        assert push(agent_url, failed).status_code == 202
        (result,) = plane.wait_for(lambda: plane.results(failed["task_id"]), "the failure")
        assert (result["outcome"], result["error_type"]) == ("failed", "ModelError"), result
        assert "did not answer" in result["message"], "and says why"
    finally:
        for process in (agent, model_server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(WAIT)
