"""The domain objects the handlers share, made once per container from the template's settings."""

import time
from collections.abc import Callable
from functools import cache
from typing import Any

import httpx
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities import parameters
from pydantic import TypeAdapter

from spillway import aws, credentials, metrics, signing
from spillway.admission import Admission
from spillway.budget import BudgetLedger
from spillway.cancel import Cancellation
from spillway.credentials import AgentAuth
from spillway.dispatch import PUSH_TIMEOUT, Dispatcher, Limits
from spillway.endings import JobEndings
from spillway.faas.dispatcher import FaasDispatcher
from spillway.faas.runpod import TIMEOUT as FAAS_TIMEOUT
from spillway.faas.runpod import RunPodProvider
from spillway.fleet import Fleet, Gpu
from spillway.fleet_ops import FleetOperations
from spillway.health import GpuHealth, HealthEvent
from spillway.jobs import JobStore
from spillway.limits import TenantLimits
from spillway.models import Pool
from spillway.reconcile import Reconciler
from spillway.reports import TaskReports
from spillway.routing import rules
from spillway.routing.router import Router
from spillway.settings import settings
from spillway.timers import TimerQueue
from spillway.waiting_room import WaitingRoom
from spillway.webhooks import TIMEOUT as WEBHOOK_TIMEOUT
from spillway.webhooks import WebhookSender

logger = Logger(child=True)

SECRET_CACHE_SECONDS = 300  # the control key's, the FaaS API key's and the webhook keys': a rotation is live within it
RULES_CACHE_SECONDS = 60  # a change of the routing rules parameter is live within a minute
ENROLLED_CACHE_SECONDS = 60  # a GPU enrolled (or resized) counts in the submit check within a minute


def control_key() -> bytes:
    """The control plane's key: derives agents' secrets and tasks' ids and secrets (see spillway.credentials)."""
    return str(parameters.get_secret(settings().control_key_secret_arn, max_age=SECRET_CACHE_SECONDS)).encode()


@cache
def agent_auth() -> AgentAuth:
    """Checks the credential an agent presents against its enrollment (hashes only: it cannot make one)."""
    return AgentAuth(fleet().enrollment)


_HEADERS = TypeAdapter(dict[str, str])


def tunnel_headers() -> dict[str, str]:
    """What the office tunnel's edge wants on every call to an agent (Cloudflare Access's service token:
    CF-Access-Client-Id and -Secret), from its secret; {} when there is none."""
    raw = parameters.get_secret(settings().agent_tunnel_secret_arn, max_age=SECRET_CACHE_SECONDS)
    return _HEADERS.validate_json(str(raw))


def agent_http(**options: Any) -> httpx.Client:
    """The client for pushes and probes: TLS verified (httpx's default, never turned off here; a deployed
    agent URL is https://, see models.AgentUrl), the tunnel's headers added to every request."""
    def through_the_tunnel(request: httpx.Request) -> None:
        request.headers.update(tunnel_headers())

    return httpx.Client(timeout=PUSH_TIMEOUT, event_hooks={"request": [through_the_tunnel]}, **options)


def health_transitioned(gpu: Gpu, event: HealthEvent) -> None:
    """Every GPU health transition: a log line, and its metrics (see `metrics.gpu_health_changed`)."""
    log = logger.warning if event.to in (GpuHealth.DOWN, GpuHealth.QUARANTINED, GpuHealth.SUSPECT) else logger.info
    log("gpu health", gpu_id=gpu.gpu_id, pool=gpu.pool.value, health_from=event.from_.value,
        health_to=event.to.value, reason=event.reason, detect_s=event.detect_s)
    metrics.gpu_health_changed(gpu.pool, event)


@cache
def fleet() -> Fleet:
    s = settings()
    return Fleet(aws.table(s.fleet_table), aws.table(s.tasks_table), s.jobs_table,
                 WaitingRoom(aws.table(s.waiting_room_table)), aws.client("dynamodb"),
                 health_policy=s.health_policy(), transitioned=health_transitioned)


@cache
def enrolled_gpus() -> Callable[[], list[Gpu]]:
    """Every enrolled GPU, healthy or not, read at most once a minute (the submit check's: a fleet changes
    seldom); while none has enrolled, read each time."""
    kept: list[tuple[float, list[Gpu]]] = []

    def read() -> list[Gpu]:
        now = time.monotonic()
        if not kept or now - kept[0][0] > ENROLLED_CACHE_SECONDS:
            gpus = fleet().all_gpus()
            kept[:] = [(now, gpus)] if gpus else []
            return gpus
        return kept[0][1]

    return read


@cache
def dispatcher() -> Dispatcher:
    s = settings()
    return Dispatcher(
        fleet=fleet(),
        timers=TimerQueue(aws.client("sqs"), s.timers_queue_url),
        s3=aws.client("s3"),
        sfn=aws.client("stepfunctions"),
        http=agent_http(),
        bucket=s.images_bucket,
        limits=Limits(heartbeat_seconds=s.heartbeat_seconds, attempt_timeout_seconds=s.attempt_timeout_seconds,
                      agent_stale_seconds=s.agent_stale_seconds),
        control_key=control_key,
    )


@cache
def fleet_operations() -> FleetOperations:
    return FleetOperations(fleet(), control_key)


@cache
def reports() -> TaskReports:
    # A result frees a slot: pump that pool's waiting room at once.
    return TaskReports(fleet(), aws.client("stepfunctions"), jobs(), freed=lambda task: dispatcher().pump(task.pool),
                       endings=endings())


@cache
def admission() -> Admission:
    s = settings()
    return Admission(aws.client("stepfunctions"), s.dispatch_state_machine_arn, s.attempt_timeout_seconds,
                     first_route=lambda job_id, fleet: router().route(job_id, after=0, fleet=fleet),
                     fail=lambda job_id, reason: router().fail(job_id, reason),
                     ended=lambda job_id: reconciler().reconcile_id(job_id))


@cache
def jobs() -> JobStore:
    return JobStore(aws.table(settings().jobs_table))


@cache
def tenant_limits() -> TenantLimits:
    s = settings()
    return TenantLimits(aws.table(s.tenants_table), aws.client("dynamodb"), s.jobs_table, s.tenant_limits)


@cache
def reconciler() -> Reconciler:
    return Reconciler(jobs(), aws.client("stepfunctions"), admission(), tenant_limits(), endings=endings())


@cache
def endings() -> JobEndings:
    return JobEndings(jobs(), aws.client("sqs"), settings().webhook_queue_url)


@cache
def cancellation() -> Cancellation:
    def on_a_gpu(job_id: str, attempt: int) -> str:
        return dispatcher().cancel(credentials.task_id_for(control_key(), job_id, attempt))

    def on_faas(job_id: str, attempt: int) -> str:
        return faas_dispatcher().cancel(credentials.faas_task_id(job_id, attempt))

    by_pool = {Pool.LOCAL: on_a_gpu, Pool.CLOUD: on_a_gpu, Pool.FAAS: on_faas}
    return Cancellation(jobs(), aws.client("stepfunctions"), admission().execution_arn, by_pool, endings())


def webhook_secrets() -> list[bytes]:
    """The deployment's signing secrets, newest first (two while rotating: receivers move to the new one)."""
    raw = str(parameters.get_secret(settings().webhook_signing_secret_arn, max_age=SECRET_CACHE_SECONDS))
    return [signing.secret_bytes(s) for s in raw.split()]


@cache
def webhook_sender() -> WebhookSender:
    # No proxy from the environment: a proxy would resolve the name itself, past the sender's check of its address.
    return WebhookSender(jobs(), httpx.Client(timeout=WEBHOOK_TIMEOUT, trust_env=False), webhook_secrets,
                         allow_loopback=settings().allow_loopback_webhooks)


def routing_rules() -> rules.RoutingRules:
    """The rules file with the stack's overrides (an SSM parameter holding JSON) merged over it. Overrides
    that do not validate are logged and ignored: the last valid rules (else the file's) stay in force."""
    overrides = str(parameters.get_parameter(settings().routing_rules_parameter, max_age=RULES_CACHE_SECONDS))
    try:
        _valid_rules[0] = _rules_with(overrides)
    except ValueError:
        logger.exception("the routing rules parameter does not validate: keeping the last valid rules",
                         parameter=settings().routing_rules_parameter)
    return _valid_rules[0]


_valid_rules = [rules.default_rules()]


@cache
def _rules_with(overrides: str) -> rules.RoutingRules:
    return rules.load(overrides)


@cache
def budget() -> BudgetLedger:
    return BudgetLedger(aws.table(settings().budget_table), aws.client("dynamodb"))


@cache
def router() -> Router:
    s = settings()
    return Router(jobs(), fleet(), budget(), routing_rules, s.pool_queue_urls, max_attempts=s.max_attempts,
                  max_legs=s.max_legs, stale_after=s.agent_stale_seconds, faas_enabled=bool(s.faas_endpoint_id),
                  endings=endings())


def webhook_key() -> bytes:
    """Signs the per-task webhook URLs the FaaS provider calls back."""
    return str(parameters.get_secret(settings().webhook_key_secret_arn, max_age=SECRET_CACHE_SECONDS)).encode()


@cache
def faas_dispatcher() -> FaasDispatcher:
    s = settings()
    provider = RunPodProvider(
        s.faas_base_url, s.faas_endpoint_id, http=httpx.Client(timeout=FAAS_TIMEOUT),
        api_key=lambda: str(parameters.get_secret(s.faas_api_key_secret_arn, max_age=SECRET_CACHE_SECONDS)))
    return FaasDispatcher(
        tasks=aws.table(s.tasks_table), jobs=aws.table(s.jobs_table), provider=provider, budget=budget(),
        timers=TimerQueue(aws.client("sqs"), s.timers_queue_url), s3=aws.client("s3"),
        sfn=aws.client("stepfunctions"), bucket=s.images_bucket, rules=routing_rules, endpoint_id=s.faas_endpoint_id,
        public_api_url=s.public_api_url, webhook_key=webhook_key, endings=endings(),
    )
