"""The local runtime: invokes the template's Lambda handlers in this process, as the template wires them.

- HttpApi routes are served on a local port, each request handed to its function as an API Gateway
  HTTP API (payload v2) event, the answer turned back into HTTP as API Gateway would;
- SQS event sources are polled with their batch size and batching window; a batch is deleted when
  the handler returns, except the records it names in `batchItemFailures` (ReportBatchItemFailures),
  and nothing is deleted when it raises, so the messages come back after their visibility timeout;
- `rate(...)` schedules invoke their function on time;
- Lambda's Invoke API (`POST /2015-03-31/functions/{name}/invocations`) is served on a port of its own,
  for the `lambda:invoke` Tasks of the state machines (moto's interpreter is pointed at it).

Each function runs on warm containers, up to its concurrency (the template's reserved concurrency, else
the runtime's `CONCURRENCY`), each one invocation at a time as on Lambda: Powertools keeps
per-invocation state in module globals, which is safe in Lambda's one-event-per-container model and
must stay safe here. So each container has its own copy of the handler's module and a context of its
own in which Powertools' shared state (log keys, metrics) is its own (see `Container`, `function_state`).

IAM auth on routes is played by a bearer token (see `tenants`): the token's principal is put in the
request context as API Gateway's IAM authorizer would, no or an unknown token is a 403. Not emulated
offline: IAM policies, Lambda timeouts (an overrun is logged, not killed), cron schedules.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import logging
import os
import re
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import boto3
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from spillway_embedded.function_state import function_context
from spillway_embedded.provision import Function, QueueSource, Route, Schedule, Stack
from spillway_embedded.serving import KeepAliveRequestHandler
from spillway_embedded.tenants import Tenants

log = logging.getLogger("embedded.runtime")  # not under Powertools' "spillway" logger

Handler = Callable[[dict[str, Any], Any], Any]
# A request that waits this long for its function (busy with earlier ones) is throttled (429).
THROTTLE_AFTER_S = 10.0
# Containers per function at most, where the template reserves none: one function's invocations, mostly
# waiting on AWS calls, overlap (an agents' burst of reports no longer queues behind one container), and
# races between them happen offline as on AWS. Not more: every container shares one process's GIL and the
# stack's two cores, and 4 cost a 500-job burst 1.5x the CPU a job (contention, refused transactions) for
# two-thirds of the jobs/s of 2 (interleaved runs, README: Performance).
CONCURRENCY = 2


@dataclass
class LambdaContext:
    """What Lambda passes as `context`; Powertools reads these attributes."""

    function: Function
    region: str
    account_id: str
    deadline: float = field(init=False)
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.function.timeout
        self.function_name = self.function.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = self.function.arn
        self.memory_limit_in_mb = self.function.memory_mb
        self.log_group_name = f"/aws/lambda/{self.function.name}"
        self.log_stream_name = "embedded"
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


class Container:
    """One warm instance of a function: its handler, from a module of its own, and its own context.

    The first container runs the handler module the process imported (a test that sets something on it
    reaches it); each further one executes the module afresh, as a new Lambda container imports it, so
    what the module holds for one invocation at a time (a resolver's context, a batch processor's records,
    a Logger's keys) is never shared by two invocations under way. What it imports is the process's:
    the domain objects, thread-safe, that different functions already share.
    """

    def __init__(self, handler_path: str, first: bool):
        module_name, _, attribute = handler_path.rpartition(".")
        self.context = function_context()
        module = importlib.import_module(module_name) if first else self.context.run(_fresh_module, module_name)
        self.handler: Handler = getattr(module, attribute)

    def run(self, event: dict[str, Any], context: LambdaContext) -> Any:
        return self.context.run(self.handler, event, context)


def _fresh_module(name: str) -> ModuleType:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module {name}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Invoker:
    """One function's handler, invoked on up to `concurrency` warm containers at once (Lambda's reserved
    concurrency), each running one event at a time; a container is made when all are busy, as Lambda
    scales out, and the warmest idle one serves next."""

    def __init__(self, function: Function, region: str, account_id: str, concurrency: int = 1):
        self.function = function
        self.concurrency = concurrency
        self._region = region
        self._account_id = account_id
        self._slots = threading.BoundedSemaphore(concurrency)  # one per container that may run
        self._lock = threading.Lock()  # guards the idle list and the counters
        self._idle: list[Container] = [Container(function.handler, first=True)]
        self.containers = 1
        # What Lambda bills: invocations and their durations (read by the cost model, aws_cost.py).
        self.invocations = 0
        self.seconds = 0.0

    def wait_idle(self, timeout: float) -> bool:
        """Wait for the invocations under way to end; False if they did not within `timeout`."""
        deadline = time.monotonic() + timeout
        taken = 0
        try:
            while taken < self.concurrency and self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                taken += 1
            return taken == self.concurrency
        finally:
            for _ in range(taken):
                self._slots.release()

    def __call__(self, event: dict[str, Any], wait: float | None = None) -> Any:
        """Invoke once a container is free or may be made; with `wait`, raise Throttled if none is by
        then (as Lambda throttles a function whose concurrency is used up)."""
        if not self._slots.acquire(timeout=wait):
            raise Throttled(self.function.logical_id)
        try:
            container = self._take()
            context = LambdaContext(self.function, self._region, self._account_id)
            started = time.monotonic()
            try:
                return container.run(event, context)
            finally:
                elapsed = time.monotonic() - started
                with self._lock:
                    self._idle.append(container)
                    self.invocations += 1
                    self.seconds += elapsed
                if elapsed > self.function.timeout:
                    log.warning("%s ran %.1fs, over its %ss timeout; Lambda would have stopped it",
                                self.function.logical_id, elapsed, self.function.timeout)
        finally:
            self._slots.release()

    def _take(self) -> Container:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # the one that ran last: warm
            self.containers += 1
        return Container(self.function.handler, first=False)


class Throttled(Exception):
    """The function was busy for longer than a synchronous caller waits."""


# ---------------------------------------------------------------- HTTP API


@dataclass(frozen=True)
class CompiledRoute:
    route: Route
    pattern: re.Pattern[str]
    specificity: tuple[int, int]  # literal segments first, greedy last: API Gateway's precedence

    @classmethod
    def of(cls, route: Route) -> CompiledRoute:
        parts, literals, greedy = [], 0, 0
        for segment in route.path.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("+}"):
                parts.append(f"(?P<{segment[1:-2]}>.+)")
                greedy += 1
            elif segment.startswith("{") and segment.endswith("}"):
                parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
            else:
                parts.append(re.escape(segment))
                literals += 1
        return cls(route, re.compile("^/" + "/".join(parts) + "$"), (-greedy, literals))


class HttpApi:
    """A WSGI app that plays API Gateway HTTP API in front of the route's function."""

    def __init__(self, stack: Stack, invokers: dict[str, Invoker], api_id: str, tenants: Tenants):
        self._tenants = tenants
        self._routes = sorted((CompiledRoute.of(r) for r in stack.routes), key=lambda c: c.specificity, reverse=True)
        self._invokers = invokers
        self._api_id = api_id
        self._account_id = stack.account_id
        self.requests = 0  # what API Gateway bills (the cost model reads it); served by many threads: under _count
        self._count = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self._count:
            self.requests += 1
        return self._respond(Request(environ))(environ, start_response)

    def _respond(self, request: Request) -> Response:
        started = time.monotonic()
        response = self._route(request)
        log.log(_log_level(request, response), "%s %s -> %d (%.0f ms)", request.method,
                request.full_path.rstrip("?"), response.status_code, (time.monotonic() - started) * 1000)
        return response

    def _route(self, request: Request) -> Response:
        matched = self._match(request.method, request.path)
        if matched is None:
            return _json(404, {"message": "Not Found"})  # what API Gateway answers for no route
        route, path_parameters = matched
        event = self._event(request, route, path_parameters)
        if route.iam:
            authorizer = self._tenants.authorizer(request.headers.get("Authorization"))
            if authorizer is None:  # API Gateway refuses an unsigned request before any function runs
                return _json(403, {"message": "Forbidden: send Authorization: Bearer <token> (a token of the "
                                              "stack's tenants, in its stack.json)"})
            event["requestContext"]["authorizer"] = authorizer
        try:
            result = self._invokers[route.function](event, wait=THROTTLE_AFTER_S)
        except Throttled:
            # API Gateway's answer when the function's concurrency is used up: the caller retries later.
            # Without it, requests queue behind a busy function without bound, and retries pile up.
            return _json(429, {"message": "Too Many Requests"})
        except Exception:
            log.error("%s %s: %s raised\n%s", request.method, request.path, route.function, traceback.format_exc())
            return _json(500, {"message": "Internal Server Error"})
        return _response(result)

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for compiled in self._routes:
            if compiled.route.method not in (method, "ANY"):
                continue
            found = compiled.pattern.match(path)
            if found:
                return compiled.route, found.groupdict()
        return None

    def _event(self, request: Request, route: Route, path_parameters: dict[str, str]) -> dict[str, Any]:
        body = request.get_data()
        try:
            text, encoded = body.decode(), False
        except UnicodeDecodeError:
            text, encoded = base64.b64encode(body).decode(), True
        now = datetime.now(UTC)
        route_key = f"{route.method} {route.path}" if route.method != "ANY" else f"ANY {route.path}"
        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": request.path,
            "rawQueryString": request.query_string.decode(),
            "headers": {name.lower(): value for name, value in request.headers.items() if name.lower() != "cookie"},
            "requestContext": {
                "accountId": self._account_id,
                "apiId": self._api_id,
                "domainName": request.host,
                "domainPrefix": request.host.split(".")[0],
                "http": {
                    "method": request.method, "path": request.path, "protocol": request.environ["SERVER_PROTOCOL"],
                    "sourceIp": request.remote_addr or "127.0.0.1", "userAgent": request.user_agent.string,
                },
                "requestId": str(uuid.uuid4()),
                "routeKey": route_key,
                "stage": "$default",
                "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "timeEpoch": int(now.timestamp() * 1000),
            },
            "body": text if body else None,
            "isBase64Encoded": encoded,
        }
        if request.cookies:
            event["cookies"] = [f"{k}={v}" for k, v in request.cookies.items(multi=True)]
        if request.args:
            event["queryStringParameters"] = {k: ",".join(request.args.getlist(k)) for k in request.args}
        if path_parameters:
            event["pathParameters"] = path_parameters
        return event


class LambdaApi:
    """A WSGI app that plays Lambda's Invoke API (RequestResponse) for the template's functions, as the
    Step Functions `lambda:invoke` integration calls it. A handler that raises answers as Lambda does:
    200 with `X-Amz-Function-Error: Unhandled` and the error as the payload.
    `GET /_spillway/usage` answers what the runtime has served (`Runtime.usage`), for the cost model."""

    _PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
    USAGE_PATH = "/_spillway/usage"

    def __init__(self, invokers: dict[str, Invoker], usage: Callable[[], dict[str, Any]] | None = None):
        self._invokers = invokers
        self._usage = usage

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self._respond(Request(environ))(environ, start_response)

    def _respond(self, request: Request) -> Response:
        if request.path == self.USAGE_PATH and self._usage is not None:
            return _json(200, self._usage())
        found = self._PATH.match(request.path)
        invoker = self._find(found.group("name")) if found and request.method == "POST" else None
        if invoker is None:
            response = _json(404, {"Type": "User", "message": f"Function not found: {request.path}"})
            response.headers["x-amzn-ErrorType"] = "ResourceNotFoundException"
            return response
        try:
            result = invoker(json.loads(request.get_data() or b"null"))
        except Exception as exc:
            log.error("%s raised\n%s", invoker.function.logical_id, traceback.format_exc())
            response = _json(200, {"errorMessage": str(exc), "errorType": type(exc).__name__,
                                   "stackTrace": traceback.format_exc().splitlines()})
            response.headers["X-Amz-Function-Error"] = "Unhandled"
            return response
        return _json(200, result)

    def _find(self, name: str) -> Invoker | None:
        for invoker in self._invokers.values():
            function = invoker.function
            if name in (function.name, function.arn, function.logical_id) or name.startswith(function.arn + ":"):
                return invoker
        return None


Listen = int | socket.socket  # a port (0: any free one), or a socket already listening on one (reserve_port)


def serve(host: str, where: Listen, app: Any) -> Any:
    """A threaded keep-alive server of `app` (not yet serving: call `serve_forever`) on a port or a reserved
    socket."""
    if isinstance(where, socket.socket):
        port = where.getsockname()[1]
        server = make_server(host, port, app, threaded=True, request_handler=KeepAliveRequestHandler, fd=where.fileno())
        server.server_name, server.server_port = host, port  # what HTTPServer.server_bind sets, skipped for an fd
        return server
    return make_server(host, where, app, threaded=True, request_handler=KeepAliveRequestHandler)


def serve_lambda_api(invokers: dict[str, Invoker], host: str = "127.0.0.1", port: Listen = 0,
                     usage: Callable[[], dict[str, Any]] | None = None) -> Any:
    """A server (not yet serving: call `serve_forever`) of Lambda's Invoke API for these functions."""
    return serve(host, port, LambdaApi(invokers, usage))


# The agents beat every few seconds: a line for each would bury the rest of `spillway dev`'s output.
_HEARTBEAT_ROUTES = re.compile(r"^/v1/agent/(heartbeat|tasks/[^/]+/heartbeat)$")


def _log_level(request: Request, response: Response) -> int:
    if response.status_code >= 400:
        return logging.WARNING
    return logging.DEBUG if _HEARTBEAT_ROUTES.match(request.path) else logging.INFO


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _response(result: Any) -> Response:
    """A Lambda proxy answer (payload v2) as HTTP; a bare value is a 200 JSON body, as in API Gateway."""
    if not (isinstance(result, dict) and "statusCode" in result):
        return _json(200, result)
    body = result.get("body") or ""
    data = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
    response = Response(data, status=int(result["statusCode"]))
    response.headers.clear()
    for name, value in (result.get("headers") or {}).items():
        response.headers[name] = str(value)
    for name, values in (result.get("multiValueHeaders") or {}).items():
        for value in values:
            response.headers.add(name, str(value))
    for cookie in result.get("cookies") or []:
        response.headers.add("Set-Cookie", cookie)
    response.headers.setdefault("Content-Type", "application/json")
    return response


# ---------------------------------------------------------------- SQS event sources


class QueuePoller:
    """An SQS event source mapping: receive a batch, invoke, delete what succeeded.

    As Lambda's pollers do, it keeps receiving while earlier batches are being handled, up to the
    function's concurrency in batches at once: a backlog drains into the function's containers, not
    through one batch at a time (which would also make the queue's order the order work is taken in).
    One thread receives, so two receives never race on one queue.
    """

    MAX_PER_RECEIVE = 10

    def __init__(self, source: QueueSource, invoker: Invoker, sqs: Any, region: str, wait_seconds: int = 20):
        self._source = source
        self._invoke = invoker
        self._sqs = sqs
        self._region = region
        self._wait_seconds = wait_seconds
        self.deliveries = 0  # receives that brought messages: what an event source mapping bills per message

    def run(self, stopping: threading.Event) -> None:
        handling = threading.BoundedSemaphore(self._invoke.concurrency)  # batches received and not yet done
        while not stopping.is_set():
            if not handling.acquire(timeout=1):
                continue
            try:
                batch = self._receive_batch(stopping)
            except Exception:
                handling.release()
                if stopping.is_set():
                    return  # moto is going away under us
                log.error("poller for %s: %s", self._source.queue_arn, traceback.format_exc())
                stopping.wait(1)
                continue
            if not batch:
                handling.release()
                continue
            threading.Thread(target=self._process_then_release, args=(batch, handling), daemon=True,
                             name=f"{threading.current_thread().name}-batch").start()
        for _ in range(self._invoke.concurrency):  # stopped: the batches under way end first
            handling.acquire(timeout=10)

    def _process_then_release(self, batch: list[dict[str, Any]], handling: threading.BoundedSemaphore) -> None:
        try:
            self._process(batch)
        except Exception:  # deleting failed (moto going away): the messages come back after their timeout
            log.error("poller for %s: %s", self._source.queue_arn, traceback.format_exc())
        finally:
            handling.release()

    def poll_once(self, stopping: threading.Event) -> int:
        """Receive one batch and handle it, in this thread (one step of `run`, which hands each batch to a
        thread of its own); the number of messages it held."""
        batch = self._receive_batch(stopping)
        if batch:
            self._process(batch)
        return len(batch)

    def _receive_batch(self, stopping: threading.Event) -> list[dict[str, Any]]:
        """Up to batch_size messages; with a batching window, wait for more until it closes."""
        source = self._source
        batch: list[dict[str, Any]] = []
        window_ends = time.monotonic() + source.batching_window_s
        while not stopping.is_set():
            received = self._sqs.receive_message(
                QueueUrl=source.queue_url,
                MaxNumberOfMessages=min(self.MAX_PER_RECEIVE, source.batch_size - len(batch)),
                WaitTimeSeconds=0 if batch else self._wait_seconds,
                AttributeNames=["All"], MessageAttributeNames=["All"],
            ).get("Messages", [])
            self.deliveries += bool(received)
            if received and not batch:
                window_ends = time.monotonic() + source.batching_window_s  # the window opens with the first
            batch += received
            if len(batch) >= source.batch_size or source.batching_window_s == 0:
                break
            if batch and time.monotonic() >= window_ends:
                break
            if batch and not received:
                stopping.wait(0.1)
        return batch

    def _process(self, batch: list[dict[str, Any]]) -> None:
        event = {"Records": [self._record(m) for m in batch]}
        try:
            result = self._invoke(event)
        except Exception:
            log.error("%s raised on a batch of %d; every message returns after its visibility timeout\n%s",
                      self._invoke.function.logical_id, len(batch), traceback.format_exc())
            return
        failed = self._failed_ids(result, batch)
        done = [m for m in batch if m["MessageId"] not in failed]
        for start in range(0, len(done), self.MAX_PER_RECEIVE):
            chunk = done[start:start + self.MAX_PER_RECEIVE]
            self._sqs.delete_message_batch(
                QueueUrl=self._source.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )

    def _failed_ids(self, result: Any, batch: list[dict[str, Any]]) -> set[str]:
        if not self._source.report_batch_item_failures or not isinstance(result, dict):
            return set()
        ids = {m["MessageId"] for m in batch}
        failed = {f.get("itemIdentifier") for f in result.get("batchItemFailures") or []}
        if failed - ids:  # Lambda treats an empty or unknown identifier as the whole batch failing
            return ids
        return failed  # type: ignore[return-value]

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": {
                name: {
                    "stringValue": value.get("StringValue"), "binaryValue": value.get("BinaryValue"),
                    "stringListValues": [], "binaryListValues": [], "dataType": value["DataType"],
                }
                for name, value in message.get("MessageAttributes", {}).items()
            },
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": self._source.queue_arn,
            "awsRegion": self._region,
        }


# ---------------------------------------------------------------- schedules

_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def rate_seconds(expression: str) -> int:
    found = _RATE.match(expression.strip())
    if not found:
        raise NotImplementedError(f"only rate(...) schedules run offline, not {expression!r}")
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2).rstrip("s")]


class Scheduler:
    def __init__(self, schedule: Schedule, invoker: Invoker, region: str, account_id: str):
        self._schedule = schedule
        self._invoke = invoker
        self._period = rate_seconds(schedule.expression)
        self._region = region
        self._account_id = account_id

    def run(self, stopping: threading.Event) -> None:
        while not stopping.wait(self._period):
            try:
                self._invoke(self._event())
            except Exception:
                log.error("scheduled %s raised\n%s", self._invoke.function.logical_id, traceback.format_exc())

    def _event(self) -> dict[str, Any]:
        if self._schedule.input is not None:
            return json.loads(self._schedule.input)
        return {
            "version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
            "account": self._account_id, "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self._region, "resources": [], "detail": {},
        }


# ---------------------------------------------------------------- the runtime


class Runtime:
    def __init__(self, stack: Stack, *, endpoint_url: str, region: str, tenants: Tenants, api_port: Listen = 0,
                 lambda_port: Listen = 0, host: str = "127.0.0.1", concurrency: int = CONCURRENCY):
        self._stack = stack
        self._concurrency = concurrency
        self._tenants = tenants
        self._lambda_port = lambda_port
        self._endpoint_url = endpoint_url
        self._region = region
        self._host = host
        self._api_port = api_port
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._lambda_server: Any = None
        self.invokers: dict[str, Invoker] = {}
        self._pollers: list[QueuePoller] = []
        self._http_api: HttpApi | None = None

    def usage(self) -> dict[str, Any]:
        """What this runtime has served so far, as AWS would bill it: per function its invocations, seconds
        and memory; the HTTP API's requests; the event source mappings' receives that brought messages."""
        return {
            "lambda": {name: {"invocations": i.invocations, "seconds": i.seconds, "memory_mb": i.function.memory_mb,
                              "containers": i.containers}
                       for name, i in self.invokers.items()},
            "api_requests": self._http_api.requests if self._http_api else 0,
            "sqs_deliveries": sum(p.deliveries for p in self._pollers),
        }

    @property
    def api_url(self) -> str:
        return f"http://{self._host}:{self._server.server_port}"

    @property
    def lambda_url(self) -> str:
        return f"http://{self._host}:{self._lambda_server.server_port}"

    def start(self) -> None:
        # What Lambda gives every function: its variables from the template, credentials, region.
        # boto3 honours AWS_ENDPOINT_URL, so the handlers reach moto with no special code.
        os.environ.update(self._stack.environment())
        os.environ.update({
            "AWS_ENDPOINT_URL": self._endpoint_url, "AWS_REGION": self._region, "AWS_DEFAULT_REGION": self._region,
            "POWERTOOLS_TRACE_DISABLED": "true",  # there is no X-Ray daemon offline
        })
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        account = self._stack.account_id
        self.invokers = {name: Invoker(f, self._region, account, f.reserved_concurrency or self._concurrency)
                         for name, f in self._stack.functions.items()}

        api_id = next((v for (_, name), v in self._stack.attributes.items() if name == "ApiId"), "local")
        self._http_api = HttpApi(self._stack, self.invokers, api_id, self._tenants)
        self._server = serve(self._host, self._api_port, self._http_api)
        self._spawn("http-api", self._server.serve_forever)
        self._lambda_server = serve_lambda_api(self.invokers, self._host, self._lambda_port, self.usage)
        self._spawn("lambda-api", self._lambda_server.serve_forever)

        sqs = boto3.client("sqs", endpoint_url=self._endpoint_url, region_name=self._region)
        for source in self._stack.queue_sources:
            if source.enabled:
                poller = QueuePoller(source, self.invokers[source.function], sqs, self._region)
                self._pollers.append(poller)
                self._spawn(f"sqs-{source.queue_arn.rsplit(':', 1)[1]}", poller.run, self._stopping)
        for schedule in self._stack.schedules:
            scheduler = Scheduler(schedule, self.invokers[schedule.function], self._region, account)
            self._spawn(f"schedule-{schedule.function}", scheduler.run, self._stopping)
        log.info("runtime up: %d routes on %s, %d queue sources, %d schedules; IAM is not enforced offline",
                 len(self._stack.routes), self.api_url, len(self._stack.queue_sources), len(self._stack.schedules))

    def stop(self) -> None:
        self._stopping.set()
        for server in (self._server, self._lambda_server):
            if server is not None:
                server.shutdown()
        # An invocation under way finishes; the threads are daemons: a poller blocked in a long poll
        # (20 s, as Lambda's event source mappings poll) ends with moto.
        deadline = time.monotonic() + 10
        for invoker in self.invokers.values():
            invoker.wait_idle(timeout=max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
