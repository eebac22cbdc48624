"""The embedded stack's HTTP servers keep connections alive (spillway_embedded.serving)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from spillway_embedded.serving import GC_THRESHOLDS, KeepAliveRequestHandler


class Recorder(KeepAliveRequestHandler):
    connections: list[int] = []  # TCP_NODELAY of each connection the server accepted

    def setup(self) -> None:
        super().setup()
        self.connections.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


@Request.application
def app(request: Request) -> Response:
    if request.path == "/raise":
        raise RuntimeError("the application failed")
    if request.path == "/stream":
        return Response(iter([b"no ", b"length"]))  # werkzeug sends no Content-Length for an iterator
    body = json.dumps({"method": request.method, "body": request.get_data().decode()})
    return Response(body, content_type="application/json")


@pytest.fixture
def server() -> Iterator[Any]:
    Recorder.connections = []
    served = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Recorder)
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()


def test_requests_share_one_connection_and_each_reads_exactly_its_own_body(server: Any) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
    answers = []
    for method, body in (("POST", b"first"), ("GET", None), ("PUT", b"x" * 70_000), ("HEAD", None),
                         ("POST", b"")):
        connection.request(method, "/echo", body=body)
        response = connection.getresponse()
        data = response.read()
        assert response.getheader("Connection") is None, "kept alive"
        answers.append((response.status, json.loads(data)["body"][:5] if data else None))
    connection.request("GET", "/stream")
    assert connection.getresponse().read() == b"no length"
    assert answers == [(200, "first"), (200, ""), (200, "xxxxx"), (200, None), (200, "")]
    assert len(Recorder.connections) == 1 and Recorder.connections[0] != 0  # one connection, without Nagle


def test_a_failing_application_answers_500_and_closes(server: Any) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
    connection.request("GET", "/raise")
    response = connection.getresponse()
    assert (response.status, response.getheader("Connection")) == (500, "close")
    response.read()


def test_a_chunked_request_is_answered_and_its_connection_closed(server: Any) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
    connection.request("POST", "/echo", body=iter([b"in ", b"chunks"]), encode_chunked=True,
                       headers={"Transfer-Encoding": "chunked"})
    response = connection.getresponse()
    assert json.loads(response.read())["body"] == "in chunks"
    assert response.getheader("Connection") == "close"


def test_a_client_that_asks_to_close_gets_its_connection_closed(server: Any) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
    connection.request("GET", "/echo", headers={"Connection": "close"})
    response = connection.getresponse()
    assert response.getheader("Connection") == "close"
    response.read()


def test_a_reserved_port_is_held_from_its_choice_until_a_server_serves_on_it() -> None:
    from spillway_embedded.moto_server import reserve_port
    from spillway_embedded.runtime import serve

    reserved = reserve_port()
    port = reserved.getsockname()[1]
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", port))  # a port only probed free could be taken here; a held one cannot
    served = serve("127.0.0.1", reserved, app)
    reserved.close()  # the server holds its own copy
    threading.Thread(target=served.serve_forever, daemon=True).start()
    try:
        assert served.server_port == port
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("POST", "/echo", body=b"held")
        assert json.loads(connection.getresponse().read())["body"] == "held"
    finally:
        served.shutdown()
        served.server_close()


def test_a_server_process_collects_its_garbage_less_often_and_never_its_startup_heap() -> None:
    """In a process of its own: the thresholds and the frozen heap are process-wide."""
    probe = ("import gc, json; from spillway_embedded.serving import collect_less_often; cycle = []; "
             "cycle.append(cycle); del cycle; collect_less_often(); "
             "print(json.dumps([gc.get_threshold(), gc.get_freeze_count(), gc.get_count()[0]]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60,
                          env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    thresholds, frozen, young = json.loads(done.stdout)
    assert tuple(thresholds) == GC_THRESHOLDS and thresholds[0] > 700 and frozen > 1000 and young < 100
