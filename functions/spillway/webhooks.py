"""Completion webhooks: a job that ends (SUCCEEDED, FAILED, CANCELLED) tells its `webhook_url` once.

Whoever ends a job queues a notice naming it (`endings.JobEndings`); the sender Lambda reads the record —
its end is the record's, never the notice's — and POSTs a `JobEvent` signed Standard-Webhooks style
(`signing.py`) with the deployment's signing secret(s) from Secrets Manager. `webhook-id` is the same on
every retry of an event, so receivers dedupe on it. A failed delivery (no answer, not 2xx) is retried with
exponential backoff through the queue's visibility timeout, then dead-lettered. A delivered event is noted
on the job (`webhook_delivered_at`), so a repeated notice sends nothing.

Where it is sent is checked at send time, on the addresses the host name resolves to then (not only the URL's
text, checked at submit): every one must be public (loopback too, offline), or the webhook is refused for good,
its reason on the job (`webhook_error`). The connection goes to the address checked (the name in `Host` and TLS's
SNI, so the certificate is still verified for it): a name re-pointed in between (DNS rebinding) cannot move it.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from aws_lambda_powertools import Logger
from pydantic import TypeAdapter, ValidationError

from spillway import signing
from spillway.jobs import JobRecord, JobStore
from spillway.models import JobEvent, JobEventData, JobEventType, WebhookUrl, is_loopback

logger = Logger(child=True)

TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=3.0)
FIRST_RETRY_S = 2  # then 4, 8, ... (the queue's visibility timeout per receive)
LONGEST_RETRY_S = 15 * 60
USER_AGENT = "Spillway-Webhooks/1"


class NotYet(Exception):
    """The job's end is not on its record yet (the writer that ends it queued the notice just before)."""


class DeliveryFailed(Exception):
    """The receiver did not take the event: it is retried."""


class Refused(Exception):
    """The webhook may not be called from here: never retried, its reason recorded on the job."""


Resolve = Callable[[str, int], list[str]]  # a host name and port -> the addresses it resolves to


def resolve(host: str, port: int) -> list[str]:
    """In the system's order of preference (the first is connected to), each once."""
    return list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


@dataclass(frozen=True)
class Target:
    """Where a webhook is sent: its URL with the host name replaced by the address checked."""

    url: httpx.URL
    host: str  # the name: TLS's SNI and the certificate's check
    netloc: str  # the `Host` header

    @classmethod
    def of(cls, url: str, resolve: Resolve, allow_loopback: bool) -> Target:
        """Resolve the URL's host; Refused if any address is not public (or loopback, when allowed); OSError
        (retried) if it does not resolve."""
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")  # an international name as DNS and TLS know it (IDNA)
        addresses = resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if not (ip.is_global or (allow_loopback and ip.is_loopback)):
                raise Refused(f"a webhook_url must reach a public address: {host} resolves to {address}")
        return cls(parsed.copy_with(host=addresses[0]), host, parsed.netloc.decode("ascii"))


def refusal(url: str, allow_loopback: bool) -> str | None:
    """Why a webhook_url cannot be called from here, or None: loopback is this machine, fine offline (the
    embedded stack's receivers) and never on AWS (the function's own runtime API listens there)."""
    try:
        parsed = _WEBHOOK_URL.validate_python(url)
    except ValidationError as invalid:
        return invalid.errors()[0]["msg"]
    if is_loopback(parsed) and not allow_loopback:
        return "a webhook_url must reach a public https:// address, not this machine (loopback)"
    return None


_WEBHOOK_URL = TypeAdapter(WebhookUrl)


def retry_delay(receive_count: int) -> int:
    """Seconds until the next try after the `receive_count`-th failed one."""
    return min(FIRST_RETRY_S * 2 ** max(0, receive_count - 1), LONGEST_RETRY_S)


def event_id(job: JobRecord) -> str:
    """Stable per event: a job ends once, so its id and end name the event, on every retry."""
    return f"msg_{job.job_id}_{job.status.value.lower()}"


def event_for(job: JobRecord) -> JobEvent:
    view = job.view()
    return JobEvent(type=JobEventType.of(job.status), timestamp=job.finished_at or job.updated_at,
                    data=JobEventData(job_id=job.job_id, status=job.status, service=job.service,
                                      finished_at=job.finished_at, error=job.error, cost_usd=view.cost_usd))


class WebhookSender:
    def __init__(self, jobs: JobStore, http: httpx.Client, secrets: Callable[[], list[bytes]],
                 allow_loopback: bool, clock: Callable[[], float] = time.time, resolve: Resolve = resolve):
        self._jobs = jobs
        self._http = http
        self._secrets = secrets
        self._allow_loopback = allow_loopback
        self._clock = clock
        self._resolve = resolve

    def deliver(self, job_id: str) -> str:
        """Tell the job's webhook how it ended, once; raises NotYet or DeliveryFailed to be retried."""
        job = self._jobs.get(job_id)
        if job is None or not job.webhook_url:
            return "dropped"
        if not job.status.final:
            raise NotYet(f"job {job_id} is {job.status.value}: its end is not written yet")
        if job.webhook_delivered_at or job.webhook_error:
            return "over"
        try:
            if why := refusal(job.webhook_url, self._allow_loopback):
                raise Refused(why)
            target = Target.of(job.webhook_url, self._resolve, self._allow_loopback)
        except Refused as refused:
            logger.warning("webhook refused", job_id=job_id, reason=str(refused))
            self._jobs.webhook_refused(job_id, str(refused))
            return "refused"
        except OSError as exc:  # the name does not resolve (yet, or any more): tried again later
            raise DeliveryFailed(f"{job.webhook_url}: {exc!r}") from exc
        body = event_for(job).model_dump_json().encode()
        # Connection: close, as the pool keys connections by address: another name on the same address must not
        # ride on a connection whose TLS was verified for this one.
        headers = signing.sign(self._secrets(), event_id(job), body, self._clock()) | {
            "Content-Type": "application/json", "User-Agent": USER_AGENT, "Host": target.netloc,
            "Connection": "close"}
        try:
            # No redirects: a receiver's 3xx could point the signed event (and our network) anywhere.
            response = self._http.post(target.url, content=body, headers=headers, timeout=TIMEOUT,
                                       follow_redirects=False, extensions={"sni_hostname": target.host})
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{job.webhook_url}: {exc!r}") from exc
        if not response.is_success:
            raise DeliveryFailed(f"{job.webhook_url} answered {response.status_code}: {response.text[:200]}")
        self._jobs.webhook_delivered(job_id, self._clock())
        logger.info("webhook delivered", job_id=job_id, status=job.status.value, answer=response.status_code)
        return "delivered"
