"""The webhooks queue -> each ended job's webhook told, signed; a failed delivery comes back after a backoff."""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway import aws
from spillway.handlers.wiring import webhook_sender
from spillway.logs import job_keys
from spillway.metrics import Metric, emit
from spillway.models import WebhookNotice
from spillway.settings import settings
from spillway.webhooks import DeliveryFailed, NotYet, retry_delay

logger = Logger()
tracer = Tracer()
processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    notice = WebhookNotice.model_validate_json(record.body)
    logger.append_keys(**job_keys(notice.job_id))
    try:
        outcome = webhook_sender().deliver(notice.job_id)
    except (NotYet, DeliveryFailed) as again:
        tries = int(record.attributes.approximate_receive_count or 1)
        delay = retry_delay(tries)
        logger.warning("webhook not delivered: retried", reason=str(again), tries=tries, retry_in_s=delay)
        if isinstance(again, DeliveryFailed):
            emit(Metric.WEBHOOK_DELIVERIES, Outcome="failed")
        aws.client("sqs").change_message_visibility(QueueUrl=settings().webhook_queue_url,
                                                    ReceiptHandle=record.receipt_handle, VisibilityTimeout=delay)
        raise
    if outcome in ("delivered", "dropped", "refused"):
        emit(Metric.WEBHOOK_DELIVERIES, Outcome=outcome)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
