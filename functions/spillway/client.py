"""A small Python client of the job API, over the API's own models (spillway.models: one schema).

    from spillway.client import Client
    with Client.for_dev() as spillway:                       # the running `spillway dev`; or Client(url, token=...)
        job = spillway.submit("upscale_2x", Path("room.png").read_bytes(), webhook_url="https://example.com/hook")
        done = spillway.wait(job.job_id)                     # SUCCEEDED, FAILED or CANCELLED
        print(done.status, done.result_url)

A deployed API (an `execute-api` host) is called with SigV4 signatures from your AWS credentials; the embedded
stack with a bearer token (its stack.json's). Every call has explicit timeouts; an error answer raises
`ApiError` with the API's reason.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Generator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from spillway.health import OperatorAction
from spillway.models import (
    AgentSecret,
    CancelRequest,
    Enrollment,
    FleetView,
    GpuView,
    JobAccepted,
    JobList,
    JobRequest,
    JobStatus,
    JobView,
    Priority,
    Segment,
    UploadRequest,
    UploadTicket,
)

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
UPLOAD_TIMEOUT = httpx.Timeout(60.0, connect=3.0)  # up to 32 MiB to the storage
DEV_STATE = Path(".spillway/dev")  # where `spillway dev` keeps its logs and its STACK_FILE, by default
STACK_FILE = "stack.json"  # what `spillway dev` serves (StackInfo), written once everything is up
DEFAULT_TENANT = "default"  # the tenant `spillway dev` always has: the CLI calls as it, its token in STACK_FILE


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class SigV4(httpx.Auth):
    """IAM auth for API Gateway: each request signed (SigV4, service `execute-api`) with the caller's AWS
    credentials, the region read from the host (`{id}.execute-api.{region}.amazonaws.com`)."""

    requires_request_body = True  # the body's hash is signed

    def __init__(self, credentials: Any = None):
        self._credentials = credentials

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        import boto3
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        credentials = self._credentials or boto3.Session().get_credentials()
        if credentials is None:
            raise ValueError("the API takes IAM signatures, and no AWS credentials were found")
        region = (request.url.host or "").split(".")[2]
        signed = AWSRequest(method=request.method, url=str(request.url), data=request.content,
                            headers={"Content-Type": request.headers.get("Content-Type", "")})
        SigV4Auth(credentials.get_frozen_credentials(), "execute-api", region).add_auth(signed)
        request.headers.update(dict(signed.headers.items()))
        yield request


class Bearer(httpx.Auth):
    def __init__(self, token: str):
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def api_auth(api_url: str, token: str | None = None) -> httpx.Auth | None:
    """SigV4 for a deployed API (an execute-api host), else the bearer token if there is one."""
    if ".execute-api." in (urlparse(api_url).hostname or ""):
        return SigV4()
    return Bearer(token) if token else None


def dev_stack(state_dir: Path = DEV_STATE) -> tuple[str, str | None]:
    """The running `spillway dev`'s API URL and bearer token, from its stack.json."""
    stack_file = state_dir / STACK_FILE
    try:
        info = json.loads(stack_file.read_text())
    except FileNotFoundError:
        raise ValueError(f"no running `spillway dev` ({stack_file} does not exist): start one, or give --api") from None
    return info["api_url"], info.get("tenants", {}).get(DEFAULT_TENANT)


class Client:
    def __init__(self, api_url: str, token: str | None = None, *, timeout: httpx.Timeout = TIMEOUT,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(base_url=self.api_url, auth=api_auth(self.api_url, token), timeout=timeout,
                                  transport=transport)
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def for_dev(cls, state_dir: Path = DEV_STATE, **options: Any) -> Client:
        api_url, token = dev_stack(state_dir)
        return cls(api_url, token, **options)

    @classmethod
    def from_env(cls, api_url: str | None = None, state_dir: Path = DEV_STATE, **options: Any) -> Client:
        """`api_url` (else SPILLWAY_API_URL) with SPILLWAY_TOKEN; neither: the running `spillway dev`."""
        api_url = api_url or os.environ.get("SPILLWAY_API_URL")
        if api_url:
            return cls(api_url, os.environ.get("SPILLWAY_TOKEN"), **options)
        return cls.for_dev(state_dir, **options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- the API

    def upload(self, image: bytes, content_type: str = "image/png") -> str:
        """Upload an input photo through a fresh ticket (a presigned form POST); returns its `input_key`."""
        ticket = UploadTicket.model_validate(self._call("POST", "/v1/uploads",
                                                        UploadRequest(content_type=content_type)))  # type: ignore[arg-type]
        # Straight to the storage, without the API's credentials: the signed form is the authority there.
        response = self._http.post(ticket.upload_url, data=ticket.fields, auth=None, timeout=UPLOAD_TIMEOUT,
                                   files={"file": ("image", image, content_type)})
        if response.is_error:
            raise ApiError(response.status_code, f"the upload was refused: {response.text[:300]}")
        return ticket.input_key

    def submit(self, service: str, image: bytes | None = None, *, input_key: str | None = None,
               content_type: str = "image/png", priority: Priority = Priority.NORMAL,
               segment: Segment | None = None, deadline_at: datetime | None = None,
               idempotency_key: str | None = None, webhook_url: str | None = None) -> JobAccepted:
        """Submit a job: the image is uploaded first (or give the `input_key` of an earlier upload)."""
        if (image is None) == (input_key is None):
            raise ValueError("give the image, or the input_key of an upload, not both")
        input_key = input_key or self.upload(image or b"", content_type)
        request = JobRequest.model_validate({
            "service": service, "input_key": input_key, "priority": priority, "segment": segment or Segment(),
            "deadline_at": deadline_at, "idempotency_key": idempotency_key, "webhook_url": webhook_url})
        return JobAccepted.model_validate(self._call("POST", "/v1/jobs", request))

    def status(self, job_id: str) -> JobView:
        return JobView.model_validate(self._call("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, status: JobStatus | None = None, limit: int = 20, cursor: str | None = None) -> JobList:
        """A page of your jobs, newest first; pass its `next_cursor` as `cursor` for the next page."""
        params = {"limit": limit, "status": status.value if status else None, "cursor": cursor}
        return JobList.model_validate(self._call("GET", "/v1/jobs", params={k: v for k, v in params.items() if v}))

    def cancel(self, job_id: str, reason: str | None = None) -> JobView:
        """Cancel a queued or running job (again: the same answer); ApiError 409 if it ended otherwise."""
        return JobView.model_validate(self._call("POST", f"/v1/jobs/{job_id}/cancel", CancelRequest(reason=reason)))

    def wait(self, job_id: str, timeout: float = 600.0, poll_s: float = 1.0) -> JobView:
        """Poll the job until it ends (SUCCEEDED, FAILED or CANCELLED); TimeoutError after `timeout` seconds."""
        give_up = self._clock() + timeout
        while True:
            job = self.status(job_id)
            if job.status.final:
                return job
            if self._clock() >= give_up:
                raise TimeoutError(f"job {job_id} is still {job.status.value} after {timeout:.0f} s")
            self._sleep(poll_s)

    # ---- the fleet (operators: `spillway fleet`)

    def fleet(self) -> FleetView:
        return FleetView.model_validate(self._call("GET", "/v1/fleet"))

    def enroll(self, gpu_id: str, enrollment: Enrollment) -> AgentSecret:
        """Enroll a GPU (again: a new secret); the answer holds its agent's secret, shown only there."""
        return AgentSecret.model_validate(self._call("PUT", f"/v1/fleet/{gpu_id}", enrollment))

    def rotate(self, gpu_id: str) -> AgentSecret:
        """A new secret for the GPU's agent; the current one stays valid for a day."""
        return AgentSecret.model_validate(self._call("POST", f"/v1/fleet/{gpu_id}/rotate"))

    def act(self, gpu_id: str, action: OperatorAction) -> GpuView:
        """Drain, quarantine or readmit a GPU."""
        return GpuView.model_validate(self._call("POST", f"/v1/fleet/{gpu_id}/{action.value}"))

    # ---- plumbing

    def _call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        content = body.model_dump_json(exclude_none=True) if body is not None else None
        response = self._http.request(method, path, content=content, params=params,
                                      headers={"Content-Type": "application/json"} if content else None)
        if response.is_error:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise ApiError(response.status_code, f"{method} {path}: {message}")
        return response.json()
