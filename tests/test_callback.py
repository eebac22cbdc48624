"""The agent routes through the callback Lambda's handler: the agent key, validation, registration."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spillway import aws

from conftest import Cloud
from helpers import LambdaContext, http_event

HEARTBEAT = {"gpu_id": "local-3", "pool": "local", "url": "http://127.0.0.1:7003", "vram_total_mb": 8000,
             "services": ["remove_furniture"]}
UNKNOWN_TASK = "t-" + "0" * 32


def agent_key(cloud: Cloud) -> str:
    return aws.client("secretsmanager").get_secret_value(SecretId=cloud.settings.agent_key_secret_arn)["SecretString"]


def call(path: str, body: Any, key: str | None, raw: str | None = None) -> tuple[int, dict]:
    from spillway.handlers import callback

    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    response = callback.handler(http_event("POST", path, body, raw, headers), LambdaContext("AgentCallbackFunction"))
    return response["statusCode"], json.loads(response["body"])


def registered(cloud: Cloud) -> int:
    return aws.table(cloud.settings.fleet_table).scan()["Count"]


def test_a_heartbeat_with_the_agent_key_registers_the_gpu(cloud: Cloud) -> None:
    assert call("/v1/agent/heartbeat", HEARTBEAT, agent_key(cloud)) == (200, {"current": True})
    assert registered(cloud) == 1


@pytest.mark.parametrize("key", [None, "", "not-the-key"])
def test_without_the_agent_key_nothing_is_written(cloud: Cloud, key: str | None) -> None:
    status, body = call("/v1/agent/heartbeat", HEARTBEAT, key)
    assert status == 401 and "agent key" in body["message"]
    assert registered(cloud) == 0


@pytest.mark.parametrize(
    "body,raw,reason",
    [
        (HEARTBEAT | {"vram_total_mb": -1}, None, "vram_total_mb"),
        (HEARTBEAT | {"pool": "faas"}, None, "pool"),
        ({k: v for k, v in HEARTBEAT.items() if k != "url"}, None, "url"),
        (HEARTBEAT | {"url": "http://gpu-3.office.example.com"}, None, "https://"),  # pushes in clear
        (HEARTBEAT | {"url": "http://10.0.0.7:7003"}, None, "https://"),
        (None, "{oops", "JSON"),
    ],
)
def test_malformed_heartbeats_get_a_reason(cloud: Cloud, body: Any, raw: str | None, reason: str) -> None:
    status, answer = call("/v1/agent/heartbeat", body, agent_key(cloud), raw)
    assert status == 422 and reason in answer["message"]
    assert registered(cloud) == 0


@pytest.mark.parametrize("url", ["https://gpu-3.office.example.com", "http://localhost:7003", "http://[::1]:7003"])
def test_an_agent_url_is_https_or_on_loopback(cloud: Cloud, url: str) -> None:
    assert call("/v1/agent/heartbeat", HEARTBEAT | {"url": url}, agent_key(cloud))[0] == 200
    assert registered(cloud) == 1


def test_a_result_for_an_unknown_task_is_a_404(cloud: Cloud) -> None:
    result = {"gpu_id": "local-3", "outcome": "succeeded", "duration_ms": 10}
    status, body = call(f"/v1/agent/tasks/{UNKNOWN_TASK}/result", result, agent_key(cloud))
    assert status == 404 and body["message"]


def test_a_malformed_task_id_is_a_422(cloud: Cloud) -> None:
    status, body = call("/v1/agent/tasks/t-nope/heartbeat", {"gpu_id": "local-3"}, agent_key(cloud))
    assert status == 422 and "task_id" in body["message"]
