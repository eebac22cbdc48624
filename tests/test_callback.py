"""The agent routes through the callback Lambda's handler: enrolled credentials, validation, what a beat may change."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spillway import aws, credentials

from conftest import Cloud
from helpers import LambdaContext, http_event

HEARTBEAT = {"gpu_id": "local-3", "vram_total_mb": 8000, "services": ["remove_furniture"]}
UNKNOWN_TASK = "t-" + "0" * 32


def handle(module: Any, method: str, path: str, body: Any, headers: dict[str, str], raw: str | None = None,
           function: str = "AgentCallbackFunction") -> tuple[int, dict]:
    response = module.handler(http_event(method, path, body, raw, headers), LambdaContext(function))
    return response["statusCode"], json.loads(response["body"])


def enroll(gpu_id: str = "local-3", url: str = "http://127.0.0.1:7003", pool: str = "local") -> str:
    """Enroll through the API's route, as `spillway fleet enroll` does; the agent's secret."""
    from spillway.handlers import api

    status, answer = handle(api, "PUT", f"/v1/fleet/{gpu_id}", {"pool": pool, "url": url, "vram_mb": 8000}, {},
                            function="ApiFunction")
    assert status == 200, answer
    return answer["secret"]


def call(path: str, body: Any, secret: str | None, raw: str | None = None, gpu_id: str = "local-3",
         task_secret: str | None = None) -> tuple[int, dict]:
    from spillway.handlers import callback

    headers = {"authorization": credentials.bearer(gpu_id, secret)} if secret is not None else {}
    if task_secret is not None:
        headers[credentials.TASK_SECRET_HEADER.lower()] = task_secret
    return handle(callback, "POST", path, body, headers, raw)


def gpu(cloud: Cloud, gpu_id: str = "local-3") -> dict | None:
    return aws.table(cloud.settings.fleet_table).get_item(Key={"gpu_id": gpu_id}).get("Item")


def test_an_enrolled_agents_heartbeat_registers_its_gpu_with_the_enrolled_pool_and_url(cloud: Cloud) -> None:
    secret = enroll()
    assert gpu(cloud)["credentials"][0]["secret_hash"] == credentials.secret_hash(secret), "only its hash is kept"
    assert secret not in json.dumps(gpu(cloud), default=str)
    assert call("/v1/agent/heartbeat", HEARTBEAT, secret) == (200, {"current": True})
    record = gpu(cloud)
    assert (record["pool"], record["url"], record["last_heartbeat"] > 0) == ("local", "http://127.0.0.1:7003", True)


@pytest.mark.parametrize("secret", [None, "", "not-the-secret"])
def test_without_the_gpus_secret_nothing_is_written(cloud: Cloud, secret: str | None) -> None:
    enroll()
    status, body = call("/v1/agent/heartbeat", HEARTBEAT, secret)
    assert status == 401 and "credential" in body["message"]
    assert "last_heartbeat" not in gpu(cloud)


def test_an_unenrolled_gpu_cannot_register_itself(cloud: Cloud) -> None:
    secret = enroll("local-3")
    status, _ = call("/v1/agent/heartbeat", HEARTBEAT | {"gpu_id": "rogue-1"}, secret, gpu_id="rogue-1")
    assert status == 401
    assert gpu(cloud, "rogue-1") is None


def test_a_credential_speaks_for_its_own_gpu_only(cloud: Cloud) -> None:
    secret = enroll("local-3")
    enroll("local-4", url="http://127.0.0.1:7004")
    status, body = call("/v1/agent/heartbeat", HEARTBEAT | {"gpu_id": "local-4"}, secret)
    assert status == 403 and "local-4" in body["message"]
    assert "last_heartbeat" not in gpu(cloud, "local-4")


@pytest.mark.parametrize("field,value", [("pool", "cloud"), ("url", "https://elsewhere.example.com")])
def test_a_heartbeat_cannot_change_the_gpus_pool_or_url(cloud: Cloud, field: str, value: str) -> None:
    secret = enroll()
    status, body = call("/v1/agent/heartbeat", HEARTBEAT | {field: value}, secret)
    assert status == 422 and field in body["message"]
    assert (gpu(cloud)["pool"], gpu(cloud)["url"]) == ("local", "http://127.0.0.1:7003")


def test_a_rotated_secret_and_the_previous_one_both_work_during_the_window(cloud: Cloud) -> None:
    from spillway.handlers import api

    old = enroll()
    status, rotated = handle(api, "POST", "/v1/fleet/local-3/rotate", None, {}, function="ApiFunction")
    assert status == 200 and rotated["secret"] != old and rotated["previous_valid_until"]
    for secret in (old, rotated["secret"]):
        assert call("/v1/agent/heartbeat", HEARTBEAT, secret)[0] == 200
    assert [c.get("valid_until") is None for c in gpu(cloud)["credentials"]] == [True, False]


def test_enrolling_again_replaces_the_secret_at_once(cloud: Cloud) -> None:
    old = enroll()
    new = enroll()
    assert call("/v1/agent/heartbeat", HEARTBEAT, old)[0] == 401
    assert call("/v1/agent/heartbeat", HEARTBEAT, new)[0] == 200


def test_rotating_an_unenrolled_gpu_is_a_404(cloud: Cloud) -> None:
    from spillway.handlers import api

    assert handle(api, "POST", "/v1/fleet/local-9/rotate", None, {}, function="ApiFunction")[0] == 404


@pytest.mark.parametrize(
    "body,raw,reason",
    [
        (HEARTBEAT | {"vram_total_mb": -1}, None, "vram_total_mb"),
        (None, "{oops", "JSON"),
    ],
)
def test_malformed_heartbeats_get_a_reason(cloud: Cloud, body: Any, raw: str | None, reason: str) -> None:
    secret = enroll()
    status, answer = call("/v1/agent/heartbeat", body, secret, raw)
    assert status == 422 and reason in answer["message"]
    assert "last_heartbeat" not in gpu(cloud)


@pytest.mark.parametrize(
    "enrollment,reason",
    [
        ({"pool": "faas", "url": "https://gpu-3.office.example.com", "vram_mb": 8000}, "pool"),
        ({"pool": "local", "vram_mb": 8000}, "url"),
        ({"pool": "local", "url": "http://gpu-3.office.example.com", "vram_mb": 8000}, "https://"),  # in clear
        ({"pool": "local", "url": "http://10.0.0.7:7003", "vram_mb": 8000}, "https://"),
    ],
)
def test_malformed_enrollments_get_a_reason(cloud: Cloud, enrollment: dict, reason: str) -> None:
    from spillway.handlers import api

    status, answer = handle(api, "PUT", "/v1/fleet/local-3", enrollment, {}, function="ApiFunction")
    assert status == 422 and reason in answer["message"]
    assert gpu(cloud) is None


@pytest.mark.parametrize("url", ["https://gpu-3.office.example.com", "http://localhost:7003", "http://[::1]:7003"])
def test_an_agent_url_is_https_or_on_loopback(cloud: Cloud, url: str) -> None:
    secret = enroll(url=url)
    assert call("/v1/agent/heartbeat", HEARTBEAT, secret)[0] == 200


def test_a_result_for_an_unknown_task_is_a_404(cloud: Cloud) -> None:
    secret = enroll()
    result = {"gpu_id": "local-3", "outcome": "succeeded", "duration_ms": 10}
    status, body = call(f"/v1/agent/tasks/{UNKNOWN_TASK}/result", result, secret, task_secret="x" * 43)
    assert status == 404 and body["message"]


def test_a_malformed_task_id_is_a_422(cloud: Cloud) -> None:
    secret = enroll()
    status, body = call("/v1/agent/tasks/t-nope/heartbeat", {"gpu_id": "local-3"}, secret, task_secret="x" * 43)
    assert status == 422 and "task_id" in body["message"]
