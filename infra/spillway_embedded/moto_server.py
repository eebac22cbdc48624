"""moto's server on loopback, in a process of its own, patched, with its Step Functions interpreter on.

`MotoServer().start()` runs `python -m spillway_embedded.moto_server --port P` and returns its endpoint once
it answers; `stop()` ends it. A process of its own gives moto (DynamoDB, SQS, the Step Functions
interpreter) a core of its own, away from the local Lambda runtime and its GIL.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from spillway_embedded import moto_patches

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # holds spillway_embedded/: importable by the child


def reserve_port(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a free port, held from the moment the port is known until a server takes it
    (`make_server(..., fd=sock.fileno())`): a port only probed free can be taken meanwhile by anyone's
    outgoing connection, whose local ports come from the same ephemeral range."""
    reserved = socket.socket()
    reserved.bind((host, 0))
    reserved.listen(128)
    return reserved


class MotoServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None,
                 start_timeout: float = 30.0, stop_timeout: float = 10.0, lambda_endpoint: str = "",
                 meter_capacity: bool = False):
        self._host = host
        self._meter_capacity = meter_capacity  # estimate DynamoDB's request units (see `CallCounter`)
        self._lambda_endpoint = lambda_endpoint  # where `lambda:invoke` Tasks are served (the runtime)
        self._port = port
        self._log_path = log_path
        self._own_log = False
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> str:
        # The port is held from its choice until the child serves on it (it inherits the listening socket): a
        # port only probed free can be taken meanwhile by any process's outgoing connection.
        reserved = None if self._port else reserve_port(self._host)
        port = reserved.getsockname()[1] if reserved else self._port
        # moto's interpreter calls its own service integrations (DynamoDB, SQS ...) at
        # http://localhost:$MOTO_PORT: the child sets it for itself; here it only keeps the old contract.
        os.environ["MOTO_PORT"] = str(port)
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="spillway-moto-", suffix=".log")
            os.close(fd)
            self._log_path, self._own_log = Path(name), True
        env = os.environ | {
            "MOTO_PORT": str(port),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
            moto_patches.LAMBDA_ENDPOINT_VARIABLE: self._lambda_endpoint,
        }
        command = [sys.executable, "-m", "spillway_embedded.moto_server", "--host", self._host, "--port", str(port),
                   "--parent-pid", str(os.getpid()), *(["--meter-capacity"] if self._meter_capacity else []),
                   *(["--fd", str(reserved.fileno())] if reserved else [])]
        try:
            with self._log_path.open("wb") as log:
                self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                                 stderr=subprocess.STDOUT, env=env,
                                                 pass_fds=(reserved.fileno(),) if reserved else ())
        finally:
            if reserved is not None:
                reserved.close()  # the child holds its own copy
        self.endpoint = f"http://{self._host}:{port}"
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise
        return self.endpoint

    def _wait_until_serving(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto's server exited with {self._process.returncode} before it served; "
                                   f"{self._log_path}:\n{self.log_tail()}")
            try:
                httpx.get(f"{self.endpoint}/moto-api/config", timeout=1.0).raise_for_status()
                return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto's server did not answer at {self.endpoint} within "
                                   f"{self._start_timeout:.0f}s; {self._log_path}:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        if self._log_path is None:
            return ""
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()  # SIGTERM: the child exits at once
                try:
                    process.wait(timeout=self._stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=self._stop_timeout)
            clean = process.returncode in (0, -signal.SIGTERM)
            if self._own_log and clean and self._log_path is not None:
                self._log_path.unlink(missing_ok=True)
                self._log_path, self._own_log = None, False


# ---------------------------------------------------------------- the child: python -m spillway_embedded.moto_server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spillway_embedded.moto_server",
                                     description="moto's server, patched, with its Step Functions interpreter on.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("--fd", type=int, help="serve on this listening socket, inherited from the parent")
    parser.add_argument("--meter-capacity", action="store_true",
                        help="estimate the DynamoDB request units each API consumes (GET /_spillway/capacity)")
    args = parser.parse_args(argv)

    # Before the first execution: the interpreter addresses DynamoDB, SQS ... at localhost:$MOTO_PORT (its
    # calls are then served in this process, by `app` below).
    os.environ["MOTO_PORT"] = str(args.port)

    from moto.moto_api._internal.models import moto_api_backend
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    from spillway_embedded import moto_patches
    from spillway_embedded.serving import KeepAliveRequestHandler, collect_less_often

    moto_patches.apply()
    moto_api_backend.set_config({"stepfunctions": {"execute_state_machine": True}})

    class RequestHandler(KeepAliveRequestHandler, MotoRequestHandler):  # moto's: S3 metadata headers kept
        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            pass  # one line per AWS call is noise; errors are still logged

    app = CallCounter(moto_patches.DirectJsonApis(DomainDispatcherApplication(create_backend_app)),
                      meter_capacity=args.meter_capacity)
    moto_patches.serve_integrations_in_process(app)
    server = make_server(args.host, args.port, app, threaded=True, request_handler=RequestHandler, fd=args.fd)

    def exit_now(*_: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_now)
    # Ctrl-C in a terminal reaches the whole process group: the parent stops this server when it is done
    # with it (its agents may still be draining through the API), so ignore SIGINT here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.parent_pid:
        threading.Thread(target=_exit_with_parent, args=(args.parent_pid,), name="parent-watch", daemon=True).start()
    collect_less_often()
    print(f"moto serving on http://{args.host}:{args.port} (pid {os.getpid()})", flush=True)
    with contextlib.suppress(SystemExit):
        server.serve_forever()
    server.server_close()


class CallCounter:
    """WSGI middleware: counts the AWS calls served by API (`dynamodb.UpdateItem`, `s3.PUT` ...) and the CPU
    time their request threads spent, so a benchmark can say what each job costs moto.
    `GET /_spillway/calls` answers {api: [calls, cpu_seconds]}; `GET /_spillway/capacity` the DynamoDB
    capacity units each API consumed, {api: units} (see `dynamodb_units`), on a server that meters them: reading
    every DynamoDB request and answer again costs moto a twentieth of its CPU, so only the cost model's stacks
    pay it (`--meter-capacity`), not the benchmarks that measure moto's CPU."""

    PATH = "/_spillway/calls"
    CAPACITY_PATH = "/_spillway/capacity"
    _SERVICE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/")

    def __init__(self, app: Any, meter_capacity: bool = False):
        self._app = app
        self._meter_capacity = meter_capacity
        self._lock = threading.Lock()
        self._calls: dict[str, list[float]] = {}
        self._units: dict[str, float] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == self.CAPACITY_PATH and not self._meter_capacity:
            body = b'{"message": "capacity is metered only by a server started with --meter-capacity"}'
            start_response("404 Not Found", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if environ.get("PATH_INFO") in (self.PATH, self.CAPACITY_PATH):
            with self._lock:
                body = json.dumps(self._calls if environ["PATH_INFO"] == self.PATH else self._units).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not (self._meter_capacity and target.startswith("DynamoDB_")):
            return self._counted(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        request = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(request)
        answer = b"".join(self._counted(environ, start_response))  # moto answers in memory, not a stream
        units = dynamodb_units(target.rpartition(".")[2], request, answer)
        with self._lock:
            api = self.api(environ)
            self._units[api] = self._units.get(api, 0.0) + units
        return [answer]

    def _counted(self, environ: dict[str, Any], start_response: Any) -> Any:
        started = time.thread_time()
        try:
            return self._app(environ, start_response)  # moto answers with a body in memory, not a stream
        finally:
            spent = time.thread_time() - started
            api = self.api(environ)
            with self._lock:
                counted = self._calls.setdefault(api, [0, 0.0])
                counted[0] += 1
                counted[1] += spent

    @classmethod
    def api(cls, environ: dict[str, Any]) -> str:
        """`service.Action` from the signature's scope and X-Amz-Target (JSON APIs) or `Action=` (query APIs);
        REST APIs (S3) by method."""
        found = cls._SERVICE.search(environ.get("HTTP_AUTHORIZATION", "") + environ.get("QUERY_STRING", "")
                                    .replace("%2F", "/"))
        service = found.group(1) if found else "?"
        if not found and environ.get("CONTENT_TYPE", "").startswith("multipart/form-data"):
            service = "s3"  # a browser-style upload: its signature is in the form, not in a header
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target:
            return f"{service}.{target.rpartition('.')[2]}"
        action = re.search(r"(?:^|&)Action=([A-Za-z]+)", environ.get("QUERY_STRING", ""))
        return f"{service}.{action.group(1) if action else environ.get('REQUEST_METHOD', '?')}"


WRITE_UNIT_BYTES, READ_UNIT_BYTES = 1024, 4096  # DynamoDB: a write unit per KB written, a read unit per 4 KB read


def dynamodb_units(action: str, request: bytes, answer: bytes) -> float:
    """The on-demand request units a DynamoDB call consumes, estimated by item size as AWS counts them:
    a write unit per KB of each item written (twice in a transaction), a read unit per 4 KB read (half for an
    eventually consistent read, twice in a transaction). Sizes are those of the items' JSON on the wire,
    which overstates DynamoDB's own item size a little (type tags), never understates it. An update or a
    delete is counted by its key's size (the item's own is not on the wire): our items are under 1 KB."""
    try:
        body, answered = json.loads(request or b"{}"), json.loads(answer or b"{}")
    except ValueError:
        return 0.0

    def size(value: Any) -> int:
        return len(json.dumps(value or {}))

    def writes(item: Any) -> int:
        return max(1, math.ceil(size(item) / WRITE_UNIT_BYTES))

    def reads(nbytes: int, consistent: bool) -> float:
        return max(1, math.ceil(nbytes / READ_UNIT_BYTES)) * (1.0 if consistent else 0.5)

    consistent = bool(body.get("ConsistentRead"))
    if action == "PutItem":
        return writes(body.get("Item"))
    if action in ("UpdateItem", "DeleteItem"):
        return writes(body.get("Key"))
    if action == "TransactWriteItems":
        return sum(2 * writes(next(iter(entry.values())).get("Item") or next(iter(entry.values())).get("Key"))
                   for entry in body.get("TransactItems", []))
    if action == "BatchWriteItem":
        return sum(writes((entry.get("PutRequest") or entry.get("DeleteRequest") or {}).get("Item"))
                   for entries in body.get("RequestItems", {}).values() for entry in entries)
    if action == "GetItem":
        return reads(size(answered.get("Item")), consistent)
    if action in ("Query", "Scan"):
        return reads(sum(size(item) for item in answered.get("Items", [])), consistent)
    if action == "TransactGetItems":
        return sum(2 * reads(size(entry.get("Item")), True) for entry in answered.get("Responses", []))
    if action == "BatchGetItem":
        return sum(reads(size(item), False) for items in answered.get("Responses", {}).values() for item in items)
    return 0.0  # table and stream management: not request units


def _exit_with_parent(parent_pid: int) -> None:
    """Never outlive the stack that started this server (a parent killed with SIGKILL cannot stop it)."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


if __name__ == "__main__":
    main()
