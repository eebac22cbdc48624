"""RunPod serverless as a FaaS provider: its async job API, spoken over httpx.

    POST {base}/v2/{endpoint_id}/run          {"input": {...}, "webhook": url, "policy": {...}}
    GET  {base}/v2/{endpoint_id}/status/{id}  {"id", "status", "delayTime", "executionTime", "output" | "error"}
    POST {base}/v2/{endpoint_id}/cancel/{id}  {"id", "status"}

with `Authorization: Bearer <api key>`. Times in RunPod's answers and policy are milliseconds.
Every request carries explicit timeouts: a provider that does not answer fails the call in seconds.
A submit is never retried here: RunPod's /run has no idempotency key, and a retried submit whose
first try did reach RunPod would run (and bill) the job twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from spillway.faas.provider import (
    FaasRefused,
    FaasRejected,
    FaasRequest,
    FaasState,
    FaasStatus,
    FaasUnavailable,
)

DEFAULT_BASE_URL = "https://api.runpod.ai"
TIMEOUT = httpx.Timeout(connect=2.0, read=10.0, write=10.0, pool=2.0)

# RunPod's job states; newer documentation calls a running job RUNNING.
_STATES = {state.value: state for state in FaasState} | {"RUNNING": FaasState.IN_PROGRESS}
# Nothing was started: the caller may spend its reservation elsewhere.
_REFUSED = (429, 503)
# Raised before a byte of the request left: the provider cannot have seen it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class RunPodProvider:
    def __init__(self, base_url: str, endpoint_id: str, api_key: Callable[[], str], http: httpx.Client,
                 timeout: httpx.Timeout = TIMEOUT):
        self._endpoint = f"{base_url.rstrip('/')}/v2/{quote(endpoint_id, safe='')}"
        self._api_key = api_key  # read on every call, so a rotated key is picked up
        self._http = http
        self.timeout = timeout

    def submit(self, request: FaasRequest) -> str:
        policy: dict[str, int] = {"executionTimeout": request.execution_timeout_s * 1000}
        if request.ttl_s is not None:
            policy["ttl"] = request.ttl_s * 1000
        body: dict[str, Any] = {
            "input": {"service": request.service, "input_url": str(request.input_url),
                      "output_url": str(request.output_url), "task_id": request.task_id},
            "policy": policy,
        }
        if request.webhook_url is not None:
            body["webhook"] = str(request.webhook_url)
        answer = self._call("POST", "/run", body)
        job_id = answer.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise FaasUnavailable(f"RunPod accepted the job without an id: {_short(answer)}")
        return job_id

    def status(self, job_id: str) -> FaasStatus:
        return parse_status(self._call("GET", f"/status/{quote(job_id, safe='')}"), job_id)

    def cancel(self, job_id: str) -> FaasStatus:
        return parse_status(self._call("POST", f"/cancel/{quote(job_id, safe='')}"), job_id)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        what = f"RunPod {method} {path.split('/')[1]}"
        try:
            response = self._http.request(
                method, self._endpoint + path, json=body, timeout=self.timeout,
                headers={"Authorization": f"Bearer {self._api_key()}", "Accept": "application/json"},
            )
        except _NOT_SENT as exc:
            raise FaasUnavailable(f"{what}: {type(exc).__name__}: {exc}", request_sent=False) from exc
        except httpx.TransportError as exc:  # read/write timeout, connection dropped mid-way, ...
            raise FaasUnavailable(f"{what}: {type(exc).__name__}: {exc}", request_sent=True) from exc

        status = response.status_code
        if status in _REFUSED:
            raise FaasRefused(f"{what}: {status} {response.text[:200]}", status, _retry_after(response))
        if 400 <= status < 500:
            raise FaasRejected(f"{what}: {status} {response.text[:200]}", status)
        if not 200 <= status < 300:
            raise FaasUnavailable(f"{what}: {status} {response.text[:200]}", status)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise FaasUnavailable(f"{what}: {status} with a body that is not a JSON object: {response.text[:200]}",
                                  status)
        return answer


def parse_status(answer: dict[str, Any], job_id: str | None = None) -> FaasStatus:
    """A RunPod job status answer (/status, /cancel) as a FaasStatus. Raises
    FaasUnavailable for a state this adapter does not know: treat the job as not yet known."""
    state = _STATES.get(str(answer.get("status")))
    if state is None:
        raise FaasUnavailable(f"RunPod answered an unknown job status: {_short(answer)}")
    return FaasStatus(
        job_id=str(answer.get("id") or job_id or ""),
        state=state,
        delay_ms=_ms(answer.get("delayTime")),
        execution_ms=_ms(answer.get("executionTime")),
        error=error_text(answer.get("error")),
        output=answer.get("output"),
    )


def error_text(error: Any, limit: int = 2000) -> str | None:
    """RunPod's `error` as text. A worker built on RunPod's SDK reports an unhandled exception as a JSON
    object in a string (`error_type`, `error_message`, `error_traceback`): keep its message, so that a
    kind prefix in it still counts (see `FaasFailureKind`)."""
    if error is None or error == "":
        return None
    if isinstance(error, str):
        try:
            parsed = json.loads(error)
        except ValueError:
            parsed = None
        error = parsed if isinstance(parsed, dict) else error
    if isinstance(error, dict):
        error = error.get("error_message") or json.dumps(error, sort_keys=True)
    return str(error)[:limit]


def _ms(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return round(value)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _short(answer: Any) -> str:
    return json.dumps(answer, default=str)[:200]
