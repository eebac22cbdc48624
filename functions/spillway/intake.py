"""Taking jobs in: upload tickets, validated submissions, and the status view.

Plain domain code: the API handler parses HTTP and calls these; tests call them directly.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter

from spillway import imageinfo, webhooks
from spillway.aws import error_code
from spillway.catalog import SERVICES
from spillway.errors import BadRequest, Invalid, NotFound
from spillway.fleet import Gpu
from spillway.jobs import JobRecord, JobStore
from spillway.limits import TenantLimits
from spillway.models import (
    DispatchInput,
    JobAccepted,
    JobId,
    JobList,
    JobRequest,
    JobStatus,
    JobSummary,
    JobView,
    UploadRequest,
    UploadTicket,
)
from spillway.priorities import deadline_for
from spillway.routing.rules import RoutingRules, default_rules
from spillway.settings import Settings
from spillway.tenancy import Tenant

UPLOAD_URL_SECONDS = 15 * 60
MAX_INPUT_BYTES = 32 * 1024 * 1024  # the upload policy's limit and the submit check's: a 40 MP JPEG fits
SHORTEST_DEADLINE = timedelta(seconds=30)  # a job cannot be answered sooner than a GPU can run it
LONGEST_DEADLINE = timedelta(days=7)
RESULT_URL_SECONDS = 60 * 60
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg"}
_JOB_ID = TypeAdapter(JobId)


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


class Intake:
    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        s3: Any,
        sqs: Any,
        limits: TenantLimits,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        fleet: Callable[[], list[Gpu]] = list,
        rules: Callable[[], RoutingRules] = default_rules,
    ):
        self._settings = settings
        self._jobs = jobs
        self._s3 = s3
        self._sqs = sqs
        self._limits = limits
        self._clock = clock
        self._new_id = new_id
        self._fleet = fleet  # the enrolled GPUs, healthy or not (a recent read will do: they change seldom)
        self._rules = rules  # the routing rules: who may use FaaS, and its GPU's memory

    def upload_ticket(self, request: UploadRequest, tenant: Tenant) -> UploadTicket:
        """A presigned POST: its signed policy makes the storage itself refuse a file over the limit. The key
        is under the tenant's prefix: only that tenant may name it in a job."""
        key = f"{tenant.upload_prefix}{self._new_id()}.{_EXTENSIONS[request.content_type]}"
        post = self._s3.generate_presigned_post(
            Bucket=self._settings.images_bucket, Key=key,
            Fields={"Content-Type": request.content_type},
            Conditions=[{"Content-Type": request.content_type}, ["content-length-range", 1, MAX_INPUT_BYTES]],
            ExpiresIn=UPLOAD_URL_SECONDS,
        )
        return UploadTicket(input_key=key, upload_url=post["url"], fields=post["fields"], max_bytes=MAX_INPUT_BYTES,
                            expires_in=UPLOAD_URL_SECONDS)

    def submit(self, request: JobRequest, tenant: Tenant) -> JobAccepted:
        """Validate, pin the input, record the job, and queue it on its priority's intake queue."""
        service = SERVICES.get(request.service)
        if service is None:
            raise Invalid(f"unknown service {request.service!r}; known services: {', '.join(sorted(SERVICES))}")
        if not request.input_key.startswith(tenant.upload_prefix):  # another tenant's upload: as if absent
            raise Invalid(_nothing_uploaded(request.input_key))
        if request.webhook_url and (why := webhooks.refusal(str(request.webhook_url),
                                                             self._settings.allow_loopback_webhooks)):
            raise Invalid(f"webhook_url: {why}")
        standing = self._limits.check(tenant.tenant_id)  # over its limits: refused before any work
        data, version = self._read_upload(request.input_key)
        try:
            image = imageinfo.inspect(data)
        except imageinfo.NotAnImage as exc:
            raise Invalid(f"{request.input_key}: {exc}") from None
        width, height = image.width, image.height
        megapixels = width * height / 1_000_000
        if megapixels > service.max_megapixels:
            raise Invalid(
                f"the input is {width}x{height} ({megapixels:.1f} MP); "
                f"{service.name} takes at most {service.max_megapixels:g} MP"
            )
        vram_mb, compute = service.vram_mb(width, height), service.compute(width, height)
        self._check_some_gpu_holds(request, vram_mb, compute, f"{width}x{height}")
        submitted = self._clock()
        now = iso(submitted)
        deadline = request.deadline_at or deadline_for(request.priority, submitted)
        if not submitted + SHORTEST_DEADLINE <= deadline <= submitted + LONGEST_DEADLINE:
            raise Invalid(f"deadline_at {request.deadline_at.isoformat()} is not between "
                          f"{SHORTEST_DEADLINE.seconds} s and {LONGEST_DEADLINE.days} days from now ({now})")
        job_id = f"j-{self._new_id()}"
        job = JobRecord(
            job_id=job_id,
            tenant=tenant.tenant_id,
            status=JobStatus.QUEUED,
            service=service.name,
            priority=request.priority,
            segment=request.segment,
            input_key=request.input_key,
            input_version=version,  # pinned: a later write to the upload's key changes nothing
            width=width,
            height=height,
            vram_mb=vram_mb,
            compute=compute,
            created_at=now,
            updated_at=now,
            deadline_at=iso(deadline.astimezone(UTC)),
            idempotency_key=request.idempotency_key,
            webhook_url=str(request.webhook_url) if request.webhook_url else None,
        )
        self._limits.create_within_limits(tenant.tenant_id, job_id, self._jobs.item(job), standing)
        message = DispatchInput(
            job_id=job.job_id,
            service=job.service,
            input_key=job.input_key,
            input_version=job.input_version,
            priority=job.priority,
            vram_mb=job.vram_mb,
            compute=job.compute,
            submitted_at=job.created_at,
            deadline_at=job.deadline_at,
        )
        try:
            self._sqs.send_message(
                QueueUrl=self._settings.intake_queue_urls[job.priority], MessageBody=message.model_dump_json()
            )
        except Exception:
            # A job that is recorded but never queued would sit in QUEUED forever: take it back, and its slot.
            self._jobs.delete(job.job_id)
            self._limits.release(tenant.tenant_id, job.job_id)
            raise
        return JobAccepted(job_id=job.job_id, status=job.status)

    def _check_some_gpu_holds(self, request: JobRequest, vram_mb: int, compute: int, size: str) -> None:
        """Refuse a job no GPU of any pool that may serve it could ever hold: the office's and the cloud's
        enrolled GPUs (healthy or not: a GPU that is down comes back), and FaaS's if the job's segment may use
        it. While no GPU that runs the service has enrolled yet, nothing is known: the job waits for one."""
        rules = self._rules()
        gpus = [g for g in self._fleet() if g.pool in rules.pool_order and request.service in g.services]
        faas_open = bool(self._settings.faas_endpoint_id) and \
            rules.faas.segment_for(request.segment, request.service, request.priority) is not None
        if not gpus or any(g.could_hold(request.service, vram_mb, compute) for g in gpus) \
                or (faas_open and rules.faas.holds(vram_mb)):
            return
        largest = ", ".join(f"{max(g.vram_total_mb for g in of_pool)} MB and {max(g.compute_total for g in of_pool)}% "
                            f"compute in {pool.value}"
                            for pool in rules.pool_order if (of_pool := [g for g in gpus if g.pool is pool]))
        faas = f"FaaS's has {rules.faas.vram_mb} MB" if faas_open else "FaaS does not serve its segment"
        raise Invalid(f"the input is {size}: {request.service} needs {vram_mb} MB of GPU memory and {compute}% of "
                      f"a GPU's compute for it; the largest GPU that runs it has {largest}, and {faas}; "
                      "send a smaller image")

    def owned(self, job_id: str, tenant: Tenant) -> JobRecord:
        """The tenant's job; NotFound if there is none, or it is another tenant's."""
        job = self._jobs.get(job_id)
        if job is None or job.tenant != tenant.tenant_id:  # another tenant's job is no job, to its caller
            raise NotFound(f"no job {job_id}")
        return job

    def view(self, job_id: str, tenant: Tenant) -> JobView:
        job = self.owned(job_id, tenant)
        result_url = None
        if job.status is JobStatus.SUCCEEDED and job.result_key:
            result_url = self._s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self._settings.images_bucket, "Key": job.result_key},
                ExpiresIn=RESULT_URL_SECONDS,
            )
        return job.view(result_url)

    def jobs(self, tenant: Tenant, limit: int, status: JobStatus | None = None, cursor: str | None = None) -> JobList:
        """The tenant's own jobs, newest first, a page at a time."""
        found, next_after = self._jobs.of_tenant(tenant.tenant_id, limit, status, _read_cursor(cursor))
        return JobList(jobs=[JobSummary.model_validate(job.model_dump()) for job in found],
                       next_cursor=_cursor(next_after))

    def _read_upload(self, key: str) -> tuple[bytes, str]:
        """The upload's bytes, and its version: the bucket is versioned, so the job reads exactly the bytes
        judged here whatever writes the key later (its upload URL is valid a while yet)."""
        try:
            upload = self._s3.get_object(Bucket=self._settings.images_bucket, Key=key)
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise Invalid(_nothing_uploaded(key)) from None
            raise
        with upload["Body"] as body:
            if upload["ContentLength"] > MAX_INPUT_BYTES:  # the upload policy stops these; whatever wrote it
                raise Invalid(f"the upload at {key} is {upload['ContentLength']} bytes; "
                              f"the limit is {MAX_INPUT_BYTES} bytes")
            if upload["ContentLength"] == 0:
                raise Invalid(f"the upload at {key} is empty")
            data = body.read()
        if not upload.get("VersionId") or upload["VersionId"] == "null":
            raise RuntimeError(f"{self._settings.images_bucket} is not versioned: a job's input could not be pinned")
        return data, upload["VersionId"]


def _nothing_uploaded(key: str) -> str:
    return f"nothing was uploaded at {key}: POST the image to its upload_url first"


# A cursor is where the next page starts: (created_at, job_id) of the last job given. Opaque to clients;
# read only within the caller's own jobs (the query names its tenant), so a forged one reveals nothing.
def _cursor(after: tuple[str, str] | None) -> str | None:
    return base64.urlsafe_b64encode(json.dumps(after).encode()).decode().rstrip("=") if after else None


def _read_cursor(cursor: str | None) -> tuple[str, str] | None:
    if cursor is None:
        return None
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        datetime.fromisoformat(created_at)
        _JOB_ID.validate_python(job_id)
    except (ValueError, TypeError, binascii.Error):  # a pydantic ValidationError is a ValueError
        raise BadRequest("cursor: not a cursor this API gave; pass next_cursor as it came, or none") from None
    return created_at, job_id
