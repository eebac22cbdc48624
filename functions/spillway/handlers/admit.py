"""Intake queues -> one dispatch execution per job, named by the job id.

The execution's name is the job id, which makes the start exactly once however often SQS
delivers the message. A message admission could not handle comes again (a batch item failure); on its
last receive (the queue's maxReceiveCount, `AdmissionTries`) the job fails with why instead.
"""

import functools

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway.handlers.wiring import admission, router
from spillway.logs import job_keys
from spillway.metrics import Metric, emit
from spillway.models import DispatchInput
from spillway.routing.router import SharedFleet
from spillway.settings import settings

logger = Logger()
tracer = Tracer()
processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def record_handler(record: SQSRecord, fleet: SharedFleet | None = None) -> None:
    job = DispatchInput.model_validate_json(record.body)
    receives = int(record.attributes.approximate_receive_count or 1)
    with logger.append_context_keys(**job_keys(job.job_id)):
        execution_arn = admission().start(job, last_try=receives >= settings().intake_max_receives, fleet=fleet)
        if execution_arn is None:
            logger.info("no execution: the job ended, at admission or before", receives=receives)
            return
        logger.info("admitted", priority=job.priority.value, execution_arn=execution_arn)
    emit(Metric.JOBS_ADMITTED, Priority=job.priority.value)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    # One read of the fleet routes the whole batch: a burst of submits reads it once per batch, not per job.
    fleet = router().shared_fleet()
    return process_partial_response(event=event, record_handler=functools.partial(record_handler, fleet=fleet),
                                    processor=processor, context=context)
