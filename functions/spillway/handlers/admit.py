"""Intake queues -> one dispatch execution per job, named by the job id.

The execution's name is the job id, which makes the start exactly once however often SQS
delivers the message.
"""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway.handlers.wiring import admission
from spillway.models import DispatchInput

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    job = DispatchInput.model_validate_json(record.body)
    execution_arn = admission().start(job)
    logger.info("admitted", job_id=job.job_id, priority=job.priority.value, execution_arn=execution_arn)
    metrics.add_metric(name="JobsAdmitted", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
