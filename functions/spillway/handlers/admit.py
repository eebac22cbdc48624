"""Intake queues -> one dispatch execution per job, named by the job id.

The execution's name is the job id, which makes the start exactly once however often SQS
delivers the message.
"""

import json
from functools import cache

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway import aws
from spillway.models import DispatchInput
from spillway.settings import settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@cache
def sfn():
    return aws.client("stepfunctions")


def admit(job: DispatchInput) -> str:
    """Start the job's dispatch execution, exactly once; returns its ARN.

    A repeated start (SQS delivers at least once) is harmless: Step Functions answers a start with
    the same name and input as a running execution with that execution, and refuses one whose
    namesake has finished (ExecutionAlreadyExists).
    """
    s = settings()
    execution_input = job.model_dump(mode="json") | {
        "limits": {"heartbeat_seconds": s.heartbeat_seconds, "attempt_timeout_seconds": s.attempt_timeout_seconds},
    }
    try:
        return sfn().start_execution(
            stateMachineArn=s.dispatch_state_machine_arn, name=job.job_id, input=json.dumps(execution_input)
        )["executionArn"]
    except sfn().exceptions.ExecutionAlreadyExists:
        return s.dispatch_state_machine_arn.replace(":stateMachine:", ":execution:") + f":{job.job_id}"


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    job = DispatchInput.model_validate_json(record.body)
    execution_arn = admit(job)
    logger.info("admitted", job_id=job.job_id, priority=job.priority.value, execution_arn=execution_arn)
    metrics.add_metric(name="JobsAdmitted", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
