"""Agent routes: fleet heartbeats, task heartbeats and results, turned into SendTask* callbacks.

Agents live outside AWS (an office, a rented box), so instead of signing with IAM each presents its
own credential, `Authorization: Bearer <gpu_id>.<secret>`, checked against the hash its enrollment
keeps (see `spillway.credentials`); it speaks for that GPU only. A task's reports also present the
task's secret, which only the signed push carried.
"""

from typing import Annotated

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway.credentials import Enrolled
from spillway.errors import Forbidden
from spillway.handlers.http import answer_errors_with_reasons, error_response, unreadable_body
from spillway.handlers.wiring import agent_auth, dispatcher, reports
from spillway.models import AgentHeartbeat, CallbackAck, FleetHeartbeat, TaskHeartbeat, TaskId, TaskResult

logger = Logger()
tracer = Tracer()
app = APIGatewayHttpResolver(enable_validation=True)
answer_errors_with_reasons(app)

TaskSecret = Annotated[str, Header(alias="spillway-task-secret", description="the task's secret, from its push")]


def require_agent_credential(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response:
    agent = agent_auth().check(app.current_event.headers.get("authorization", ""))
    if agent is None:
        return error_response(401, "missing or wrong agent credential (Bearer <gpu_id>.<secret>, from "
                                   "`spillway fleet enroll`)")
    app.append_context(agent=agent)
    return next_middleware(app)


app.use(middlewares=[require_agent_credential])


def speaking_for(gpu_id: str) -> Enrolled:
    """The enrolled agent whose credential was presented, if it is the GPU the body names."""
    agent: Enrolled = app.context["agent"]
    if agent.gpu_id != gpu_id:
        raise Forbidden(f"this credential is {agent.gpu_id}'s: it cannot speak for {gpu_id}")
    return agent


@app.post("/v1/agent/heartbeat", summary="An enrolled agent reports its GPU: VRAM, slots, tasks, draining")
def agent_heartbeat(beat: Annotated[FleetHeartbeat, Body()]) -> CallbackAck:
    agent = speaking_for(beat.gpu_id)
    # The pool and URL are the enrollment's: a beat refreshes the rest, never where work is sent.
    report = AgentHeartbeat(**beat.model_dump(), pool=agent.pool, url=agent.url)
    if dispatcher().on_heartbeat(report):
        dispatcher().pump(agent.pool)  # a GPU that can take work again pulls from its room at once
    return CallbackAck(current=True)


@app.post("/v1/agent/tasks/<task_id>/heartbeat", summary="The task is still running")
def task_heartbeat(task_id: Annotated[TaskId, Path()], beat: Annotated[TaskHeartbeat, Body()],
                   secret: TaskSecret) -> CallbackAck:
    speaking_for(beat.gpu_id)
    logger.append_keys(task_id=task_id, gpu_id=beat.gpu_id)
    return reports().heartbeat(task_id, beat, secret)


@app.post("/v1/agent/tasks/<task_id>/result", summary="The task ended: succeeded, or failed with a reason")
def task_result(task_id: Annotated[TaskId, Path()], result: Annotated[TaskResult, Body()],
                secret: TaskSecret) -> CallbackAck:
    speaking_for(result.gpu_id)
    logger.append_keys(task_id=task_id, gpu_id=result.gpu_id)
    return reports().result(task_id, result, secret)


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId", clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    return unreadable_body(event) or app.resolve(event, context)
