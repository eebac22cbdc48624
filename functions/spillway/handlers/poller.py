"""Pool queues -> a leased GPU slot and a task pushed to its agent (the "poller").

One message per invocation (BatchSize 1): each push may wait on a slow tunnel, and a batch must
not hold a ready task behind one that waits for a GPU.
"""

from functools import cache

import httpx
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from spillway import aws
from spillway.dispatch import PUSH_TIMEOUT, Dispatcher
from spillway.errors import NoCapacity
from spillway.fleet import Fleet
from spillway.models import PoolTask
from spillway.settings import settings

# How long a task waits before it looks for a free GPU again. Short: the attempt's heartbeat
# window, not this, decides when a pool is too busy and the job spills over.
NO_CAPACITY_RETRY_SECONDS = 2
AGENT_KEY_CACHE_SECONDS = 300

logger = Logger()
tracer = Tracer()
metrics = Metrics()
# Waiting for a GPU is the normal case, not an invocation error: report the record as failed
# (it comes back in NO_CAPACITY_RETRY_SECONDS) without raising for a batch that failed whole.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@cache
def dispatcher() -> Dispatcher:
    s = settings()
    fleet = Fleet(aws.table(s.fleet_table), aws.table(s.tasks_table), s.jobs_table, aws.client("dynamodb"))
    return Dispatcher(
        fleet=fleet,
        s3=aws.client("s3"),
        sfn=aws.client("stepfunctions"),
        http=httpx.Client(timeout=PUSH_TIMEOUT),
        bucket=s.images_bucket,
        heartbeat_seconds=s.heartbeat_seconds,
        attempt_timeout_seconds=s.attempt_timeout_seconds,
        agent_stale_seconds=s.agent_stale_seconds,
        agent_key=lambda: str(parameters.get_secret(s.agent_key_secret_arn, max_age=AGENT_KEY_CACHE_SECONDS)),
    )


@cache
def queue_url(queue_arn: str) -> str:
    _, _, _, _, account, name = queue_arn.split(":")
    return aws.client("sqs").get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    queued = PoolTask.model_validate_json(record.body)
    logger.append_keys(job_id=queued.job_id, attempt=queued.attempt, pool=queued.pool.value)
    metrics.add_dimension(name="pool", value=queued.pool.value)
    try:
        outcome = dispatcher().dispatch(queued)
    except NoCapacity as busy:
        logger.info("waiting for a GPU", reason=str(busy))
        metrics.add_metric(name="NoCapacity", unit=MetricUnit.Count, value=1)
        # Back on the queue soon rather than after the full visibility timeout.
        aws.client("sqs").change_message_visibility(
            QueueUrl=queue_url(record.event_source_arn), ReceiptHandle=record.receipt_handle,
            VisibilityTimeout=NO_CAPACITY_RETRY_SECONDS,
        )
        raise
    metrics.add_metadata(key="job_id", value=queued.job_id)
    metrics.add_metric(name=f"Dispatch{outcome.title().replace('_', '')}", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
