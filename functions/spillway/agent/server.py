"""The agent beside one GPU: takes tasks over HTTP, runs the model, stores results, reports back.

The control plane pushes a task (an unguessable task id, its secret and two presigned URLs, never a
task token), signed with this agent's secret (Standard Webhooks headers): the agent takes it only
if the signature holds, the message is recent and not seen before (a replay), and both URLs are in
its storage (`storage_url`: no fetching or writing anywhere else on a sender's say). It answers at
once and works on a thread: fetch the input, run the model while beating, upload the output, report
the outcome, retried until the control plane has it. Every report presents the agent's credential
(`Bearer <gpu_id>.<secret>`), and a task's the task's secret. A fleet heartbeat tells the control plane
what runs here; the GPU's pool and URL are its enrollment's.

On SIGTERM it drains: refuses new tasks, says so in a heartbeat, lets running tasks finish for a
while, and gives back what is still running (failed with `Draining`) so the jobs move on at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from spillway import signing
from spillway.agent import model
from spillway.catalog import GPU_COMPUTE, SERVICES
from spillway.credentials import TASK_SECRET_HEADER, bearer
from spillway.models import (
    AgentCancel,
    AgentTask,
    AgentTaskAccepted,
    ErrorType,
    FleetHeartbeat,
    TaskHeartbeat,
    TaskResult,
)

log = logging.getLogger("spillway.agent")
# The job a thread works for: each line it logs names it (JobFilter), so a job's story reads across the
# control plane's logs and the agents' with one filter on its id.
current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_job", default=None)


class JobFilter(logging.Filter):
    """Gives every record `job`: `job_id=... ` on a task's thread, else nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = current_job.get()
        record.job = f"job_id={job_id} " if job_id else ""
        return True

CONTROL_TIMEOUT = httpx.Timeout(connect=2.0, read=10.0, write=10.0, pool=2.0)
TRANSFER_TIMEOUT = httpx.Timeout(connect=2.0, read=30.0, write=30.0, pool=2.0)
MAX_REQUEST_BYTES = 64 * 1024
LINGER_S = 1.0  # after refusing a body unread: how long its bytes are drained before the socket closes
LINGER_BYTES = 4 * 1024 * 1024
REMEMBERED_TASKS = 1000  # finished tasks kept to answer a re-push idempotently
_CANCEL_PATH = re.compile(r"/v1/tasks/(t-[0-9a-f]{32})/cancel")


@dataclass(frozen=True)
class AgentConfig:
    gpu_id: str
    vram_mb: int
    control_url: str
    secret: str = field(repr=False)  # this agent's (`spillway fleet enroll`): its credential, and pushes' signing key
    storage_url: str  # the one place inputs come from and results go: the images bucket's URL
    listen: tuple[str, int] = ("127.0.0.1", 9000)
    slots: int = 2
    compute: int = GPU_COMPUTE  # SM% of a reference GPU
    heartbeat_interval_s: float = 5.0
    drain_timeout_s: float = 30.0
    report_deadline_s: float = 600.0  # keep retrying a result this long
    ready_file: Path | None = None


@dataclass
class TaskRun:
    task: AgentTask
    state: str = "accepted"  # accepted -> running -> succeeded | failed | cancelled
    moved_on: threading.Event = field(default_factory=threading.Event)  # the control plane let it go
    done: threading.Event = field(default_factory=threading.Event)  # the model and the upload are over
    settled: threading.Event = field(default_factory=threading.Event)  # ... and the outcome is reported (or moot)

    def view(self) -> AgentTaskAccepted:
        return AgentTaskAccepted(task_id=self.task.task_id, state=self.state)  # type: ignore[arg-type]


class Refused(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class SeenMessages:
    """The ids of the signed messages taken within the replay window: one seen again is a replay."""

    def __init__(self, window_s: float = signing.TOLERANCE_SECONDS):
        self._window_s = window_s
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, msg_id: str, now: float) -> bool:
        with self._lock:
            while self._expiry and next(iter(self._expiry.values())) < now:
                self._expiry.popitem(last=False)  # older than the window: its timestamp is refused anyway
            if msg_id in self._expiry:
                return False
            self._expiry[msg_id] = now + 2 * self._window_s  # the window each way around its timestamp
            return True


def in_storage(url: str, storage: httpx.URL) -> bool:
    """The URL is in the storage's origin and under its path, with no `..` to climb out of it."""
    candidate = httpx.URL(url)
    segments = candidate.raw_path.split(b"?")[0].split(b"/")
    return ((candidate.scheme, candidate.host, candidate.port) == (storage.scheme, storage.host, storage.port)
            and candidate.path.startswith(storage.path)
            and not any(s in (b"..", b".") or s.lower().startswith(b"%2e") for s in segments))


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        run_model: Callable[[str, bytes], bytes] = model.run,
        wait: Callable[[float], None] | None = None,
        model_not_ready: Callable[[], str | None] = lambda: None,
    ):
        self.config = config
        self._run_model = run_model
        self._model_not_ready = model_not_ready  # the model server's own readiness: None when ready, else why
        self._wait = wait or (lambda seconds: self._stopped.wait(seconds))
        self._http = httpx.Client(timeout=CONTROL_TIMEOUT,
                                  headers={"Authorization": bearer(config.gpu_id, config.secret)})
        self._transfers = httpx.Client(timeout=TRANSFER_TIMEOUT)  # presigned URLs: no credential
        self._signing_key = signing.secret_bytes(config.secret)
        self._storage = httpx.URL(config.storage_url.rstrip("/") + "/")
        self._seen = SeenMessages()
        self._lock = threading.Lock()
        self._tasks: OrderedDict[str, TaskRun] = OrderedDict()
        self._draining = threading.Event()
        self._registered = threading.Event()
        self._stopping = threading.Event()  # stops the fleet heartbeat
        self._stopped = threading.Event()  # everything is over: retries give up waiting
        self._server: ThreadingHTTPServer | None = None
        self._service_threads: list[threading.Thread] = []  # the HTTP server and the fleet heartbeat

    # ---- lifecycle

    @property
    def listen_url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._server = ThreadingHTTPServer(self.config.listen, _handler_for(self))
        self._server.daemon_threads = True
        self._service_threads.append(self._spawn("http", self._server.serve_forever, 0.1))  # prompt shutdown
        if self.config.ready_file:
            write_atomically(self.config.ready_file,
                             {"gpu_id": self.config.gpu_id, "listen_url": self.listen_url, "pid": os.getpid()})
        self._service_threads.append(self._spawn("fleet-heartbeat", self._beat_fleet))
        log.info("%s serving on %s", self.config.gpu_id, self.listen_url)

    def drain_and_stop(self) -> None:
        """Refuse new work, let running tasks finish for a while, give back the rest, stop."""
        if self._draining.is_set():
            return
        self._draining.set()
        self.beat()  # the control plane stops leasing this GPU now, not at the next tick
        deadline = time.monotonic() + self.config.drain_timeout_s
        for run in self._unsettled():
            run.settled.wait(max(0.0, deadline - time.monotonic()))
        for run in self._running():
            log.warning("giving back %s: still running after the drain timeout", run.task.task_id)
            run.moved_on.set()  # its worker must neither upload nor report now
            self._report(run, "failed", ErrorType.DRAINING, "the agent shut down before the task finished", 0)
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._stopped.set()
        for thread in self._service_threads:
            thread.join(timeout=5)
        if not self._unsettled():  # a model still busy would find its clients closed under it
            self._http.close()
            self._transfers.close()

    # ---- what the HTTP routes call

    def verify(self, headers: Any, body: bytes) -> None:
        """Only the control plane sends: the message must be signed with this agent's secret, recent, and new."""
        now = time.time()
        try:
            msg_id = signing.verify([self._signing_key], headers, body, now)
        except signing.BadSignature as bad:
            raise Refused(HTTPStatus.UNAUTHORIZED, f"not signed by the control plane: {bad}") from None
        if not self._seen.first_time(msg_id, now):
            raise Refused(HTTPStatus.UNAUTHORIZED, f"message {msg_id} was taken already: a replay")

    def may_ask(self, headers: Any) -> bool:
        """Who may see readiness: the control plane (a signed probe) or whoever holds this agent's credential."""
        presented = (headers.get("Authorization") or "").encode()
        if hmac.compare_digest(presented, bearer(self.config.gpu_id, self.config.secret).encode()):
            return True
        try:
            self.verify(headers, b"")
        except Refused:
            return False
        return True

    def submit(self, task: AgentTask) -> tuple[HTTPStatus, AgentTaskAccepted]:
        for url in (task.input_url, task.output_url):
            if not in_storage(str(url), self._storage):
                raise Refused(HTTPStatus.UNPROCESSABLE_ENTITY, f"{url.scheme}://{url.host}:{url.port}{url.path} "
                              f"is not in this agent's storage ({self._storage}): refused")
        if task.service not in SERVICES:
            raise Refused(HTTPStatus.UNPROCESSABLE_ENTITY, f"this GPU does not run {task.service!r}")
        with self._lock:
            known = self._tasks.get(task.task_id)
            if known is not None:
                return HTTPStatus.OK, known.view()  # a re-push: never run a task twice
            if self._draining.is_set():
                raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, "draining: this agent is shutting down")
            running = len(self._busy())
            if running >= self.config.slots:
                raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, f"all {self.config.slots} slots are busy")
            run = TaskRun(task)
            self._tasks[task.task_id] = run
            while len(self._tasks) > REMEMBERED_TASKS:
                oldest = next(iter(self._tasks.values()))
                if not oldest.done.is_set():
                    break
                self._tasks.popitem(last=False)
        accepted = run.view()  # before the worker moves it on
        self._spawn(f"task-{task.task_id[:10]}", self._work, run)
        return HTTPStatus.ACCEPTED, accepted

    def cancel(self, task_id: str) -> AgentTaskAccepted | None:
        """The control plane cancelled the task: drop it — its slot is free at once, nothing is uploaded or
        reported. A model call already under way runs to its end (the v2 protocol has no cancel); its output is
        thrown away. None: no such task here."""
        run = self.task(task_id)
        if run is None:
            return None
        if not run.done.is_set():
            run.moved_on.set()
            run.state = "cancelled"
            log.info("%s: cancelled by the control plane", task_id)
        return run.view()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            free = self.config.slots - len(self._busy())
        if self._draining.is_set():
            return False, {"status": "draining"}
        if problem := self._model_not_ready():
            return False, {"status": f"the model server is not ready: {problem}"}
        if not self._registered.is_set():
            return False, {"status": "not registered with the control plane yet"}
        return True, {"status": "ready", "free_slots": free}

    # ---- fleet heartbeat

    def beat(self) -> bool:
        heartbeat = FleetHeartbeat(
            gpu_id=self.config.gpu_id, vram_total_mb=self.config.vram_mb, compute=self.config.compute,
            slots=self.config.slots,
            services=list(SERVICES), running=[r.task.task_id for r in self._unsettled() if not r.moved_on.is_set()],
            draining=self._draining.is_set(), not_ready=self._model_not_ready(),
        )
        try:
            self._control("/v1/agent/heartbeat", heartbeat.model_dump_json()).raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("fleet heartbeat failed: %r", exc)
            return False
        log.debug("fleet heartbeat: %d running%s", len(heartbeat.running), ", draining" if heartbeat.draining else "")
        self._registered.set()
        return True

    def _beat_fleet(self) -> None:
        while not self._stopping.is_set():
            self.beat()
            self._stopping.wait(self.config.heartbeat_interval_s)

    # ---- one task

    def _work(self, run: TaskRun) -> None:
        task, started = run.task, time.monotonic()
        current_job.set(task.job_id)  # this thread is the task's
        run.state = "running"
        beating = threading.Thread(target=self._beat_task, args=(run,), name=f"beat-{task.task_id[:10]}", daemon=True)
        beating.start()
        try:
            try:
                outcome, error, message = self._execute(run)
            except Exception as exc:  # a bug here must still answer the attempt, not leave it to time out
                log.exception("%s: the agent failed running the task", task.task_id)
                outcome, error, message = "failed", ErrorType.MODEL_ERROR, f"agent error: {exc!r}"[:2000]
            finally:
                run.done.set()
            if run.moved_on.is_set():
                log.info("%s: the attempt moved on; dropping its result", task.task_id)
                return
            self._report(run, outcome, error, message, int((time.monotonic() - started) * 1000))
        finally:
            run.settled.set()

    def _execute(self, run: TaskRun) -> tuple[str, ErrorType | None, str | None]:
        task = run.task
        if run.moved_on.is_set():  # cancelled before it started: nothing to fetch or run
            return "failed", None, None
        try:
            response = self._transfers.get(str(task.input_url))
            response.raise_for_status()
        except httpx.HTTPError as exc:
            return "failed", ErrorType.INPUT_UNAVAILABLE, f"could not fetch the input: {exc!r}"[:2000]
        try:
            output = self._run_model(task.service, response.content)
        except model.BadImage as exc:
            return "failed", ErrorType.BAD_INPUT, str(exc)[:2000]
        except Exception as exc:  # the model crashed here; another GPU may do it
            log.exception("%s: the model failed", task.task_id)
            return "failed", ErrorType.MODEL_ERROR, repr(exc)[:2000]
        if run.moved_on.is_set():
            return "failed", None, None
        try:
            self._transfers.put(str(task.output_url), content=output,
                                headers={"Content-Type": "image/png"}).raise_for_status()
        except httpx.HTTPError as exc:
            return "failed", ErrorType.OUTPUT_UPLOAD, f"could not store the result: {exc!r}"[:2000]
        return "succeeded", None, None

    def _beat_task(self, run: TaskRun) -> None:
        current_job.set(run.task.job_id)
        beat = TaskHeartbeat(gpu_id=self.config.gpu_id).model_dump_json()
        # The first beat is one interval in: the push's answer started the task's liveness clock, so a task
        # shorter than that costs no callback but its result.
        while not (run.done.wait(run.task.heartbeat_interval_s) or run.moved_on.is_set() or self._stopped.is_set()):
            try:
                response = self._control(f"/v1/agent/tasks/{run.task.task_id}/heartbeat", beat, run.task)
                if not response.is_success:
                    log.warning("%s: task heartbeat answered %s %s", run.task.task_id, response.status_code,
                                response.text[:500])
                elif response.json().get("current") is False:
                    run.moved_on.set()
                    return
                else:
                    log.debug("%s: task heartbeat", run.task.task_id)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("%s: task heartbeat failed: %r", run.task.task_id, exc)

    def _report(self, run: TaskRun, outcome: str, error: ErrorType | None, message: str | None,
                duration_ms: int) -> None:
        """Deliver the outcome, retrying until the control plane has it (its answer is idempotent)."""
        run.state = outcome
        result = TaskResult(gpu_id=self.config.gpu_id, outcome=outcome, error_type=error,  # type: ignore[arg-type]
                            message=message, duration_ms=duration_ms).model_dump_json()
        deadline, backoff = time.monotonic() + self.config.report_deadline_s, 0.2
        while True:
            try:
                response = self._control(f"/v1/agent/tasks/{run.task.task_id}/result", result, run.task)
                if response.is_success:
                    log.info("%s %s%s", run.task.task_id, outcome, f" ({error.value})" if error else "")
                    return
                if response.status_code != 429 and response.status_code < 500:
                    log.error("%s: the control plane refused the result: %s %s", run.task.task_id,
                              response.status_code, response.text[:500])
                    return
                problem = f"answered {response.status_code}"
            except httpx.HTTPError as exc:
                problem = repr(exc)
            if time.monotonic() + backoff > deadline or self._stopped.is_set():
                log.error("%s: gave up reporting %s after %.0fs: %s", run.task.task_id, outcome,
                          self.config.report_deadline_s, problem)
                return
            log.warning("%s: reporting failed (%s); again in %.1fs", run.task.task_id, problem, backoff)
            self._wait(backoff)
            backoff = min(backoff * 2, 5.0)

    # ---- plumbing

    def _control(self, path: str, body: str, task: AgentTask | None = None) -> httpx.Response:
        """A report to the control plane, with the task's secret when it is about a task."""
        headers = {"Content-Type": "application/json"} | ({TASK_SECRET_HEADER: task.task_secret} if task else {})
        return self._http.post(f"{self.config.control_url.rstrip('/')}{path}", content=body, headers=headers)

    def _running(self) -> list[TaskRun]:
        with self._lock:
            return [r for r in self._tasks.values() if not r.done.is_set()]

    def _busy(self) -> list[TaskRun]:
        """Runs that hold a slot: running, and not let go by the control plane (a cancelled run's model may
        still be finishing, its output to be thrown away). Under the lock."""
        return [r for r in self._tasks.values() if not (r.done.is_set() or r.moved_on.is_set())]

    def _unsettled(self) -> list[TaskRun]:
        with self._lock:
            return [r for r in self._tasks.values() if not r.settled.is_set()]

    def task(self, task_id: str) -> TaskRun | None:
        with self._lock:
            return self._tasks.get(task_id)

    @staticmethod
    def _spawn(name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread


def _handler_for(agent: Agent) -> type[BaseHTTPRequestHandler]:
    class AgentHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the pollers reuse their connection
        # The headers and the body go out in two writes: with Nagle, the body waits for the client's
        # delayed ACK of the headers, ~40 ms on every request of a reused connection.
        disable_nagle_algorithm = True
        _unread: int | None = 0  # body bytes of the current request not read yet; None: unknown (no usable length)

        def handle(self) -> None:
            try:
                super().handle()
            except ConnectionError as gone:  # e.g. the tunnel was cut: not worth socketserver's traceback
                log.debug("%s: connection lost: %r", self.address_string(), gone)

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            self._unread = _declared_length(self.headers)
            return True

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/healthz":
                self._answer(HTTPStatus.OK, {"status": "ok", "gpu_id": agent.config.gpu_id})
            elif self.path == "/readyz":
                if not agent.may_ask(self.headers):
                    self._answer(HTTPStatus.UNAUTHORIZED, {"message": "sign the probe, or present this agent's "
                                                                      "credential"})
                    return
                ready, body = agent.readiness()
                self._answer(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, body)
            else:
                self._answer(HTTPStatus.NOT_FOUND, {"message": f"no route GET {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            cancel = _CANCEL_PATH.fullmatch(self.path)
            if self.path != "/v1/tasks" and cancel is None:
                self._answer(HTTPStatus.NOT_FOUND, {"message": f"no route POST {self.path}"})
                return
            if not self.headers.get(signing.SIGNATURE):  # not worth reading the body of
                self._answer(HTTPStatus.UNAUTHORIZED, {"message": "a task must be signed by the control plane"})
                return
            if self._unread is None:
                self._answer(HTTPStatus.LENGTH_REQUIRED, {"message": "send the task with a Content-Length"})
                return
            if self._unread > MAX_REQUEST_BYTES:
                self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"message": "a task is a small JSON document"})
                return
            body, self._unread = self.rfile.read(self._unread), 0
            try:
                agent.verify(self.headers, body)  # only the control plane pushes, and each push once
                if cancel is not None:  # the signature covers the body, not the path: the body names the task
                    if AgentCancel.model_validate_json(body).task_id != cancel.group(1):
                        raise Refused(HTTPStatus.UNPROCESSABLE_ENTITY, "the cancel's body names another task")
                    cancelled = agent.cancel(cancel.group(1))
                    if cancelled is None:
                        self._answer(HTTPStatus.NOT_FOUND, {"message": "no such task here"})
                    else:
                        self._answer(HTTPStatus.OK, cancelled.model_dump(mode="json"))
                    return
                task = AgentTask.model_validate_json(body)
                status, accepted = agent.submit(task)
            except ValidationError as invalid:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in invalid.errors())
                self._answer(HTTPStatus.UNPROCESSABLE_ENTITY, {"message": f"invalid task: {problems}"})
                return
            except Refused as refused:
                self._answer(refused.status, {"message": str(refused)})
                return
            self._answer(status, accepted.model_dump(mode="json"))

        def _answer(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            """Answer, first skipping what is left of the request's body, so the next request on this
            connection is parsed from its start; a body too big to skip (or of unknown length) closes it."""
            if self._unread is not None and self._unread <= MAX_REQUEST_BYTES:
                self.rfile.read(self._unread)
                self._unread = 0
            else:
                self.close_connection = True
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def finish(self) -> None:
            super().finish()
            if self._unread != 0:  # closing with a body unread (here, or in http.server's own errors, e.g. 501)
                _drain_and_close(self.connection)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            log.debug("%s %s", self.address_string(), format % args)

    return AgentHandler


def _declared_length(headers: Any) -> int | None:
    """The request body's length, 0 without one; None when it cannot be skipped by counting (chunked, malformed)."""
    if headers.get("Transfer-Encoding"):
        return None
    try:
        length = int(headers.get("Content-Length") or 0)
    except ValueError:
        return None
    return length if length >= 0 else None


def _drain_and_close(connection: socket.socket) -> None:
    """Send FIN after the answer, then read what the client still sends (bounded) before closing.

    Closing a socket with unread bytes sends a reset, and a reset can make the client drop the
    answer it has not read yet: it would see 'connection reset' instead of the 413.
    """
    deadline, drained = time.monotonic() + LINGER_S, 0
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_WR)
        while drained < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            chunk = connection.recv(65536)
            if not chunk:
                break
            drained += len(chunk)
    with contextlib.suppress(OSError):
        connection.close()


def write_atomically(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, path)  # readers never see half a file
