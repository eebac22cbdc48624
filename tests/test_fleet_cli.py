"""`spillway fleet`: what it prints, where it finds the API, and how it signs for a deployed one."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from spillway import fleet_cli
from spillway.client import dev_stack

GPU = {"gpu_id": "local-2", "pool": "local", "health": "quarantined", "since": "2026-01-01T00:00:00+00:00",
       "vram_used_mb": 2500, "vram_total_mb": 8000,
       "compute_used": 45, "compute_total": 100, "running": ["t-1"], "slots": 2, "last_heartbeat_age_s": 3.2,
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
    (tmp_path / "stack.json").write_text(json.dumps({"api_url": "http://127.0.0.1:8080", "token": "t0k"}))
    assert dev_stack(tmp_path) == ("http://127.0.0.1:8080", "t0k")
    with pytest.raises(ValueError, match="no running `spillway dev`"):
        dev_stack(tmp_path / "nothing")


def test_a_deployed_api_is_called_with_a_sigv4_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[httpx.Request] = []

    def request(method: str, url: str, **options: object) -> httpx.Response:
        built = httpx.Request(method, url)
        sent.append(next(options["auth"].auth_flow(built)))  # type: ignore[union-attr]
        return httpx.Response(200, json={"gpus": []}, request=built)

    monkeypatch.setattr(httpx, "request", request)
    assert fleet_cli.main(["--api", "https://abc123.execute-api.eu-west-1.amazonaws.com"]) == 0
    (signed,) = sent
    assert signed.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/eu-west-1/execute-api/aws4_request" in signed.headers["Authorization"]


def test_an_action_needs_a_gpu_and_the_list_none() -> None:
    for argv in (["drain"], ["list", "local-0"], ["reboot", "local-0"]):
        with pytest.raises(SystemExit) as exited:
            fleet_cli.main(argv)
        assert exited.value.code == 2, argv
