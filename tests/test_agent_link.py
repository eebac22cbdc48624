"""The production path to an office GPU: pushes go over verified TLS, with the tunnel's service token."""

from __future__ import annotations

import json
import re

import httpx
import yaml

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


def test_the_office_tunnel_config_guards_every_agent() -> None:
    """infra/office/cloudflared.yml: each GPU's hostname has Access checked by cloudflared itself (an
    `access` block only counts inside a rule), reaches its agent's loopback port, and nothing else goes through."""
    config = yaml.safe_load((ROOT / "infra/office/cloudflared.yml").read_text())
    *rules, last = config["ingress"]
    assert "access" not in config.get("originRequest", {}) and last == {"service": "http_status:404"}
    for n, rule in enumerate(rules):
        assert rule["hostname"] == f"local-{n}.gpu.<DOMAIN>"
        assert rule["service"] == f"http://127.0.0.1:900{n}"  # spillway-agent@N listens there
        assert rule["originRequest"]["access"]["required"] is True
    unit = (ROOT / "infra/office/spillway-agent@.service").read_text()
    # The agent listens where the rule sends, and its GPU is enrolled with the rule's hostname as its URL.
    assert "--listen 127.0.0.1:900%i" in unit and "--url https://local-%i.gpu.<DOMAIN>" in unit
