"""The tunnel proxy stands for the office link: it carries HTTP, and when cut, fails pushes at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from werkzeug.test import Client

from spillway_embedded.chaos import ChaosControl
from spillway_embedded.tunnel import Tunnel

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


def test_no_target_yet_refuses(tunnel: Tunnel) -> None:
    tunnel.target = None
    with pytest.raises(httpx.TransportError):
        get(tunnel)


def test_the_chaos_switchboard_cuts_and_restores_by_gpu() -> None:
    tunnels = {"local-0": Tunnel(), "local-1": Tunnel()}
    try:
        switchboard(tunnels)
    finally:
        for tunnel in tunnels.values():
            tunnel.stop()


def switchboard(tunnels: dict[str, Tunnel]) -> None:
    client = Client(ChaosControl(lambda: tunnels))
    cut = client.post("/tunnels/cut", json={"gpu_ids": ["local-1"]})
    assert cut.status_code == 200
    assert [(t["gpu_id"], t["cut"]) for t in cut.json["tunnels"]] == [("local-0", False), ("local-1", True)]
    assert client.post("/tunnels/cut").status_code == 200 and all(t.is_cut for t in tunnels.values())
    assert client.post("/tunnels/restore").status_code == 200 and not any(t.is_cut for t in tunnels.values())
    unknown = client.post("/tunnels/cut", json={"gpu_ids": ["cloud-0"]})
    assert unknown.status_code == 404 and "cloud-0" in unknown.json["message"]
    assert client.post("/tunnels/cut", json={"gpus": "all"}).status_code == 422
    assert client.get("/tunnels").json["tunnels"][0]["url"].startswith("http://127.0.0.1:")
