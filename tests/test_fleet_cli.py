"""`spillway fleet`: what it prints, where it finds the API, and how it signs for a deployed one."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from spillway import fleet_cli
from spillway.client import dev_stack

DEV_STACK = {"api_url": "http://127.0.0.1:8080", "tenants": {"default": "t0k", "acme": "acme-t0k"}}  # its stack.json
GPU = {"gpu_id": "local-2", "pool": "local", "health": "quarantined", "since": "2026-01-01T00:00:00+00:00",
       "vram_used_mb": 2500, "vram_total_mb": 8000,
       "compute_used": 45, "compute_total": 100, "running": ["t-1"], "slots": 2, "held": False,
       "last_heartbeat": "2026-01-01T00:00:00+00:00", "last_heartbeat_age_s": 3.2, "model_errors": 0, "quarantines": 1,
       "reason": "3 ModelErrors in a row; quarantine 1: a 120 s cool-down",
       "events": [{"at": "2026-01-01T00:00:00+00:00", "from": "healthy", "to": "quarantined", "reason": "3 ModelErrors",
                   "detect_s": 4.0}]}


def test_the_list_is_one_line_per_gpu_and_its_last_events_on_request() -> None:
    header, line = fleet_cli.table([GPU]).splitlines()
    assert header.split()[:4] == ["GPU", "POOL", "HEALTH", "FOR"]
    assert line.split()[:3] == ["local-2", "local", "quarantined"]
    assert "2500/8000 MB" in line and "45/100%" in line and "1/2" in line
    assert "3s ago" in line and line.endswith("cool-down")
    event = fleet_cli.table([GPU], events=1).splitlines()[-1]
    assert "healthy -> quarantined: 3 ModelErrors (detected in 4.0 s)" in event


def test_it_finds_a_running_spillway_dev_or_says_how_to_start_one(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text(json.dumps(DEV_STACK))
    assert dev_stack(tmp_path) == ("http://127.0.0.1:8080", "t0k")
    with pytest.raises(ValueError, match="no running `spillway dev`"):
        dev_stack(tmp_path / "nothing")


class Api:
    """Stands for the API at the bottom of the client's HTTP stack (httpx's transport): every request the CLI's
    client sends, answered from `answers` by method and path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, httpx.Response]) -> None:
        self.sent: list[httpx.Request] = []
        self.answers = answers
        monkeypatch.setattr(httpx.HTTPTransport, "handle_request", lambda _transport, request: self.handle(request))

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return self.answers[f"{request.method} {request.url.path}"]


def test_a_deployed_api_is_called_with_a_sigv4_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    api = Api(monkeypatch, {"GET /v1/fleet": httpx.Response(200, json={"gpus": []})})
    assert fleet_cli.main(["--api", "https://abc123.execute-api.eu-west-1.amazonaws.com"]) == 0
    (signed,) = api.sent
    assert signed.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/eu-west-1/execute-api/aws4_request" in signed.headers["Authorization"]


def test_it_calls_through_the_client_with_the_dev_stacks_token_and_its_models(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "stack.json").write_text(json.dumps(DEV_STACK))
    secret = {"gpu_id": "local-9", "secret": "s3cr3t", "generation": 1}
    api = Api(monkeypatch, {"GET /v1/fleet": httpx.Response(200, json={"gpus": [GPU]}),
                            "PUT /v1/fleet/local-9": httpx.Response(200, json=secret)})
    assert fleet_cli.main(["--state-dir", str(tmp_path), "--events", "1"]) == 0
    assert "healthy -> quarantined" in capsys.readouterr().out, "a health event's `from` read back by its alias"
    assert fleet_cli.main(["enroll", "local-9", "--pool", "local", "--url", "https://local-9.gpus.example.com",
                           "--vram-mb", "8000", "--state-dir", str(tmp_path)]) == 0
    assert "SPILLWAY_AGENT_SECRET=s3cr3t" in capsys.readouterr().out
    assert {r.headers["Authorization"] for r in api.sent} == {"Bearer t0k"}
    assert json.loads(api.sent[1].content) == {"pool": "local", "url": "https://local-9.gpus.example.com/",
                                               "vram_mb": 8000}


def test_a_refusal_is_the_apis_reason_and_a_bad_enrollment_is_refused_before_any_call(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(monkeypatch, {"POST /v1/fleet/local-0/drain": httpx.Response(
        409, json={"message": "local-0 is draining already"})})
    assert fleet_cli.main(["drain", "local-0", "--api", "http://127.0.0.1:8080"]) == 1
    assert capsys.readouterr().err == "spillway fleet: 409: POST /v1/fleet/local-0/drain: local-0 is draining " \
                                      "already\n"
    assert fleet_cli.main(["enroll", "local-9", "--pool", "local", "--url", "http://10.0.0.9:9000",
                           "--vram-mb", "8000", "--api", "http://127.0.0.1:8080"]) == 1
    assert "https://" in capsys.readouterr().err and len(api.sent) == 1, "the client's model refused it"


def test_an_action_needs_a_gpu_and_the_list_none() -> None:
    for argv in (["drain"], ["list", "local-0"], ["reboot", "local-0"]):
        with pytest.raises(SystemExit) as exited:
            fleet_cli.main(argv)
        assert exited.value.code == 2, argv
