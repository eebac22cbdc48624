"""A stand-in for the pay-per-request GPU service (FaaS), speaking RunPod serverless's async API.

It runs as its own process (`python -m spillway_embedded.faas_provider`, the API key in
`SPILLWAY_FAAS_API_KEY`), as the agents do, and its workers run the same model code as the agents.
The shapes follow RunPod's queue-based endpoints (docs.runpod.io/serverless/endpoints/operation-reference,
.../send-requests, .../job-states, .../serverless/pricing):

    POST /v2/{endpoint_id}/run          {"input": {...}, "webhook": "https://...", "policy": {"executionTimeout": ms}}
                                        -> 200 {"id": "...", "status": "IN_QUEUE"}
    GET  /v2/{endpoint_id}/status/{id}  -> 200 {"id", "status", "delayTime", "executionTime", "workerId",
                                                "output" (COMPLETED), "error" (FAILED)}; 404 once unknown
    POST /v2/{endpoint_id}/cancel/{id}  -> 200 the status body (CANCELLED unless it had already ended)
    GET  /v2/{endpoint_id}/health       -> 200 {"jobs": {"completed", "failed", "inProgress", "inQueue", "retried"},
                                                "workers": {"idle", "initializing", "running", "throttled",
                                                            "unhealthy"}}

`status` is IN_QUEUE | IN_PROGRESS | COMPLETED | FAILED | CANCELLED | TIMED_OUT. As on RunPod, fields
appear once known: `workerId` when a worker takes the job, `delayTime` (ms from submit to execution,
a cold start included) once it runs, `executionTime` (ms) once it ended. Every /v2 route needs
`Authorization: Bearer <key>` (or the bare key, as RunPod also takes); errors are `{"error": reason}`
with 400 (bad body), 401 (key), 404 (endpoint or job), 503 (/run refused, see chaos). In /health,
`failed` counts FAILED and TIMED_OUT jobs, `initializing` the workers in a cold start.

Our own extensions, not RunPod's:

    GET  /v2/{endpoint_id}/billing      -> {"endpointId", "pricePerSecondUsd", "billedSeconds", "costUsd",
                                            "jobs": [{"id", "status", "workerId", "coldStart", "coldStartMs",
                                                      "executionMs", "billedSeconds", "costUsd",
                                                      "startedAt", "endedAt"}]}   (epoch ms: when billing ran)
    GET  /chaos                         -> {"mode": "normal"|"slow"|"fail"|"refuse", "slow_seconds": s}
    POST /chaos {"mode": ..., "slow_seconds": s}  (no key: loopback only, like the stack's chaos switchboard)
         slow: each execution takes s longer; fail: every job FAILED "ModelError: injected";
         refuse: /run answers 503, as a throttled or unavailable provider does.

The worker's input (what Spillway sends as "input"):

    {"service": "remove_furniture", "input_url": presigned GET, "output_url": presigned PUT, "task_id": "t-..."}

It downloads the input, runs `spillway.agent.model.run`, PUTs the PNG (Content-Type: image/png) and
outputs {"result_bytes": n}. Errors start with the control plane's error type: `BadInput:` (not an
image, or an input not of this shape), `ModelError:`, `InputUnavailable:`, `OutputUpload:`.

Capacity and money: at most `concurrency` jobs hold a worker; the rest wait IN_QUEUE in arrival
order. A worker idle longer than `idle_seconds` is cold (scaled to zero): its next job first waits
`cold_start_seconds` (still IN_QUEUE, as on RunPod). A job is billed per second, partial seconds
rounded up, from the moment a worker takes it (cold start included) until it ends; a timed-out job
up to its execution timeout, a cancelled one up to the cancel. Unlike RunPod, a worker's idle time
is not billed. When a job ends its status body is POSTed to its webhook, retried twice, 10 s
apart by default (RunPod's documented behaviour); a failed webhook never changes the job.

Not emulated: /runsync, /stream, /retry, /purge-queue, `policy.ttl` (accepted, not enforced),
`s3Config`, rate limits.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from spillway.catalog import SERVICES
from spillway.models import ErrorType
from spillway_embedded.launcher import wait_for_ready_file
from spillway_embedded.serving import KeepAliveRequestHandler

log = logging.getLogger("embedded.faas")

TRANSFER_TIMEOUT = httpx.Timeout(connect=2.0, read=30.0, write=30.0, pool=2.0)  # presigned GET / PUT
WEBHOOK_TIMEOUT = httpx.Timeout(connect=2.0, read=10.0, write=10.0, pool=2.0)
MAX_RUN_BODY_BYTES = 10 * 1024 * 1024  # RunPod's /run payload limit
MAX_ERROR_CHARS = 2000


class JobStatus(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        return self not in (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS)


class ChaosMode(StrEnum):
    NORMAL = "normal"
    SLOW = "slow"  # each execution takes slow_seconds longer
    FAIL = "fail"  # every job fails with ModelError
    REFUSE = "refuse"  # /run answers 503


# ---- the wire: pydantic at the boundary


def _http_url(value: str) -> str:
    """An http(s) URL, kept exactly as given: a presigned or signed URL must not be re-encoded."""
    TypeAdapter(AnyHttpUrl).validate_python(value)
    return value


HttpUrlText = Annotated[str, AfterValidator(_http_url)]


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    executionTimeout: int | None = Field(default=None, gt=0, description="ms; the endpoint's default otherwise")  # noqa: N815 (RunPod's name)
    ttl: int | None = Field(default=None, gt=0, description="ms in the queue; accepted, not enforced here")
    lowPriority: bool = False  # noqa: N815 (accepted; there is no autoscaler here to hold back)


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any]
    webhook: HttpUrlText | None = None
    policy: Policy = Field(default_factory=Policy)


class WorkerInput(BaseModel):
    """What Spillway's worker expects as a job's `input`; checked by the worker, as on RunPod."""

    model_config = ConfigDict(extra="forbid")

    service: str
    input_url: HttpUrlText
    output_url: HttpUrlText
    task_id: str = Field(min_length=1, max_length=200)

    @field_validator("service")
    @classmethod
    def _known(cls, service: str) -> str:
        if service not in SERVICES:
            raise ValueError(f"this worker does not run {service!r}; it runs {sorted(SERVICES)}")
        return service


class Chaos(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: ChaosMode = ChaosMode.NORMAL
    slow_seconds: float = Field(default=0.0, ge=0, le=3600)


def _problems(invalid: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in invalid.errors())


# ---- the endpoint


@dataclass(frozen=True)
class ProviderConfig:
    endpoint_id: str
    api_key: str
    concurrency: int = 30  # workers (RunPod's "max workers")
    cold_start_seconds: float = 2.0
    idle_seconds: float = 60.0  # a worker idle longer than this is scaled to zero: cold again
    price_per_second_usd: float = 0.00076
    execution_timeout_seconds: float = 600.0  # the endpoint's default; RunPod's is 10 min
    min_execution_timeout_ms: int = 5000  # RunPod refuses a policy.executionTimeout at or under 5 s
    webhook_retries: int = 2
    webhook_retry_seconds: float = 10.0
    retention_seconds: float = 1800.0  # a /run job's status is kept 30 min after it ends


@dataclass(eq=False)
class Worker:
    id: str
    job: Job | None = None
    idle_since: float | None = None  # None: never ran, cold

    def is_warm(self, now: float, idle_seconds: float) -> bool:
        return self.idle_since is not None and now - self.idle_since <= idle_seconds


@dataclass(eq=False)
class Job:
    id: str
    input: dict[str, Any]
    webhook: str | None
    timeout_s: float
    queued_at: float
    status: JobStatus = JobStatus.IN_QUEUE
    worker: Worker | None = None
    cold: bool = False
    picked_at: float | None = None  # a worker took it: billing starts (with the cold start, if cold)
    started_at: float | None = None  # IN_PROGRESS
    ended_at: float | None = None
    billed_until: float | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    ended: threading.Event = field(default_factory=threading.Event)  # the worker drops what it was doing

    def view(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "status": self.status.value}
        if self.worker is not None:
            body["workerId"] = self.worker.id
        if self.started_at is not None:
            body["delayTime"] = _ms(self.started_at - self.queued_at)
            if self.billed_until is not None:
                body["executionTime"] = _ms(self.billed_until - self.started_at)
        if self.status is JobStatus.COMPLETED:
            body["output"] = self.output
        if self.status is JobStatus.FAILED:
            body["error"] = self.error
        return body


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class FaasProvider:
    """The endpoint: a queue, `concurrency` workers, a ledger, and the HTTP API over them."""

    def __init__(self, config: ProviderConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._epoch_offset = time.time() - clock()  # ledger times are wall-clock ms
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._workers = [Worker(f"{config.endpoint_id}-w{i:02d}") for i in range(config.concurrency)]
        self._ledger: list[dict[str, Any]] = []
        self._counts = {status: 0 for status in JobStatus if status.is_final}
        self._chaos = Chaos()
        self._stopping = threading.Event()
        self._transfers = httpx.Client(timeout=TRANSFER_TIMEOUT)  # presigned URLs: no key
        self._webhooks = httpx.Client(timeout=WEBHOOK_TIMEOUT)
        self._server: Any = None
        self._routes = Map([
            Rule("/v2/<endpoint_id>/run", methods=["POST"], endpoint="run"),
            Rule("/v2/<endpoint_id>/status/<job_id>", methods=["GET", "POST"], endpoint="status"),
            Rule("/v2/<endpoint_id>/cancel/<job_id>", methods=["POST"], endpoint="cancel"),
            Rule("/v2/<endpoint_id>/health", methods=["GET"], endpoint="health"),
            Rule("/v2/<endpoint_id>/billing", methods=["GET"], endpoint="billing"),
            Rule("/chaos", methods=["GET", "POST"], endpoint="chaos"),
        ])

    # ---- lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = make_server(host, port, self, threaded=True, request_handler=KeepAliveRequestHandler)
        # Polled every 0.1 s: stop() is prompt.
        threading.Thread(target=self._server.serve_forever, args=(0.1,), name="faas-http", daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._stopping.set()  # webhook retries give up
        with self._lock:
            running = [job for job in self._jobs.values() if not job.status.is_final]
        for job in running:
            job.ended.set()  # workers drop their work: nothing is uploaded after the provider stopped
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._transfers.close()
        self._webhooks.close()

    # ---- the operations

    def submit(self, request: RunRequest) -> Job:
        if request.policy.executionTimeout is not None:
            if request.policy.executionTimeout <= self.config.min_execution_timeout_ms:
                raise BadRequest(f"policy.executionTimeout must be over {self.config.min_execution_timeout_ms} ms")
            timeout_s = request.policy.executionTimeout / 1000
        else:
            timeout_s = self.config.execution_timeout_seconds
        now = self._clock()
        job = Job(id=f"{uuid.uuid4()}-u1", input=request.input, webhook=request.webhook, timeout_s=timeout_s,
                  queued_at=now)  # RunPod's ids end in a datacenter suffix
        with self._lock:
            self._forget_expired(now)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._dispatch(now)
        return job

    def status(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.view() if job else None

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return None
        self._finish(job, JobStatus.CANCELLED)  # no-op if it had already ended
        return self.status(job_id)

    def health(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            statuses = [job.status for job in self._jobs.values()]
            busy = [w.job for w in self._workers if w.job is not None]
            return {
                "jobs": {
                    "completed": self._counts[JobStatus.COMPLETED],
                    "failed": self._counts[JobStatus.FAILED] + self._counts[JobStatus.TIMED_OUT],
                    "inProgress": statuses.count(JobStatus.IN_PROGRESS),
                    "inQueue": statuses.count(JobStatus.IN_QUEUE),
                    "retried": 0,
                },
                "workers": {
                    "idle": sum(1 for w in self._workers if w.job is None and w.is_warm(now, self.config.idle_seconds)),
                    "initializing": sum(1 for job in busy if job.status is JobStatus.IN_QUEUE),  # cold starting
                    "running": sum(1 for job in busy if job.status is JobStatus.IN_PROGRESS),
                    "throttled": 0,
                    "unhealthy": 0,
                },
            }

    def billing(self) -> dict[str, Any]:
        with self._lock:
            lines = [dict(line) for line in self._ledger]
        seconds = sum(line["billedSeconds"] for line in lines)
        return {
            "endpointId": self.config.endpoint_id,
            "pricePerSecondUsd": self.config.price_per_second_usd,
            "billedSeconds": seconds,
            "costUsd": self._usd(seconds),
            "jobs": lines,
        }

    @property
    def chaos(self) -> Chaos:
        return self._chaos

    @chaos.setter
    def chaos(self, chaos: Chaos) -> None:
        log.warning("chaos: %s", chaos.model_dump(mode="json"))
        self._chaos = chaos  # read once per execution; a plain swap is atomic

    # ---- scheduling (under the lock)

    def _dispatch(self, now: float) -> None:
        """Give free workers the front of the queue: a warm worker first, the latest idle one (as a
        scaling provider keeps its few busiest workers warm), else a cold one."""
        while self._queue:
            free = [w for w in self._workers if w.job is None]
            if not free:
                return
            warm = [w for w in free if w.is_warm(now, self.config.idle_seconds)]
            worker = max(warm, key=lambda w: w.idle_since or 0.0) if warm else free[0]
            job = self._queue.popleft()
            job.worker, job.cold, job.picked_at, worker.job = worker, not warm, now, job
            threading.Thread(target=self._run, args=(job,), name=f"faas-{job.id[:8]}", daemon=True).start()

    def _forget_expired(self, now: float) -> None:
        for job_id in [j.id for j in self._jobs.values()
                       if j.ended_at is not None and now - j.ended_at > self.config.retention_seconds]:
            del self._jobs[job_id]

    def _finish(self, job: Job, status: JobStatus, output: dict[str, Any] | None = None,
                error: str | None = None) -> bool:
        """End the job once (the first ending wins), bill it, free its worker, call its webhook."""
        with self._lock:
            if job.status.is_final:
                return False
            now = self._clock()
            job.status, job.ended_at, job.output, job.error = status, now, output, error
            job.ended.set()
            if status is JobStatus.TIMED_OUT and job.started_at is not None:
                job.billed_until = job.started_at + job.timeout_s  # killed at the bound, billed up to it
            else:
                job.billed_until = now
            if job.worker is not None:
                self._ledger.append(self._ledger_line(job))
                job.worker.job, job.worker.idle_since = None, now
            else:
                self._queue.remove(job)  # cancelled while it waited: never billed
            self._counts[status] += 1
            self._dispatch(now)
            body = job.view()
        log.info("%s %s%s", job.id, status.value, f": {error}" if error else "")
        if job.webhook:
            threading.Thread(target=self._deliver, args=(job.webhook, body), name=f"webhook-{job.id[:8]}",
                             daemon=True).start()
        return True

    def _ledger_line(self, job: Job) -> dict[str, Any]:
        assert job.picked_at is not None and job.billed_until is not None and job.worker is not None
        seconds = math.ceil(round(job.billed_until - job.picked_at, 3))  # per second, partial seconds rounded up
        cold_until = job.started_at if job.started_at is not None else job.billed_until
        return {
            "id": job.id,
            "status": job.status.value,
            "workerId": job.worker.id,
            "coldStart": job.cold,
            "coldStartMs": _ms(cold_until - job.picked_at) if job.cold else 0,
            "executionMs": _ms(job.billed_until - job.started_at) if job.started_at is not None else 0,
            "billedSeconds": seconds,
            "costUsd": self._usd(seconds),
            "startedAt": round((job.picked_at + self._epoch_offset) * 1000),
            "endedAt": round((job.billed_until + self._epoch_offset) * 1000),
        }

    def _usd(self, seconds: int) -> float:
        return round(seconds * self.config.price_per_second_usd, 8)

    # ---- a worker at work

    def _run(self, job: Job) -> None:
        if job.cold and job.ended.wait(self.config.cold_start_seconds):
            return  # cancelled while its worker started
        with self._lock:
            if job.status.is_final:
                return
            job.status, job.started_at = JobStatus.IN_PROGRESS, self._clock()
        threading.Thread(target=self._execute, args=(job, self._chaos), name=f"exec-{job.id[:8]}", daemon=True).start()
        if not job.ended.wait(job.timeout_s):
            self._finish(job, JobStatus.TIMED_OUT)

    def _execute(self, job: Job, chaos: Chaos) -> None:
        try:
            outcome = self._work(job, chaos)
        except Exception as exc:  # a bug here must still end the job, not leave it to time out
            log.exception("%s: the worker failed", job.id)
            outcome = JobStatus.FAILED, None, _error(ErrorType.MODEL_ERROR, f"worker error: {exc!r}")
        if outcome is not None:
            self._finish(job, *outcome)

    def _work(self, job: Job, chaos: Chaos) -> tuple[JobStatus, dict[str, Any] | None, str | None] | None:
        """The handler, as Spillway would deploy it: fetch, run the model, store. None: the job ended meanwhile."""
        if chaos.mode is ChaosMode.FAIL:
            return JobStatus.FAILED, None, _error(ErrorType.MODEL_ERROR, "injected")
        try:
            task = WorkerInput.model_validate(job.input)
        except ValidationError as invalid:
            return JobStatus.FAILED, None, _error(ErrorType.BAD_INPUT, f"the job's input: {_problems(invalid)}")
        try:
            image = self._transfers.get(task.input_url).raise_for_status().content
        except httpx.HTTPError as exc:
            return JobStatus.FAILED, None, _error(ErrorType.INPUT_UNAVAILABLE, f"could not fetch the input: {exc!r}")
        from spillway.agent import model  # here: the stack imports this module to launch it, and needs no cv2

        try:
            png = model.run(task.service, image)
        except model.BadImage as exc:
            return JobStatus.FAILED, None, _error(ErrorType.BAD_INPUT, str(exc))
        except Exception as exc:  # the model crashed; another GPU may do it
            return JobStatus.FAILED, None, _error(ErrorType.MODEL_ERROR, repr(exc))
        if chaos.mode is ChaosMode.SLOW and job.ended.wait(chaos.slow_seconds):
            return None
        if job.ended.is_set():
            return None  # cancelled or timed out: a job that is over never writes its result
        try:
            self._transfers.put(task.output_url, content=png, headers={"Content-Type": "image/png"}).raise_for_status()
        except httpx.HTTPError as exc:
            return JobStatus.FAILED, None, _error(ErrorType.OUTPUT_UPLOAD, f"could not store the result: {exc!r}")
        return JobStatus.COMPLETED, {"result_bytes": len(png)}, None

    def _deliver(self, url: str, body: dict[str, Any]) -> None:
        """POST the ending to the webhook; a failure is retried, logged, and changes nothing else."""
        for attempt in range(1 + self.config.webhook_retries):
            if attempt and self._stopping.wait(self.config.webhook_retry_seconds):
                return
            try:
                response = self._webhooks.post(url, json=body)
                if response.is_success:
                    return
                problem = f"answered {response.status_code}"
            except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: the client closed under a late retry
                problem = repr(exc)
            log.warning("%s: webhook try %d failed: %s", body["id"], attempt + 1, problem)
        log.error("%s: gave up the webhook after %d tries", body["id"], 1 + self.config.webhook_retries)

    # ---- HTTP

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self._respond(Request(environ))(environ, start_response)

    def _respond(self, request: Request) -> Response:
        try:
            endpoint, args = self._routes.bind_to_environ(request.environ).match()
        except HTTPException as no_route:
            return _json(no_route.code or 404, {"error": f"no route {request.method} {request.path}"})
        if endpoint == "chaos":
            return self._chaos_route(request)
        presented = (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), self.config.api_key.encode()):
            return _json(401, {"error": "missing or wrong API key: send Authorization: Bearer <key>"})
        if args["endpoint_id"] != self.config.endpoint_id:
            return _json(404, {"error": f"no endpoint {args['endpoint_id']!r}"})
        if endpoint == "run":
            return self._run_route(request)
        if endpoint in ("status", "cancel"):
            body = self.status(args["job_id"]) if endpoint == "status" else self.cancel(args["job_id"])
            return _json(200, body) if body else _json(404, {"error": f"no job {args['job_id']!r} (or it expired)"})
        return _json(200, self.health() if endpoint == "health" else self.billing())

    def _run_route(self, request: Request) -> Response:
        if self._chaos.mode is ChaosMode.REFUSE:
            return _json(503, {"error": "the endpoint is not taking requests now (chaos: refuse)"})
        if (request.content_length or 0) > MAX_RUN_BODY_BYTES:
            return _json(413, {"error": f"a /run body is at most {MAX_RUN_BODY_BYTES} bytes"})
        try:
            job = self.submit(RunRequest.model_validate_json(request.get_data() or b"{}"))
        except ValidationError as invalid:
            return _json(400, {"error": f"invalid request: {_problems(invalid)}"})
        except BadRequest as bad:
            return _json(400, {"error": str(bad)})
        return _json(200, {"id": job.id, "status": JobStatus.IN_QUEUE.value})

    def _chaos_route(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.chaos = Chaos.model_validate_json(request.get_data() or b"{}")
            except ValidationError as invalid:
                return _json(400, {"error": f"invalid chaos: {_problems(invalid)}"})
        return _json(200, self._chaos.model_dump(mode="json"))


class BadRequest(Exception):
    pass


def _error(kind: ErrorType, detail: str) -> str:
    return f"{kind.value}: {detail}"[:MAX_ERROR_CHARS]


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


# ---- as a process


@dataclass
class FaasProviderProcess:
    """The provider as the embedded stack runs it: a child process, up once it writes its ready file."""

    config: ProviderConfig
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    url: str = ""  # known once it serves

    @property
    def ready_file(self) -> Path:
        return self.folder / f"{self.config.endpoint_id}.json"

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.config.endpoint_id}.log"

    def start(self) -> None:
        """Launch; `wait_ready` then waits for it (launch early, wait late: its imports take a moment)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        c = self.config
        command = [
            sys.executable, "-m", "spillway_embedded.faas_provider", "--listen", "127.0.0.1:0",
            "--ready-file", str(self.ready_file), "--endpoint-id", c.endpoint_id,
            "--concurrency", str(c.concurrency), "--cold-start-seconds", str(c.cold_start_seconds),
            "--idle-seconds", str(c.idle_seconds), "--price-per-second-usd", str(c.price_per_second_usd),
            "--execution-timeout-seconds", str(c.execution_timeout_seconds),
            "--min-execution-timeout-ms", str(c.min_execution_timeout_ms),
            "--webhook-retries", str(c.webhook_retries), "--webhook-retry-seconds", str(c.webhook_retry_seconds),
        ]
        with self.log_path.open("wb") as out:  # the key goes in the environment, never on a command line
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env=os.environ | {"SPILLWAY_FAAS_API_KEY": c.api_key})

    def wait_ready(self, timeout: float = 60.0) -> str:
        assert self.process is not None, "start() first"
        try:
            self.url = wait_for_ready_file(self.ready_file, self.process, timeout, "the FaaS provider")
        except (RuntimeError, TimeoutError) as failed:
            raise RuntimeError(f"{failed}; see {self.log_path}") from None
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    defaults = ProviderConfig(endpoint_id="", api_key="")
    parser = argparse.ArgumentParser(prog="python -m spillway_embedded.faas_provider",
                                     description="A stand-in FaaS GPU service speaking RunPod serverless's API.")
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0), help="HOST:PORT; port 0 picks one")
    parser.add_argument("--ready-file", type=Path, help="write {listen_url, endpoint_id, pid} here once serving")
    parser.add_argument("--endpoint-id", required=True)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="workers")
    parser.add_argument("--cold-start-seconds", type=float, default=defaults.cold_start_seconds)
    parser.add_argument("--idle-seconds", type=float, default=defaults.idle_seconds,
                        help="a worker idle longer than this is cold again")
    parser.add_argument("--price-per-second-usd", type=float, default=defaults.price_per_second_usd)
    parser.add_argument("--execution-timeout-seconds", type=float, default=defaults.execution_timeout_seconds,
                        help="the endpoint's execution timeout, unless a request's policy says otherwise")
    parser.add_argument("--min-execution-timeout-ms", type=int, default=defaults.min_execution_timeout_ms)
    parser.add_argument("--webhook-retries", type=int, default=defaults.webhook_retries)
    parser.add_argument("--webhook-retry-seconds", type=float, default=defaults.webhook_retry_seconds)
    args = parser.parse_args(argv)
    import spillway.agent.model  # noqa: F401  (now: a missing image library fails the start, not the first job)

    api_key = os.environ.get("SPILLWAY_FAAS_API_KEY", "")
    if not api_key:
        print("faas_provider: set SPILLWAY_FAAS_API_KEY to the key clients must present", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s faas {args.endpoint_id} %(levelname)s %(message)s")
    for chatty in ("werkzeug", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    provider = FaasProvider(ProviderConfig(
        endpoint_id=args.endpoint_id, api_key=api_key, concurrency=args.concurrency,
        cold_start_seconds=args.cold_start_seconds, idle_seconds=args.idle_seconds,
        price_per_second_usd=args.price_per_second_usd, execution_timeout_seconds=args.execution_timeout_seconds,
        min_execution_timeout_ms=args.min_execution_timeout_ms, webhook_retries=args.webhook_retries,
        webhook_retry_seconds=args.webhook_retry_seconds,
    ))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    provider.start(*args.listen)
    if args.ready_file:
        tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        tmp.write_text(json.dumps({"listen_url": provider.url, "endpoint_id": args.endpoint_id, "pid": os.getpid()}))
        os.replace(tmp, args.ready_file)  # readers never see half a file
    log.info("endpoint %s serving on %s with %d workers", args.endpoint_id, provider.url, args.concurrency)
    stop.wait()
    provider.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
