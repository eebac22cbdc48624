"""The FaaS pool's port: what Spillway needs from a pay-per-request GPU service, whoever runs it.

A provider takes a job (`submit`), says how it is doing (`status`), and stops it (`cancel`). Its
errors are split by what the caller does next:

- `FaasRefused`: the provider turned the call away (throttled, out of capacity: 429/503). Nothing
  was started and no money spent: release the budget reservation and try another pool.
- `FaasUnavailable`: the provider could not be reached or answered with a server error. If
  `request_sent` is False the call never left (connection refused, connect timeout): as refused.
  If True, a job may exist and may run (a read timeout after a submit): keep the reservation until
  the job is found (its webhook, or a status check) or the reservation's bound passes.
- `FaasRejected`: the provider refused the request itself (400, 401, 404 ...): our bug or our
  configuration. Retrying the same call will not help.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field


class FaasState(StrEnum):
    IN_QUEUE = "IN_QUEUE"  # waiting for a worker of the provider
    IN_PROGRESS = "IN_PROGRESS"  # a worker runs it: from here it costs money
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # the worker returned an error (see `FaasFailureKind`)
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"  # expired in the queue, or ran past its execution timeout

    @property
    def final(self) -> bool:
        return self not in (FaasState.IN_QUEUE, FaasState.IN_PROGRESS)


class FaasFailureKind(StrEnum):
    """Why a FAILED job failed, from the prefix our worker puts on its error. The values are those
    of `spillway.models.ErrorType`, so the caller escalates a FaaS failure as any other attempt's:
    a bad input fails the job at once, the rest may try another pool."""

    BAD_INPUT = "BadInput"
    INPUT_UNAVAILABLE = "InputUnavailable"
    OUTPUT_UPLOAD = "OutputUpload"
    MODEL_ERROR = "ModelError"  # anything else, an unhandled exception in the worker included

    @classmethod
    def of(cls, error: str | None) -> FaasFailureKind:
        message = (error or "").lstrip()
        for kind in (cls.BAD_INPUT, cls.INPUT_UNAVAILABLE, cls.OUTPUT_UPLOAD):
            if message.startswith(f"{kind.value}:"):
                return kind
        return cls.MODEL_ERROR


class FaasRequest(BaseModel):
    """One attempt sent to a FaaS provider. The worker fetches `input_url` and PUTs `output_url`
    (presigned S3 URLs); the provider calls `webhook_url` when the job ends."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    service: str = Field(min_length=1, max_length=100)
    input_url: AnyHttpUrl
    output_url: AnyHttpUrl
    webhook_url: AnyHttpUrl | None = None
    # The provider stops the job past this: it bounds what the job can cost (RunPod: > 5 s).
    execution_timeout_s: int = Field(gt=5, le=3600)
    # Queue wait + run, at most; past it the provider drops the job (TIMED_OUT). None: its default.
    ttl_s: int | None = Field(default=None, ge=10, le=7 * 86_400)


class FaasStatus(BaseModel):
    job_id: str
    state: FaasState
    delay_ms: int | None = None  # time in the provider's queue (cold start of a new worker included)
    execution_ms: int | None = None  # time a worker ran it
    error: str | None = None
    output: Any = None

    @property
    def final(self) -> bool:
        return self.state.final

    @property
    def failure_kind(self) -> FaasFailureKind | None:
        """For a FAILED job, what kind of failure; None in any other state."""
        return FaasFailureKind.of(self.error) if self.state == FaasState.FAILED else None


class FaasError(Exception):
    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class FaasRefused(FaasError):
    """Throttled or out of capacity (429/503): nothing started, no money spent; use another pool."""

    def __init__(self, message: str, status_code: int | None = None, retry_after_s: float | None = None):
        super().__init__(message, status_code)
        self.retry_after_s = retry_after_s


class FaasUnavailable(FaasError):
    """Unreachable, timed out, or a server error. `request_sent`: the request may have reached the
    provider, so a submitted job may exist (and cost money)."""

    def __init__(self, message: str, status_code: int | None = None, request_sent: bool = True):
        super().__init__(message, status_code)
        self.request_sent = request_sent


class FaasRejected(FaasError):
    """The provider refused the request itself (4xx): a bug or a misconfiguration on our side."""


class FaasProvider(Protocol):
    def submit(self, request: FaasRequest) -> str:
        """Start a job; returns the provider's job id."""
        ...

    def status(self, job_id: str) -> FaasStatus: ...

    def cancel(self, job_id: str) -> FaasStatus:
        """Stop a job (queued or running); returns its status after the cancel."""
        ...

