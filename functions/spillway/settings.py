"""What the control plane is made of, read from the environment the template gives every function."""

from __future__ import annotations

import os
from functools import cache

from pydantic import BaseModel, ValidationError

from spillway.health import HealthPolicy
from spillway.limits import TenantLimitSettings
from spillway.models import Pool, Priority


class Settings(BaseModel, frozen=True):
    jobs_table: str
    fleet_table: str
    tasks_table: str
    waiting_room_table: str
    idempotency_table: str
    images_bucket: str
    intake_queue_urls: dict[Priority, str]
    intake_max_receives: int  # the intake queues' maxReceiveCount: admission's last try fails the job, with why
    timers_queue_url: str
    dispatch_state_machine_arn: str
    control_key_secret_arn: str  # the control plane's key (spillway.credentials)
    agent_tunnel_secret_arn: str  # JSON headers for every call to an agent ({} for none)
    heartbeat_seconds: int
    attempt_timeout_seconds: int
    agent_stale_seconds: int
    suspect_seconds: int
    health_probe_failures: int
    quarantine_after_errors: int
    quarantine_seconds: int
    quarantine_rounds: int
    max_attempts: int
    max_legs: int
    budget_table: str
    pool_queue_urls: dict[Pool, str]  # where the state machine sends an attempt: the Router puts it on the route
    routing_rules_parameter: str
    faas_base_url: str
    faas_endpoint_id: str  # empty: no FaaS pool
    faas_api_key_secret_arn: str
    webhook_key_secret_arn: str
    public_api_url: str
    tenants_table: str
    tenant_limits: TenantLimitSettings
    webhook_queue_url: str  # job ends to tell their webhooks (webhooks.py)
    webhook_signing_secret_arn: str  # the deployment's Standard Webhooks secret(s), newest first, space-separated
    allow_loopback_webhooks: bool  # offline only: receivers on this machine

    def health_policy(self) -> HealthPolicy:
        return HealthPolicy(stale_seconds=self.agent_stale_seconds, suspect_seconds=self.suspect_seconds,
                            probe_failures=self.health_probe_failures, model_errors=self.quarantine_after_errors,
                            quarantine_seconds=self.quarantine_seconds, quarantine_rounds=self.quarantine_rounds)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        try:
            return cls(
                jobs_table=env["JOBS_TABLE"],
                fleet_table=env["FLEET_TABLE"],
                tasks_table=env["TASKS_TABLE"],
                waiting_room_table=env["WAITING_ROOM_TABLE"],
                idempotency_table=env["IDEMPOTENCY_TABLE"],
                images_bucket=env["IMAGES_BUCKET"],
                intake_queue_urls={p: env[f"INTAKE_{p.value.upper()}_QUEUE_URL"] for p in Priority},
                intake_max_receives=env["INTAKE_MAX_RECEIVES"],
                timers_queue_url=env["TIMERS_QUEUE_URL"],
                dispatch_state_machine_arn=env["DISPATCH_STATE_MACHINE_ARN"],
                control_key_secret_arn=env["CONTROL_KEY_SECRET_ARN"],
                agent_tunnel_secret_arn=env["AGENT_TUNNEL_SECRET_ARN"],
                heartbeat_seconds=env["HEARTBEAT_SECONDS"],
                attempt_timeout_seconds=env["ATTEMPT_TIMEOUT_SECONDS"],
                agent_stale_seconds=env["AGENT_STALE_SECONDS"],
                suspect_seconds=env["SUSPECT_SECONDS"],
                health_probe_failures=env["HEALTH_PROBE_FAILURES"],
                quarantine_after_errors=env["QUARANTINE_AFTER_ERRORS"],
                quarantine_seconds=env["QUARANTINE_SECONDS"],
                quarantine_rounds=env["QUARANTINE_ROUNDS"],
                max_attempts=env["MAX_ATTEMPTS"],
                max_legs=env["MAX_LEGS"],
                budget_table=env["BUDGET_TABLE"],
                pool_queue_urls={p: env[f"{p.value.upper()}_QUEUE_URL"] for p in Pool},
                routing_rules_parameter=env["ROUTING_RULES_PARAMETER"],
                faas_base_url=env["FAAS_BASE_URL"],
                faas_endpoint_id=env["FAAS_ENDPOINT_ID"],
                faas_api_key_secret_arn=env["FAAS_API_KEY_SECRET_ARN"],
                webhook_key_secret_arn=env["WEBHOOK_KEY_SECRET_ARN"],
                public_api_url=env["PUBLIC_API_URL"],
                tenants_table=env["TENANTS_TABLE"],
                tenant_limits=TenantLimitSettings(
                    submits_per_second=env["TENANT_SUBMITS_PER_SECOND"], submit_burst=env["TENANT_SUBMIT_BURST"],
                    jobs_in_flight=env["TENANT_JOBS_IN_FLIGHT"]),
                webhook_queue_url=env["WEBHOOK_QUEUE_URL"],
                webhook_signing_secret_arn=env["WEBHOOK_SIGNING_SECRET_ARN"],
                allow_loopback_webhooks=env["ALLOW_LOOPBACK_WEBHOOKS"],
            )
        except KeyError as missing:
            raise RuntimeError(f"environment variable {missing} is not set; the template sets it") from None
        except ValidationError as invalid:
            raise RuntimeError(f"bad Spillway settings in the environment: {invalid}") from None


@cache
def settings() -> Settings:
    return Settings.from_env()
