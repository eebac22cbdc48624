"""The tunnel proxy stands for the office link: it carries HTTP, and when cut, fails pushes at once.

Also the embedded stack's other HTTP servers (the chaos switchboard, the runtime's API): sent
without Nagle's delay, and the agents' heartbeats logged quietly.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from werkzeug.serving import make_server
from werkzeug.test import Client

from spillway_embedded.chaos import ChaosControl
from spillway_embedded.provision import Function, Route, Stack
from spillway_embedded.runtime import HttpApi, Invoker, NoDelayRequestHandler
from spillway_embedded.tunnel import Tunnel

import runtime_handlers

TIMEOUT = httpx.Timeout(5.0, connect=2.0)


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a connection can be open when the link drops

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = b"hello from the GPU"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tunnel() -> Iterator[Tunnel]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tunnel = Tunnel(target=server.server_address[:2])
    tunnel.start()
    yield tunnel
    tunnel.stop()
    server.shutdown()


def get(tunnel: Tunnel) -> httpx.Response:
    with httpx.Client(timeout=TIMEOUT) as client:  # a fresh connection each time
        return client.get(tunnel.url)


def test_carries_http(tunnel: Tunnel) -> None:
    assert get(tunnel).text == "hello from the GPU"


def test_cut_fails_connections_at_once_and_restore_heals(tunnel: Tunnel) -> None:
    tunnel.cut()
    assert tunnel.is_cut
    with pytest.raises(httpx.TransportError) as failure:
        get(tunnel)
    assert not isinstance(failure.value, httpx.TimeoutException), "a cut link fails fast, not by timeout"
    tunnel.restore()
    assert get(tunnel).status_code == 200


def test_cut_resets_connections_already_open(tunnel: Tunnel) -> None:
    with httpx.Client(timeout=TIMEOUT) as client:
        assert client.get(tunnel.url).status_code == 200  # the connection stays open (keep-alive)
        tunnel.cut()
        with pytest.raises(httpx.TransportError) as failure:
            client.get(tunnel.url)
        assert not isinstance(failure.value, httpx.TimeoutException)


def test_the_tunnel_forwards_without_nagle(tunnel: Tunnel) -> None:
    """A response comes in two writes (headers, body): with Nagle on either leg, the body would wait
    for the peer's delayed ACK, ~40 ms per request on a reused connection."""
    with httpx.Client(timeout=TIMEOUT) as client:
        assert client.get(tunnel.url).status_code == 200  # the connection stays open (keep-alive)
        with tunnel._lock:
            legs = list(tunnel._open)  # the accepted client socket and the upstream one
        assert len(legs) == 2
        assert all(leg.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for leg in legs)
        assert client.get(tunnel.url).status_code == 200, "and the reused connection carries the next request"


def test_broken_answers_every_request_with_a_502_and_restore_mends(tunnel: Tunnel) -> None:
    tunnel.break_()
    assert tunnel.is_broken
    with httpx.Client(timeout=TIMEOUT) as client:
        answer = client.post(tunnel.url + "/v1/tasks", json={"task_id": "t"})
    assert answer.status_code == 502 and "model server" in answer.json()["message"], "reachable, but failing"
    tunnel.restore()
    assert get(tunnel).text == "hello from the GPU"


def test_no_target_yet_refuses(tunnel: Tunnel) -> None:
    tunnel.target = None
    with pytest.raises(httpx.TransportError):
        get(tunnel)


def test_the_chaos_switchboard_cuts_breaks_and_restores_by_gpu_and_by_pool() -> None:
    tunnels = {"local-0": Tunnel(), "local-1": Tunnel(), "cloud-0": Tunnel()}
    try:
        switchboard(tunnels)
    finally:
        for tunnel in tunnels.values():
            tunnel.stop()


def switchboard(tunnels: dict[str, Tunnel]) -> None:
    client = Client(ChaosControl(lambda: tunnels, pool_of=lambda gpu_id: gpu_id.split("-")[0]))
    cut = client.post("/tunnels/cut", json={"gpu_ids": ["local-1"]})
    assert cut.status_code == 200
    assert [(t["gpu_id"], t["cut"]) for t in cut.json["tunnels"]] == [
        ("cloud-0", False), ("local-0", False), ("local-1", True)]
    assert client.post("/tunnels/cut", json={"pool": "local"}).status_code == 200
    assert [g for g, t in tunnels.items() if t.is_cut] == ["local-0", "local-1"], "the office link, not the cloud"
    assert client.post("/tunnels/break", json={"pool": "cloud"}).status_code == 200 and tunnels["cloud-0"].is_broken
    assert client.post("/tunnels/cut").status_code == 200 and all(t.is_cut for t in tunnels.values())
    assert client.post("/tunnels/restore").status_code == 200
    assert not any(t.is_cut or t.is_broken for t in tunnels.values())
    unknown = client.post("/tunnels/cut", json={"gpu_ids": ["cloud-9"]})
    assert unknown.status_code == 404 and "cloud-9" in unknown.json["message"]
    assert client.post("/tunnels/cut", json={"gpus": "all"}).status_code == 422
    assert client.get("/tunnels").json["tunnels"][0]["url"].startswith("http://127.0.0.1:")


class RecordedAgents:
    """The stack's side of agent chaos, recorded (the real processes are signalled in test_fleet_health_end_to_end)."""

    def __init__(self) -> None:
        self.done: list[tuple[list[str], str]] = []

    def agent_signal(self, gpu_ids: list[str], action: str) -> None:
        self.done.append((gpu_ids, action))

    def agent_states(self) -> dict[str, str]:
        return {"local-0": "running", "cloud-0": "running"}


def test_the_chaos_switchboard_signals_agents_by_gpu_and_refuses_what_it_cannot_do() -> None:
    agents = RecordedAgents()
    client = Client(ChaosControl(dict, agents=agents))
    assert client.post("/agents/kill", json={"gpu_ids": ["local-0"]}).status_code == 200
    assert client.post("/agents/restart", json={"gpu_ids": ["local-0", "cloud-0"]}).status_code == 200
    assert agents.done == [(["local-0"], "kill"), (["local-0", "cloud-0"], "restart")]
    assert client.get("/agents").json == {"agents": {"local-0": "running", "cloud-0": "running"}}
    assert client.post("/agents/explode", json={"gpu_ids": ["local-0"]}).status_code == 404
    assert client.post("/agents/kill", json={"gpu_ids": ["local-9"]}).status_code == 404
    assert client.post("/agents/kill", json={}).status_code == 422, "which agents, always"
    assert len(agents.done) == 2


# ---------------------------------------------------------------- the embedded stack's werkzeug servers


def test_the_werkzeug_servers_send_without_nagle() -> None:
    """The runtime's HTTP API and the chaos switchboard are served with this handler."""
    nodelay: list[int] = []

    class Spy(NoDelayRequestHandler):
        def setup(self) -> None:
            super().setup()
            nodelay.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    tunnels = {"local-0": Tunnel()}
    server = make_server("127.0.0.1", 0, ChaosControl(lambda: tunnels), threaded=True, request_handler=Spy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with httpx.Client(timeout=TIMEOUT) as client:
            assert client.get(f"http://127.0.0.1:{server.server_port}/tunnels").status_code == 200
    finally:
        server.shutdown()
        server.server_close()
        tunnels["local-0"].stop()
    assert len(nodelay) == 1 and nodelay[0] != 0


RECORDER = Function(
    logical_id="Recorder", name="recorder", arn="arn:aws:lambda:us-east-1:123456789012:function:recorder",
    handler="runtime_handlers.handler", timeout=30, memory_mb=128, environment={},
)


@pytest.fixture
def api() -> Iterator[Client]:
    stack = Stack(name="t", region="us-east-1", functions={"Recorder": RECORDER}, routes=[
        Route("POST", "/v1/agent/heartbeat", "Recorder"),
        Route("POST", "/v1/agent/tasks/{task_id}/heartbeat", "Recorder"),
        Route("POST", "/v1/agent/tasks/{task_id}/result", "Recorder"),
    ])
    runtime_handlers.events.clear()
    yield Client(HttpApi(stack, {"Recorder": Invoker(RECORDER, "us-east-1", "123456789012")}, api_id="abc123"))
    runtime_handlers.events.clear()
    runtime_handlers.answer = None


@pytest.mark.parametrize("path", ["/v1/agent/heartbeat", "/v1/agent/tasks/t-1/heartbeat"])
def test_heartbeats_are_logged_at_debug_and_their_failures_at_warning(
        api: Client, caplog: pytest.LogCaptureFixture, path: str) -> None:
    caplog.set_level(logging.DEBUG, logger="embedded.runtime")
    runtime_handlers.answer = {"statusCode": 200, "body": "{}"}
    assert api.post(path, json={}).status_code == 200
    runtime_handlers.answer = {"statusCode": 409, "body": "{}"}
    assert api.post(path, json={}).status_code == 409
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "embedded.runtime"]
    assert [level for level, _ in lines] == [logging.DEBUG, logging.WARNING]
    assert lines[0][1].startswith(f"POST {path} -> 200") and lines[1][1].startswith(f"POST {path} -> 409")


def test_other_routes_are_logged_at_info_and_failures_at_warning(api: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="embedded.runtime")
    runtime_handlers.answer = {"statusCode": 200, "body": "{}"}
    api.post("/v1/agent/tasks/t-1/result", json={})
    runtime_handlers.answer = RuntimeError("the handler broke")
    api.post("/v1/agent/tasks/t-1/result", json={})
    api.post("/v1/agent/heartbeat/extra", json={})  # no route: 404
    requests = [(r.levelno, r.getMessage().split(" (")[0]) for r in caplog.records
                if r.name == "embedded.runtime" and " -> " in r.getMessage()]
    assert requests == [
        (logging.INFO, "POST /v1/agent/tasks/t-1/result -> 200"),
        (logging.WARNING, "POST /v1/agent/tasks/t-1/result -> 500"),
        (logging.WARNING, "POST /v1/agent/heartbeat/extra -> 404"),
    ]
