"""Pydantic models for every boundary: the public API, the queues, and the agent protocol.

One module so that the API Lambda, the pollers, the callback Lambda and the agent all speak
exactly the same shapes.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, AnyHttpUrl, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from spillway.catalog import GPU_COMPUTE
from spillway.health import GpuHealth

JobId = Annotated[str, StringConstraints(pattern=r"^j-[0-9a-f]{32}$")]
TaskId = Annotated[str, StringConstraints(pattern=r"^t-[0-9a-f]{32}$")]
GpuId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
InputKey = Annotated[str, StringConstraints(pattern=r"^uploads/tn-[0-9a-f]{24}/[0-9a-f]{32}\.(png|jpg)$")]
IdempotencyKey = Annotated[str, StringConstraints(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class Strict(BaseModel):
    """Unknown fields are refused: a typo in a request is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class JobStatus(StrEnum):
    QUEUED = "QUEUED"  # accepted, waiting in an intake queue
    RUNNING = "RUNNING"  # the dispatch execution has started
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"  # its client cancelled it (POST /v1/jobs/{job_id}/cancel); `error` says why

    @property
    def final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class TaskState(StrEnum):
    """One attempt on one pool: waiting for a GPU, then on one, then over (exactly once)."""

    WAITING = "waiting"  # in the pool's waiting room; no GPU yet
    ASSIGNED = "assigned"  # a GPU's VRAM is leased; the push to its agent is under way
    RUNNING = "running"  # the agent has it; its heartbeats keep it alive
    DONE = "done"  # over: succeeded, failed, or expired; the VRAM is back


class Pool(StrEnum):
    LOCAL = "local"
    CLOUD = "cloud"
    FAAS = "faas"


class ErrorType(StrEnum):
    """Why an attempt failed. The state machine's Catch routes on `Spillway.<ErrorType>`."""

    BAD_INPUT = "BadInput"  # the image itself is unusable: fail the job, no retry
    GPU_UNREACHABLE = "GpuUnreachable"  # the push to the agent failed: the link or the node is down
    MODEL_ERROR = "ModelError"  # the model crashed on this GPU: another GPU may do it
    INPUT_UNAVAILABLE = "InputUnavailable"  # the agent could not fetch the input
    OUTPUT_UPLOAD = "OutputUpload"  # the agent could not store the result
    DRAINING = "Draining"  # the agent is shutting down and gave the task back
    WAIT_EXPIRED = "WaitExpired"  # no GPU of the pool could start it within its wait bound
    POOL_REFUSED = "PoolRefused"  # the pool would not take it (FaaS at capacity or throttling): never ran

    @property
    def state_machine_error(self) -> str:
        return f"Spillway.{self.value}"

    @property
    def spills(self) -> bool:
        """It never ran: the attempt spills on and is not counted (the state machine's Catch to AttemptSpilled)."""
        return self in (ErrorType.WAIT_EXPIRED, ErrorType.POOL_REFUSED)


def _ip_host(url: AnyHttpUrl) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address((url.host or "").strip("[]"))
    except ValueError:
        return None


def is_loopback(url: AnyHttpUrl) -> bool:
    ip = _ip_host(url)
    return url.host == "localhost" or (ip is not None and ip.is_loopback)


def _webhook_target(url: AnyHttpUrl) -> AnyHttpUrl:
    """A job's webhook: https:// to a public host. Loopback (http too) only where the stack allows it (offline,
    see Intake); an address inside a network (private, link-local: the metadata service) never."""
    if is_loopback(url):
        return url
    ip = _ip_host(url)
    if url.scheme != "https":
        raise ValueError("a webhook_url must be https://")
    if ip is not None and not ip.is_global:
        raise ValueError("a webhook_url must reach a public address, not a private or link-local one")
    return url


WebhookUrl = Annotated[AnyHttpUrl, AfterValidator(_webhook_target)]


# --- public API ------------------------------------------------------------------------------


class UploadRequest(Strict):
    content_type: Literal["image/png", "image/jpeg"] = "image/png"


class UploadTicket(BaseModel):
    input_key: str = Field(description="pass this as `input_key` when submitting the job")
    upload_url: str = Field(description="S3 URL to POST the image to, as a multipart form")
    method: Literal["POST"] = "POST"
    fields: dict[str, str] = Field(description="the form's fields (a signed policy), sent before the file, "
                                               "which goes last in a field named `file`")
    max_bytes: int = Field(description="the largest file the storage takes; a larger one is refused")
    expires_in: int = Field(description="seconds the URL stays valid")


class Segment(Strict):
    """Who the job is for; segment rules decide deadlines and FaaS eligibility."""

    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$")] = "us"
    customer_tier: Literal["standard", "premium", "enterprise"] = "standard"


class JobRequest(Strict):
    service: str = Field(description="one of the services in the catalog, e.g. `remove_furniture`")
    input_key: InputKey = Field(description="the `input_key` of a finished upload")
    priority: Priority = Priority.NORMAL
    segment: Segment = Field(default_factory=Segment)
    deadline_at: AwareDatetime | None = Field(
        default=None, description="answer by then (ISO 8601 with a zone), done or failed with a reason; "
                                  "default: the priority's deadline (high 10 min, normal 1 h, low 24 h)")
    idempotency_key: IdempotencyKey | None = Field(
        default=None, description="resubmitting with the same key returns the same job, never a second one"
    )
    webhook_url: WebhookUrl | None = Field(
        default=None, description="https:// URL told once when the job ends (SUCCEEDED, FAILED or CANCELLED): a "
                                  "POST of a JobEvent signed Standard-Webhooks style, retried with backoff until "
                                  "it answers 2xx")


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # it reached a GPU and failed there: it counts against the job's attempts
    SPILLED = "spilled"  # it never reached a GPU (waited past its bound, the pool refused it): not counted


class AttemptView(BaseModel):
    number: int
    pool: Pool
    gpu_id: str | None = None
    route: str | None = Field(default=None, description="why the routing policy sent it to this pool")
    started_at: str = Field(description="the attempt opened: the task entered the pool's waiting room")
    assigned_at: str | None = Field(default=None, description="a GPU of the pool was leased for it")
    running_at: str | None = Field(default=None, description="the GPU's agent took the task")
    ended_at: str | None = None
    outcome: AttemptOutcome | None = None
    error: str | None = Field(default=None, description="the kind of failure, e.g. `Spillway.GpuUnreachable`")
    reason: str | None = Field(default=None, description="what went wrong, in words")
    wait_ms: int | None = Field(default=None, description="from opening to a GPU (or to its end, if none)")
    run_ms: int | None = Field(default=None, description="on the GPU, from its start to its end")
    cost_usd: float = Field(default=0.0, description="what the attempt cost: GPU time at its pool's price")


class JobFields(BaseModel):
    """What the job record stores and the status view shows alike."""

    job_id: str
    status: JobStatus
    service: str
    priority: Priority
    segment: Segment
    input_key: str
    width: int
    height: int
    vram_mb: int
    compute: int = Field(default=0, description="its share of a GPU's compute (SM%; 0 on jobs from before "
                                                "compute was packed)")
    created_at: str
    updated_at: str
    deadline_at: str | None = Field(default=None, description="the job is answered by then: done, or failed "
                                                              "with a reason (absent on jobs older than deadlines)")
    finished_at: str | None = Field(default=None, description="when it became SUCCEEDED, FAILED or CANCELLED")
    webhook_url: str | None = Field(default=None, description="told when the job ends")


class JobView(JobFields):
    attempts: list[AttemptView]
    cost_usd: float = Field(description="the sum of its attempts' costs")
    result_key: str | None = None
    result_url: str | None = Field(default=None, description="presigned GET of the result, when SUCCEEDED")
    error: str | None = None
    webhook_error: str | None = Field(default=None, description="why its webhook_url was not called (e.g. its "
                                                                "host resolved to a private address); never retried")


class JobSummary(JobFields):
    error: str | None = None


class JobList(BaseModel):
    jobs: list[JobSummary] = Field(description="newest first")
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page; absent: "
                                                              "this is the last")


class ApiError(BaseModel):
    message: str


class CancelRequest(Strict):
    reason: str | None = Field(default=None, max_length=500, description="kept on the job: why it was cancelled")


class JobEventType(StrEnum):
    """What a webhook tells: how the job ended."""

    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"

    @classmethod
    def of(cls, status: JobStatus) -> JobEventType:
        return cls(f"job.{status.value.lower()}")


class JobEventData(BaseModel):
    job_id: str
    status: JobStatus
    service: str
    finished_at: str | None
    error: str | None = Field(default=None, description="why it failed or was cancelled")
    cost_usd: float


class JobEvent(BaseModel):
    """The body of a job's webhook (Standard Webhooks' payload shape). `webhook-id` is the same on every
    retry of one event: dedupe on it. GET /v1/jobs/{job_id} for the whole job and its result link."""

    type: JobEventType
    timestamp: str = Field(description="when the job ended")
    data: JobEventData


class WebhookNotice(BaseModel):
    """A message on the webhooks queue: this job ended, tell its webhook."""

    job_id: JobId


# --- operator API: the fleet ------------------------------------------------------------------


class HealthEventView(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    at: str
    from_: GpuHealth = Field(alias="from")
    to: GpuHealth
    reason: str
    detect_s: float | None = Field(default=None, description="from the fault's first sign to this transition")


class GpuView(BaseModel):
    gpu_id: str
    pool: Pool
    health: GpuHealth
    reason: str = Field(description="why it is in that state")
    since: str = Field(description="when it entered it")
    quarantined_until: str | None = Field(default=None, description="quarantined: when its cool-down ends "
                                                                    "(absent: until an operator readmits it)")
    held: bool = Field(description="an operator drained or quarantined it: only a readmit lets it back")
    vram_total_mb: int
    vram_used_mb: int
    compute_total: int
    compute_used: int = Field(description="the compute shares of the tasks leased on it")
    slots: int
    running: list[str] = Field(description="the tasks leased on it")
    last_heartbeat: str
    last_heartbeat_age_s: float
    model_errors: int = Field(description="ModelErrors in a row")
    quarantines: int = Field(description="quarantines in a row")
    events: list[HealthEventView] = Field(description="its recent health transitions, oldest first")


class FleetView(BaseModel):
    gpus: list[GpuView]


# --- control plane: state machine and pool queues ----------------------------------------------


class DispatchInput(BaseModel):
    """The input of a dispatch execution, named by the job id."""

    job_id: JobId
    service: str
    input_key: str
    input_version: str | None = None  # the upload's S3 version judged at submit: every attempt reads exactly it
    priority: Priority
    vram_mb: int
    compute: int = 0  # absent from jobs queued before compute was packed: they take none
    # Absent from executions started before deadlines existed: the priority's defaults apply.
    submitted_at: str | None = None
    deadline_at: str | None = None


class ExecutionLimits(BaseModel):
    """Clocks the dispatch execution enforces itself, computed at admission."""

    task_timeout_seconds: int = Field(
        gt=0, description="backstop of one RunAttempt: the whole wait for a GPU plus the longest run")


class PoolTask(BaseModel):
    """The body the state machine sends to a pool queue, with its task token."""

    job_id: JobId
    attempt: int = Field(ge=1, le=10, description="the job's attempt counter: attempts and spills alike (MaxLegs)")
    pool: Pool
    service: str
    input_key: str
    input_version: str | None = None
    vram_mb: int
    compute: int = Field(default=0, description="its share of a GPU's compute (absent: an execution started "
                                                "before compute was packed; it takes none)")
    priority: Priority
    submitted_at: str | None = Field(default=None, description="when the job was submitted: its age ranks it")
    deadline_at: str | None = None
    avoid_gpus: list[str] = Field(default_factory=list, description="GPUs that failed this job: never again")
    spill_to: Pool | None = Field(default=None, description="where it goes if it waits past its priority's bound "
                                                            "(routing's choice); none: it waits until its deadline")
    faas_segment: str | None = Field(default=None, description="the FaaS segment whose budget pays (faas only)")
    task_token: str


class AttemptOutput(BaseModel):
    """What RunAttempt gets back through SendTaskSuccess."""

    task_id: str
    gpu_id: str
    result_key: str
    duration_ms: int


# --- agent protocol ----------------------------------------------------------------------------


class AgentCancel(Strict):
    """Control plane -> agent: POST /v1/tasks/{task_id}/cancel, signed like a task; names the task it stops."""

    task_id: TaskId


class AgentTask(Strict):
    """Control plane -> agent: POST /v1/tasks, signed (Standard Webhooks headers). Idempotent by task_id."""

    task_id: TaskId
    job_id: JobId
    service: str
    input_url: AnyHttpUrl
    output_url: AnyHttpUrl
    heartbeat_interval_s: float = Field(gt=0, le=300)
    task_secret: str = Field(min_length=32, max_length=64,
                             description="its heartbeats and result present it (Spillway-Task-Secret): only this "
                                         "push has it")


class AgentTaskAccepted(BaseModel):
    task_id: str
    state: Literal["accepted", "running", "succeeded", "failed", "cancelled"]


def _https_unless_loopback(url: AnyHttpUrl) -> AnyHttpUrl:
    """Pushes carry the agent key and presigned URLs: off this machine, only over TLS the poller verifies.
    Plain http is for an agent on loopback (the embedded stack), which no deployed function can reach."""
    if url.scheme != "https" and not is_loopback(url):
        raise ValueError("an agent's url must be https:// (its tunnel's hostname); plain http only on loopback")
    return url


AgentUrl = Annotated[AnyHttpUrl, AfterValidator(_https_unless_loopback)]


MAX_VRAM_MB = 4_000_000  # 4 TB: more than any GPU has, and a number DynamoDB stores


class FleetHeartbeat(Strict):
    """Agent -> control plane: POST /v1/agent/heartbeat, every few seconds; the first one registers. No pool or
    URL: those are the GPU's enrollment's (`spillway fleet enroll`), which a beat cannot change."""

    gpu_id: GpuId
    vram_total_mb: int = Field(gt=0, le=MAX_VRAM_MB)
    compute: int = Field(default=GPU_COMPUTE, gt=0, le=10 * GPU_COMPUTE,
                         description=f"its compute capacity, in SM% of a reference GPU ({GPU_COMPUTE}: one)")
    slots: int = Field(default=1, gt=0, le=64, description="tasks this GPU runs at once")
    services: list[str]
    running: list[TaskId] = Field(default_factory=list, description="the tasks it holds: running, or their result "
                                                                    "not yet acknowledged")
    draining: bool = False
    not_ready: str | None = Field(default=None, max_length=500,
                                  description="why it cannot take work though it runs (its model server is not "
                                              "ready); absent: ready")


class AgentHeartbeat(FleetHeartbeat):
    """A heartbeat with the pool and URL of its GPU's enrollment: what the fleet records."""

    pool: Literal[Pool.LOCAL, Pool.CLOUD]
    url: AgentUrl = Field(description="where the control plane reaches this agent: https:// (for local GPUs: "
                                       "the tunnel's hostname), http:// only on loopback")


class Enrollment(Strict):
    """Operator -> control plane: PUT /v1/fleet/{gpu_id}, what the GPU is (`spillway fleet enroll`)."""

    pool: Literal[Pool.LOCAL, Pool.CLOUD]
    url: AgentUrl = Field(description="where the control plane reaches the agent: https:// (for office GPUs: the "
                                       "tunnel's hostname), http:// only on loopback")
    vram_mb: int = Field(gt=0, le=MAX_VRAM_MB)


class AgentSecret(BaseModel):
    """The agent's secret, shown once: give it to the agent as SPILLWAY_AGENT_SECRET."""

    gpu_id: str
    secret: str
    generation: int
    previous_valid_until: str | None = Field(default=None, description="a rotation: the previous secret works "
                                                                       "until then (ISO 8601)")


class TaskHeartbeat(Strict):
    """Agent -> control plane: POST /v1/agent/tasks/{task_id}/heartbeat while the model runs."""

    gpu_id: GpuId


class TaskResult(Strict):
    """Agent -> control plane: POST /v1/agent/tasks/{task_id}/result, once, retried until answered."""

    gpu_id: GpuId
    outcome: Literal["succeeded", "failed"]
    error_type: ErrorType | None = None
    message: str | None = Field(default=None, max_length=2000)
    duration_ms: int = Field(ge=0)


class CallbackAck(BaseModel):
    """The control plane's answer to an agent report. `current=False`: the task has moved on, stop it."""

    current: bool


# --- control plane: timers -------------------------------------------------------------------


class TimerKind(StrEnum):
    WAIT_EXPIRY = "wait_expiry"  # a waiting task's wait bound has passed: it leaves the room
    LIVENESS = "liveness"  # a task on a GPU must have beaten since; else its GPU went silent
    FAAS_STATUS = "faas_status"  # ask the FaaS provider how the task's job stands (its webhook may be lost)


class Timer(BaseModel):
    """A delayed message on the timers queue: look at this task again at `due_at`."""

    kind: TimerKind
    task_id: TaskId
    due_at: float = Field(description="epoch seconds")
