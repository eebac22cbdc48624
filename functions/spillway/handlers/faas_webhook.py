"""The FaaS provider's webhook: POST /v1/faas/webhook/{task_id}?token=... when a job ends.

The URL carries a per-task secret (an HMAC of the task id); a call without the right one is refused.
The body is not trusted: the task's job status is asked from the provider (see `spillway.faas`).
"""

from typing import Annotated

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway.errors import NotFound, Unauthorized
from spillway.faas import webhook
from spillway.handlers.http import answer_errors_with_reasons
from spillway.handlers.wiring import faas_dispatcher, webhook_key
from spillway.models import CallbackAck, TaskId

logger = Logger()
tracer = Tracer()
app = APIGatewayHttpResolver(enable_validation=True)
answer_errors_with_reasons(app)


@app.post("/v1/faas/webhook/<task_id>", summary="The FaaS provider says a job ended")
def job_ended(task_id: Annotated[TaskId, Path()], token: Annotated[str, Query(max_length=200)] = "") -> CallbackAck:
    if not webhook.verify(webhook_key(), task_id, token):
        raise Unauthorized("missing or wrong webhook token")
    logger.append_keys(task_id=task_id)
    outcome = faas_dispatcher().check(task_id)
    if outcome == "unknown":
        raise NotFound(f"no FaaS task {task_id}")
    logger.info("faas webhook", outcome=outcome)
    return CallbackAck(current=True)


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId", clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
