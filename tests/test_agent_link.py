"""The production path to an office GPU: pushes go over verified TLS, with the tunnel's service token."""

from __future__ import annotations

import json
import re

import httpx

from spillway import aws
from spillway.handlers import wiring

from conftest import ROOT, Cloud


def _pushed_headers(cloud: Cloud) -> httpx.Headers:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(202))
    wiring.agent_http(transport=transport).post("https://gpu-3.office.example.com/v1/tasks", json={})
    return seen[0].headers


def test_every_call_to_an_agent_carries_the_tunnel_headers(cloud: Cloud) -> None:
    token = {"CF-Access-Client-Id": "abc.access", "CF-Access-Client-Secret": "s3cret"}
    aws.client("secretsmanager").put_secret_value(SecretId=cloud.settings.agent_tunnel_secret_arn,
                                                  SecretString=json.dumps(token))
    headers = _pushed_headers(cloud)
    assert headers["cf-access-client-id"] == "abc.access" and headers["cf-access-client-secret"] == "s3cret"


def test_without_a_tunnel_token_nothing_is_added(cloud: Cloud) -> None:
    assert not [name for name in _pushed_headers(cloud) if name.startswith("cf-")]


def test_nothing_turns_tls_verification_off() -> None:
    sources = [*(ROOT / "functions").rglob("*.py"), *(ROOT / "infra").rglob("*.py")]
    offenders = [str(path.relative_to(ROOT)) for path in sources
                 if re.search(r"verify\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False", path.read_text())]
    assert offenders == []
