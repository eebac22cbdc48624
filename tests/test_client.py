"""spillway.client without a stack: how it authenticates, what it sends, how it waits; and the SigV4 example in
docs/sigv4.md, run as written against a stand-in API."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from spillway.client import ApiError, Bearer, Client, SigV4, api_auth

from conftest import ROOT

DEPLOYED = "https://abc123.execute-api.eu-west-1.amazonaws.com"
JOB = "j-" + "0" * 32


def job(status: str) -> dict:
    return {"job_id": JOB, "status": status, "service": "upscale_2x", "priority": "normal", "segment": {},
            "input_key": "inputs/x.png", "width": 1, "height": 1, "vram_mb": 1, "created_at": "t", "updated_at": "t",
            "attempts": [], "cost_usd": 0.0}


def test_a_deployed_api_is_signed_with_sigv4_over_the_body_and_the_embedded_one_gets_the_bearer_token() -> None:
    assert isinstance(api_auth(DEPLOYED, token="ignored"), SigV4)
    assert isinstance(api_auth("http://127.0.0.1:8080", token="t0k"), Bearer)
    assert api_auth("http://127.0.0.1:8080") is None
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json=job("CANCELLED")))
    with Client(DEPLOYED, transport=transport) as client:
        client.cancel(JOB, "one reason")
        client.cancel(JOB, "another reason")
    first, second = (r.headers["Authorization"] for r in seen)
    assert re.match(r"AWS4-HMAC-SHA256 Credential=testing/\d{8}/eu-west-1/execute-api/aws4_request, "
                    r"SignedHeaders=content-type;host;x-amz-date, Signature=[0-9a-f]{64}$", first)
    assert first != second, "the body is signed"


KEY = "uploads/tn-" + "b" * 24 + "/" + "a" * 32 + ".png"  # an upload under its tenant's prefix


def test_the_upload_goes_to_the_storage_without_the_apis_credentials_and_errors_carry_the_reason() -> None:
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/uploads":
            return httpx.Response(200, json={"input_key": KEY, "upload_url": "http://storage.test/bucket",
                                             "fields": {"key": "k"}, "max_bytes": 10, "expires_in": 900})
        if request.url.host == "storage.test":
            return httpx.Response(204)
        return httpx.Response(422, json={"message": "the input is 1x1; too small"})

    with Client("http://127.0.0.1:8080", token="t0k", transport=httpx.MockTransport(api)) as client, \
            pytest.raises(ApiError) as refused:
        client.submit("upscale_2x", b"png")
    assert [r.headers.get("Authorization") for r in seen] == ["Bearer t0k", None, "Bearer t0k"]
    assert refused.value.status == 422 and "too small" in refused.value.message
    assert json.loads(seen[-1].content)["input_key"] == KEY


def test_wait_polls_until_the_job_ends_or_gives_up_on_the_clock() -> None:
    answers = iter(["QUEUED", "RUNNING", "SUCCEEDED"])
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json=job(next(answers))))
    now = [0.0]
    with Client("http://api.test", transport=transport, sleep=lambda s: now.__setitem__(0, now[0] + s),
                clock=lambda: now[0]) as client:
        assert client.wait(JOB, timeout=10, poll_s=2).status.value == "SUCCEEDED"
        assert now[0] == 4.0
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json=job("RUNNING")))
    with Client("http://api.test", transport=transport, sleep=lambda s: now.__setitem__(0, now[0] + s),
                clock=lambda: now[0]) as client, pytest.raises(TimeoutError, match="still RUNNING after 5 s"):
        client.wait(JOB, timeout=5, poll_s=1)


def test_the_docs_sigv4_example_signs_what_it_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    (example,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "sigv4.md").read_text(), re.S)
    sent: list[httpx.Request] = []

    def request(method: str, url: str, **options: object) -> httpx.Response:
        built = httpx.Request(method, url, content=options["content"], headers=options["headers"])
        sent.append(built)
        return httpx.Response(200, json={"ok": True}, request=built)

    monkeypatch.setattr(httpx, "request", request)
    exec(compile(example, "docs/sigv4.md", "exec"), {})
    assert [r.method for r in sent] == ["GET", "POST"]
    for r in sent:
        assert "/eu-west-1/execute-api/aws4_request" in r.headers["Authorization"] and r.headers["X-Amz-Date"]
    assert json.loads(sent[1].content) == {"reason": "changed my mind"}
