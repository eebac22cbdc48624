"""The ops page in a real browser (Debian's headless Chromium, driven by Playwright) on the embedded stack:
a job that failed over from the office to the cloud shows its attempts' pools on RunAttempt in its graph,
its two attempts, its timeline and its images; the fleet page shows every GPU and the waiting rooms.

`SPILLWAY_SCREENSHOTS=docs` also writes the job page's screenshot to docs/ops-job.png (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spillway.rooms import render_room
from spillway_embedded.client import upload
from spillway_embedded.launcher import LaunchedStack, StackInfo

from helpers import answered

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLEET = """
[pools.local]
slots = 2
services = ["remove_furniture", "upscale_2x"]
gpus = [{ id = "local-0", vram_mb = 8000 }]

[pools.cloud]
slots = 2
services = ["remove_furniture", "upscale_2x"]
gpus = [{ id = "cloud-0", vram_mb = 24000 }]
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        message = "no system Chromium: apt-get install -y chromium (.ci/run installs it)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ops")


@pytest.fixture(scope="module")
def stack(folder: Path) -> Iterator[StackInfo]:
    (folder / "fleet.toml").write_text(FLEET)
    with LaunchedStack(folder, ["--api-port", "0", "--fleet", str(folder / "fleet.toml")]) as info:
        yield info


@pytest.fixture(scope="module")
def failed_over(stack: StackInfo, api: httpx.Client) -> str:
    """A job whose office attempt failed (the office link cut) and that succeeded in the cloud."""
    key = upload(api, render_room(7, 320, 240))
    stack.cut_tunnels(pool="local")
    try:
        job_id = api.post("/v1/jobs", json={"service": "remove_furniture", "input_key": key}
                          ).raise_for_status().json()["job_id"]
        view = answered(api, [job_id])[job_id]
    finally:
        stack.restore_tunnels()
    assert [(a["pool"], a["outcome"]) for a in view["attempts"]] == [("local", "failed"), ("cloud", "succeeded")]
    return job_id


def test_the_job_page_lights_the_path_it_took(stack: StackInfo, browser, failed_over: str, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    assert stack.ops_url
    page.goto(f"{stack.ops_url}/jobs")
    row = page.locator(f'#jobs tr[data-job="{failed_over}"]')
    assert "SUCCEEDED" in row.inner_text() and "local → cloud" in row.inner_text()
    row.locator("a").click()

    assert page.locator("h1").inner_text() == f"job {failed_over}"
    run = page.locator("#state_RunAttempt")
    assert "succeeded" in run.get_attribute("class").split()
    drawn = run.text_content() or ""  # an SVG node: its text, not an HTML element's inner text
    assert "local ✗ GpuUnreachable" in drawn and "cloud ✓" in drawn, "where each attempt ran"
    assert "succeeded" in page.locator("#state_AttemptFailed").get_attribute("class").split()
    assert "unvisited" in page.locator("#state_JobFailed").get_attribute("class").split()
    attempts = page.locator("#attempts tbody tr")
    assert attempts.count() == 2
    first, second = attempts.nth(0).inner_text(), attempts.nth(1).inner_text()
    assert "local" in first and "local-0" in first and "Spillway.GpuUnreachable" in first and "failed" in first
    assert "cloud" in second and "cloud-0" in second and "succeeded" in second
    timeline = page.locator("#timeline").inner_text()
    assert "TaskStateEntered" in timeline and "RunAttempt" in timeline and "ExecutionSucceeded" in timeline
    for image in ("input", "result"):  # presigned GETs the browser fetched
        assert page.locator(f'img[alt="{image}"]').evaluate("img => img.complete && img.naturalWidth") > 0

    page.screenshot(path=str(tmp_path / "ops-job.png"))
    if os.environ.get("SPILLWAY_SCREENSHOTS") == "docs":
        shutil.copy(tmp_path / "ops-job.png", ROOT / "docs" / "ops-job.png")
    page.close()


def test_the_fleet_page_shows_every_gpu_and_the_waiting_rooms(stack: StackInfo, browser, failed_over: str) -> None:
    page = browser.new_page()
    page.goto(f"{stack.ops_url}/fleet")
    gpus = {page.locator("#gpus tbody tr").nth(i).get_attribute("data-gpu"): page.locator("#gpus tbody tr").nth(i)
            for i in range(page.locator("#gpus tbody tr").count())}
    assert set(gpus) == {"local-0", "cloud-0"}
    assert "local" in gpus["local-0"].inner_text() and "MB" in gpus["local-0"].inner_text()
    rooms = page.locator("#rooms tbody").inner_text()
    assert "local" in rooms and "cloud" in rooms
    queues = page.locator("#queues tbody").inner_text()
    assert "intake normal" in queues and "pool dead letters" in queues
    assert "daily budget" in page.locator("#faas").inner_text()
    page.close()


def test_a_bad_filter_or_an_unknown_job_is_a_4xx_with_the_reason(stack: StackInfo) -> None:
    assert stack.ops_url
    refused = httpx.get(f"{stack.ops_url}/jobs?status=DONE", timeout=10)
    assert refused.status_code == 400 and "SUCCEEDED" in refused.text
    missing = httpx.get(f"{stack.ops_url}/jobs/j-{'0' * 32}", timeout=10)
    assert missing.status_code == 404 and "no job" in missing.text


def test_every_line_about_the_job_names_it_and_the_function_that_wrote_it(folder: Path, failed_over: str) -> None:
    """Offline all functions share one process: each line still carries its own function's context."""
    lines = [json.loads(line) for line in (folder / "dev.log").read_text().splitlines() if line.startswith("{")]
    assert lines and all(line["service"] == "spillway" for line in lines), "no field overwrites Powertools' own"
    about_job = [line for line in lines if failed_over in json.dumps(line)]
    assert about_job and all(line["job_id"] == failed_over for line in about_job)
    wrote = {"job accepted": "ApiFunction", "admitted": "AdmitFunction", "routed": "RouteFunction",
             "assigned": "PoolPollerFunction", "attempt failed": "PoolPollerFunction",
             "task ended": "AgentCallbackFunction"}
    seen = {line["message"]: line for line in about_job if line["message"] in wrote}
    assert set(seen) == set(wrote)
    for message, line in seen.items():
        assert line["function_name"].endswith(wrote[message]), (message, line["function_name"])
    assert all(line["correlation_id"] == failed_over for m, line in seen.items() if m in ("routed", "job accepted"))
    assert f"job_id={failed_over}" in (folder / "agents" / "cloud-0.log").read_text(), "the agent's lines too"
    assert "No application metrics" not in (folder / "dev.log").read_text()
