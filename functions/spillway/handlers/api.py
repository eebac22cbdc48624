"""The job API: POST /v1/uploads, POST /v1/jobs, GET /v1/jobs/{job_id}, POST /v1/jobs/{job_id}/cancel,
GET /v1/openapi.json; and the operators' fleet routes (`fleet_routes`)."""

import json
from functools import cache
from typing import Annotated, Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import PydanticSerializer
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from spillway import aws
from spillway.handlers import fleet_routes
from spillway.handlers.http import answer_errors_with_reasons, error_response, unreadable_body
from spillway.handlers.wiring import cancellation, enrolled_gpus, routing_rules, tenant_limits
from spillway.intake import Intake
from spillway.jobs import JobStore
from spillway.limits import RateLimited
from spillway.logs import job_keys
from spillway.metrics import Metric, emit
from spillway.models import (
    ApiError,
    CancelRequest,
    JobAccepted,
    JobEvent,
    JobId,
    JobList,
    JobRequest,
    JobStatus,
    JobView,
    UploadRequest,
    UploadTicket,
)
from spillway.settings import settings
from spillway.tenancy import Tenant, tenant_of

API_TITLE = "Spillway job API"
API_VERSION = "1.0.0"
MAX_PAGE = 100  # GET /v1/jobs's largest page

logger = Logger()
tracer = Tracer()
app = APIGatewayHttpResolver(enable_validation=True)
answer_errors_with_reasons(app)
app.include_router(fleet_routes.router)

_ERRORS: dict[int | str, Any] = {
    404: {"description": "No such job", "content": {"application/json": {"schema": ApiError.model_json_schema()}}},
    422: {"description": "The request cannot be served, with the reason",
          "content": {"application/json": {"schema": ApiError.model_json_schema()}}},
    429: {"description": "Over the tenant's submit rate or its jobs in flight: retry after `Retry-After` seconds",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}},
          "content": {"application/json": {"schema": ApiError.model_json_schema()}}},
}


@cache
def intake() -> Intake:
    s = settings()
    return Intake(s, JobStore(aws.table(s.jobs_table)), aws.client("s3"), aws.client("sqs"), limits=tenant_limits(),
                  fleet=enrolled_gpus(), rules=routing_rules)


class Submission(BaseModel):
    """A submit as the idempotency layer remembers it: a key is the tenant's own, never shared across tenants."""

    tenant: Tenant
    request: JobRequest


idempotency = IdempotencyConfig(
    event_key_jmespath="[tenant.tenant_id, request.idempotency_key]",
    payload_validation_jmespath="request.[service, input_key, priority, segment, deadline_at, webhook_url]",
    expires_after_seconds=24 * 3600,
)


@cache
def _idempotent_submit() -> Any:
    """Submit, remembered by idempotency key: a retried POST returns the job it created the first time."""
    persistence = DynamoDBPersistenceLayer(table_name=settings().idempotency_table, boto3_client=aws.client("dynamodb"))

    @idempotent_function(
        data_keyword_argument="submission", config=idempotency, persistence_store=persistence,
        output_serializer=PydanticSerializer,
    )
    def submit(submission: Submission) -> JobAccepted:
        return intake().submit(submission.request, submission.tenant)

    return submit


@app.post("/v1/uploads", summary="Get a presigned URL to upload an input photo", tags=["uploads"])
@tracer.capture_method
def create_upload(request: Annotated[UploadRequest | None, Body()] = None) -> UploadTicket:
    return intake().upload_ticket(request or UploadRequest(), caller())


@app.post("/v1/jobs", status_code=202, summary="Submit a job", tags=["jobs"], responses={
    202: {"description": "Accepted: the job is queued",
          "content": {"application/json": {"model": JobAccepted}}},
    409: {"description": "The same idempotency key is being submitted right now"},
    422: _ERRORS[422],
    429: _ERRORS[429],
})
@tracer.capture_method
def submit_job(request: Annotated[JobRequest, Body()]) -> JobAccepted:
    tenant = caller()
    if request.idempotency_key:
        accepted = _idempotent_submit()(submission=Submission(tenant=tenant, request=request))
    else:
        accepted = intake().submit(request, tenant)
    logger.append_keys(**job_keys(accepted.job_id))
    logger.info("job accepted", job_service=request.service, priority=request.priority.value,
                tenant=tenant.tenant_id)
    emit(Metric.JOBS_SUBMITTED, JobService=request.service, Priority=request.priority.value)
    return accepted


@app.get("/v1/jobs", summary="Your jobs, newest first, a page at a time", tags=["jobs"], responses={
    200: {"description": "A page of jobs", "content": {"application/json": {"model": JobList}}},
    400: {"description": "A cursor this API did not give",
          "content": {"application/json": {"schema": ApiError.model_json_schema()}}},
})
@tracer.capture_method
def list_jobs(
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"at most this many (1 to {MAX_PAGE})")] = 20,
    cursor: Annotated[str | None, Query(max_length=1000, description="the `next_cursor` of the page before")] = None,
) -> JobList:
    return intake().jobs(caller(), limit, status, cursor)


@app.get("/v1/jobs/<job_id>", summary="A job's status, attempts and result link", tags=["jobs"],
         responses={200: {"description": "The job", "content": {"application/json": {"model": JobView}}},
                    404: _ERRORS[404]})
@tracer.capture_method
def get_job(job_id: Annotated[JobId, Path(description="the id POST /v1/jobs returned")]) -> JobView:
    logger.append_keys(**job_keys(job_id))
    return intake().view(job_id, caller())


def caller() -> Tenant:
    return tenant_of(app.current_event.raw_event)


@app.post("/v1/jobs/<job_id>/cancel", summary="Cancel a queued or running job", tags=["jobs"], responses={
    200: {"description": "The job, CANCELLED: its execution stopped, its GPU freed, its agent told, its webhook "
                         "queued. Cancelling a cancelled job answers the same.",
          "content": {"application/json": {"model": JobView}}},
    404: _ERRORS[404],
    409: {"description": "The job ended otherwise (SUCCEEDED or FAILED): its status, in the reason",
          "content": {"application/json": {"schema": ApiError.model_json_schema()}}},
})
@tracer.capture_method
def cancel_job(job_id: Annotated[JobId, Path(description="the id POST /v1/jobs returned")],
               request: Annotated[CancelRequest | None, Body()] = None) -> JobView:
    logger.append_keys(**job_keys(job_id))
    job = intake().owned(job_id, caller())  # another tenant's job is no job to this caller: a 404, nothing stopped
    return cancellation().cancel(job, (request or CancelRequest()).reason).view()  # CANCELLED: no result to link


@app.get("/v1/openapi.json", include_in_schema=False)
def openapi():  # no return annotation: the document describes itself
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=openapi_document())


def openapi_document() -> str:
    document = json.loads(app.get_openapi_json_schema(
        title=API_TITLE, version=API_VERSION,
        description="Submit photo edits to run on GPUs; follow them until their result is ready. Operators: "
                    "see the fleet's health, drain, quarantine and readmit GPUs.",
    ))
    # What a job's webhook_url receives (OpenAPI 3.1 webhooks), from the model the sender sends.
    event = JobEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    document["components"]["schemas"] |= event.pop("$defs") | {"JobEvent": event}
    document["webhooks"] = {"jobEnded": {"post": {
        "summary": "A job ended (SUCCEEDED, FAILED or CANCELLED): POSTed once to its webhook_url, signed Standard "
                   "Webhooks style (webhook-id, webhook-timestamp, webhook-signature); retried until a 2xx",
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobEvent"}}}},
        "responses": {"2XX": {"description": "taken; any other answer (or none within 10 s) is retried"}}}}}
    return json.dumps(document)


@app.exception_handler(RateLimited)
def rate_limited(exc: RateLimited) -> Response:
    response = error_response(429, str(exc))
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


@app.exception_handler(IdempotencyValidationError)
def idempotency_key_reused(exc: IdempotencyValidationError) -> Response:
    return error_response(422, "this idempotency_key was used for a different request")


@app.exception_handler(IdempotencyAlreadyInProgressError)
def idempotency_in_progress(exc: IdempotencyAlreadyInProgressError) -> Response:
    return error_response(409, "a request with this idempotency_key is in progress; retry shortly")


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId", clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    idempotency.register_lambda_context(context)  # an in-progress record expires with the invocation
    return unreadable_body(event) or app.resolve(event, context)
