"""The tunnel proxy stands for the office link: it carries HTTP, and when cut, fails pushes at once.

Also the runtime's API: the agents' heartbeats logged quietly (its servers' keep-alive and TCP_NODELAY:
test_serving).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from werkzeug.test import Client

from spillway_embedded.chaos import ChaosControl
from spillway_embedded.provision import Function, Route, Stack
from spillway_embedded.runtime import HttpApi, Invoker
from spillway_embedded.tenants import Tenants
from spillway_embedded.tunnel import CutMode, Tunnel

import runtime_handlers

TIMEOUT = httpx.Timeout(5.0, connect=2.0)


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a connection can be open when the link drops
    # GET /slow answers once the test opens the gate: a call in flight when the link drops.
    entered = threading.Event()
    gate = threading.Event()
    answered = threading.Event()  # /slow's answer is written: it is in the tunnel's hands

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/slow":
            type(self).entered.set()
            type(self).gate.wait(10)
        body = b"hello from the GPU"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path == "/slow":
            type(self).answered.set()

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):  # the tunnel reset it: what the tests do
            super().handle()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tunnel() -> Iterator[Tunnel]:
    Hello.entered, Hello.gate, Hello.answered = threading.Event(), threading.Event(), threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tunnel = Tunnel(target=server.server_address[:2])
    tunnel.start()
    yield tunnel
    Hello.gate.set()
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


class InFlight:
    """A call through the tunnel, on its own thread, that the GPU behind does not answer until the gate opens."""

    def __init__(self, tunnel: Tunnel, timeout: float):
        self.started = time.monotonic()
        self.ended: float | None = None
        self.outcome: httpx.Response | Exception | None = None
        self._thread = threading.Thread(target=self._call, args=(tunnel, timeout), daemon=True)
        self._thread.start()
        assert Hello.entered.wait(5), "the call never reached the GPU"

    def _call(self, tunnel: Tunnel, timeout: float) -> None:
        try:
            self.outcome = httpx.get(f"{tunnel.url}/slow", timeout=httpx.Timeout(timeout, connect=1.0))
        except httpx.HTTPError as exc:
            self.outcome = exc
        self.ended = time.monotonic()

    def result(self) -> tuple[httpx.Response | Exception | None, float]:
        """What the call ended with, and when (time.monotonic())."""
        self._thread.join(10)
        assert self.ended is not None, "the call is still hanging"
        return self.outcome, self.ended


def timed(action: Callable[[], None]) -> float:
    action()
    return time.monotonic()


def test_a_refused_cut_fails_a_call_in_flight_at_once(tunnel: Tunnel) -> None:
    """A GPU still working on a request when its link drops: the caller hears it at once, not at its timeout."""
    call = InFlight(tunnel, timeout=5.0)
    cut_at = timed(tunnel.cut)
    outcome, ended = call.result()
    assert isinstance(outcome, httpx.TransportError) and not isinstance(outcome, httpx.TimeoutException), outcome
    assert ended - cut_at < 0.5, f"failed {ended - cut_at:.2f} s after the cut"


def test_a_silent_cut_hangs_a_call_in_flight_until_its_callers_timeout(tunnel: Tunnel) -> None:
    call = InFlight(tunnel, timeout=1.0)
    tunnel.cut(CutMode.SILENT)
    assert tunnel.cut_mode is CutMode.SILENT
    Hello.gate.set()  # the GPU answers now; the answer vanishes on the way
    outcome, ended = call.result()
    assert isinstance(outcome, httpx.ReadTimeout), outcome
    assert ended - call.started >= 1.0, "it waited for its own timeout"


def test_a_silent_cut_accepts_new_calls_and_hangs_them(tunnel: Tunnel) -> None:
    tunnel.cut(CutMode.SILENT)
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException), httpx.Client(timeout=httpx.Timeout(0.5, connect=1.0)) as client:
        client.get(tunnel.url)
    assert time.monotonic() - started >= 0.5
    tunnel.restore()
    assert get(tunnel).status_code == 200


def test_a_call_in_flight_across_a_short_silent_cut_completes_once_restored(tunnel: Tunnel) -> None:
    """What a silent link held flows on when it comes back, as TCP retransmits it."""
    call = InFlight(tunnel, timeout=5.0)
    tunnel.cut(CutMode.SILENT)
    Hello.gate.set()
    tunnel.restore()
    outcome, _ = call.result()
    assert isinstance(outcome, httpx.Response) and outcome.text == "hello from the GPU", outcome


def test_an_idle_keep_alive_connection_survives_a_silent_cut(tunnel: Tunnel) -> None:
    with httpx.Client(timeout=TIMEOUT) as client:
        assert client.get(tunnel.url).status_code == 200
        with tunnel._lock:
            legs = set(tunnel._open)
        tunnel.cut(CutMode.SILENT)
        tunnel.restore()
        assert client.get(tunnel.url).status_code == 200
        with tunnel._lock:
            assert tunnel._open == legs, "on the same connection"


def test_a_silent_cut_turned_refused_resets_what_it_held(tunnel: Tunnel) -> None:
    """The answer the silent link holds is lost with the refused cut: it never slips through between
    the switch and the resets (it once did, now and then)."""
    call = InFlight(tunnel, timeout=5.0)
    tunnel.cut(CutMode.SILENT)
    Hello.gate.set()
    assert Hello.answered.wait(5), "the GPU answered, into the silent link"
    cut_at = timed(tunnel.cut)
    outcome, ended = call.result()
    assert isinstance(outcome, httpx.TransportError) and not isinstance(outcome, httpx.TimeoutException), outcome
    assert ended - cut_at < 0.5


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


def test_the_chaos_switchboard_cuts_silently_and_each_way_of_a_link() -> None:
    inbound, outbound = {"local-0": Tunnel(), "local-1": Tunnel()}, {"local-0": Tunnel()}
    client = Client(ChaosControl(lambda: inbound, outbound=lambda: outbound))
    try:
        silent = client.post("/tunnels/cut?mode=silent", json={"gpu_ids": ["local-1"]})
        assert silent.status_code == 200 and inbound["local-1"].cut_mode is CutMode.SILENT
        assert client.post("/tunnels/cut?direction=out", json={"gpu_ids": ["local-0"]}).status_code == 200
        assert (inbound["local-0"].is_cut, outbound["local-0"].cut_mode) == (False, CutMode.REFUSE), \
            "it can be pushed to, but cannot report"
        (state,) = [t for t in client.get("/tunnels").json["tunnels"] if t["gpu_id"] == "local-0"]
        assert (state["cut"], state["outbound"]["cut"], state["outbound"]["cut_mode"]) == (False, True, "refuse")
        assert client.post("/tunnels/cut?direction=both", json={"gpu_ids": ["local-1"]}).status_code == 404, \
            "local-1 has no outbound link to cut"
        assert client.post("/tunnels/cut?mode=sideways").status_code == 422
        assert client.post("/tunnels/cut?direction=up").status_code == 422
        assert client.post("/tunnels/restore").status_code == 200, "both ways, where there are two"
        assert not any(t.is_cut for t in [*inbound.values(), *outbound.values()])
        assert client.post("/tunnels/break?direction=out", json={"gpu_ids": ["local-0"]}).status_code == 200
        assert outbound["local-0"].is_broken and not inbound["local-0"].is_broken
        assert client.post("/tunnels/restore?direction=in").status_code == 200 and outbound["local-0"].is_broken
    finally:
        for tunnel in [*inbound.values(), *outbound.values()]:
            tunnel.stop()


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
    yield Client(HttpApi(stack, {"Recorder": Invoker(RECORDER, "us-east-1", "123456789012")}, api_id="abc123",
                         tenants=Tenants([], "123456789012")))
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
