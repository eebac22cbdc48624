"""A stand-in model server: the agent's model-server contract (KServe's v2, see inference.py) over the
built-in demo model. A reference for wrapping a real model, and what the end-to-end tests run:

    python -m spillway.agent.model_server --listen 127.0.0.1:8000
    spillway agent --model-url http://127.0.0.1:8000 ...

GET /v2/health/live, /v2/health/ready (200 once warmed up), /v2/models/{name}/ready, /v2/models/{name};
POST /v2/models/{name}/infer. An unusable image is a 400, an unknown model a 404, a crash a 500, each
with v2's `{"error": "..."}`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from spillway.agent import model
from spillway.agent.inference import HEADER_LENGTH, TENSOR, decode, encode
from spillway.catalog import SERVICES

MAX_BODY_BYTES = 256 * 1024 * 1024
MODEL_ROUTE = re.compile(r"^/v2/models/(?P<name>[^/]+)(?P<action>/ready|/infer)?$")


class ModelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen: tuple[str, int], run_model: Callable[[str, bytes], bytes] = model.run,
                 runs: Callable[[str], bool] = model.runs):
        super().__init__(listen, _Handler)
        self.run_model, self.runs = run_model, runs
        self.ready = threading.Event()  # set once warmed up: /v2/health/ready answers 200

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def warm_up(self) -> None:
        """Run each model once, as a real server loads its weights before it says it is ready."""
        from spillway.rooms import render_room

        for service in SERVICES:
            if self.runs(service):
                self.run_model(service, render_room(1, 64, 48))
        self.ready.set()


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no ~40 ms wait on a reused connection

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route = MODEL_ROUTE.match(self.path)
        if self.path == "/v2/health/live":
            self._json(HTTPStatus.OK, {"live": True})
        elif self.path == "/v2/health/ready":
            ready = self.server.ready.is_set()
            self._json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, {"ready": ready})
        elif route and route["action"] != "/infer":
            name = route["name"]
            if not self.server.runs(name):
                self._error(HTTPStatus.NOT_FOUND, f"no model {name!r} here")
            elif route["action"] == "/ready":
                ready = self.server.ready.is_set()
                self._json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, {"name": name, "ready": ready})
            else:
                tensor = {"name": TENSOR, "datatype": "BYTES", "shape": [1]}
                self._json(HTTPStatus.OK, {"name": name, "platform": "spillway-demo", "inputs": [tensor],
                                           "outputs": [tensor]})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        route = MODEL_ROUTE.match(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"at most {MAX_BODY_BYTES} bytes")
            return
        body = self.rfile.read(length)
        if not route or route["action"] != "/infer":
            self._error(HTTPStatus.NOT_FOUND, f"no route POST {self.path}")
            return
        name = route["name"]
        if not self.server.runs(name):
            self._error(HTTPStatus.NOT_FOUND, f"no model {name!r} here")
            return
        if not self.server.ready.is_set():
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "warming up")
            return
        try:
            request, image = decode(body, self.headers.get(HEADER_LENGTH), "inputs")
            output = self.server.run_model(name, image)
        except (ValueError, model.BadImage) as unusable:
            self._error(HTTPStatus.BAD_REQUEST, str(unusable))
            return
        except Exception as crash:  # the model's own failure: the caller may try elsewhere
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"the model failed: {crash!r}")
            return
        answer = {"model_name": name, "outputs": [{"name": TENSOR, "datatype": "BYTES", "shape": [1]}]}
        if "id" in request:
            answer["id"] = request["id"]
        data, headers = encode(answer, "outputs", output)
        self._send(HTTPStatus.OK, data, headers)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _send(self, status: HTTPStatus, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass


def main(argv: list[str] | None = None) -> int:
    from spillway.agent.cli import listen_address
    from spillway.agent.server import write_atomically

    parser = argparse.ArgumentParser(prog="python -m spillway.agent.model_server",
                                     description="A stand-in model server (KServe's v2 protocol) over the demo model.")
    parser.add_argument("--listen", type=listen_address, default=("127.0.0.1", 8000),
                        help="HOST:PORT to serve on; port 0 picks one (default 127.0.0.1:8000)")
    parser.add_argument("--ready-file", type=Path, help="write {listen_url, pid} here once ready")
    args = parser.parse_args(argv)
    server = ModelServer(args.listen, run_model=model.run)  # looked up now: a wrapper installed before applies
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    server.warm_up()
    if args.ready_file:
        write_atomically(args.ready_file, {"listen_url": server.url, "pid": os.getpid()})
    print(f"model server ready on {server.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
