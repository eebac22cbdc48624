"""GPU sharing, end to end on the embedded stack (real agents): one GPU runs jobs of two services at once, packed
by VRAM and compute, up to its compute and never beyond, as its fleet record shows while they run; and the API
refuses at submit a job no pool that may serve it could ever hold, FaaS's GPU included.

The module's fleet: one office GPU with a slot and the VRAM for four small jobs but the compute of half a GPU (a
small remove_furniture needs 26%, a small upscale_2x 21%: one of each fits, two furniture jobs do not), and a
FaaS endpoint whose GPU has 40 GB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import cv2
import httpx
import numpy as np
import pytest

from spillway.catalog import SERVICES
from spillway.rooms import render_room
from spillway_embedded.client import upload
from spillway_embedded.launcher import LaunchedStack, StackInfo

from helpers import answered, first_attempt, gpu_record

pytestmark = pytest.mark.embedded

GPU_COMPUTE, GPU_VRAM_MB, SLOTS, FAAS_VRAM_MB = 50, 12_000, 4, 40_000
FLEET = f"""
[pools.local]
slots = {SLOTS}
gpus = [{{ id = "local-0", vram_mb = {GPU_VRAM_MB}, compute = {GPU_COMPUTE} }}]

[faas]
endpoint_id = "spillway-dev"
price_per_second_usd = 0.00076
vram_mb = {FAAS_VRAM_MB}
"""
MODEL_SECONDS = 3.0
SMALL = (320, 240)
TIMEOUT = httpx.Timeout(10.0, connect=2.0)
US_HIGH = {"segment": {"region": "us"}, "priority": "high"}  # the us-priority FaaS segment (remove_furniture)
EU_NORMAL = {"segment": {"region": "eu"}, "priority": "normal"}  # no FaaS segment


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    folder = tmp_path_factory.mktemp("sharing")
    (folder / "fleet.toml").write_text(FLEET)
    args = ["--api-port", "0", "--fleet", str(folder / "fleet.toml"), "--model-seconds", str(MODEL_SECONDS)]
    with LaunchedStack(folder, args) as info:
        yield info


def png(width: int, height: int) -> bytes:
    return cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))[1].tobytes()


def submit(api: httpx.Client, service: str, image: bytes, who: dict) -> httpx.Response:
    return api.post("/v1/jobs", json={"service": service, "input_key": upload(api, image), **who})


def test_two_services_share_one_gpu_up_to_its_compute_and_not_beyond(stack: StackInfo, api: httpx.Client) -> None:
    furniture, upscale = (SERVICES[name].compute(*SMALL) for name in ("remove_furniture", "upscale_2x"))
    assert furniture + upscale <= GPU_COMPUTE < 2 * furniture, "the fleet this test is built on"
    samples: list[dict] = []
    done = threading.Event()

    def watch() -> None:  # the fleet record, as the run goes
        while not done.is_set():
            samples.append(gpu_record(stack, "local-0"))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        job_ids = [submit(api, service, render_room(n, *SMALL), EU_NORMAL).raise_for_status().json()["job_id"]
                   for n, service in enumerate(["remove_furniture", "upscale_2x"] * 3)]
        views = answered(api, job_ids, timeout=120)
    finally:
        done.set()
        watcher.join(timeout=5)

    assert all(v["status"] == "SUCCEEDED" for v in views.values()), views
    assert {a["gpu_id"] for v in views.values() for a in v["attempts"]} == {"local-0"}
    used = [GPU_COMPUTE - s["compute_free"] for s in samples]
    running = [int(s["running"]) for s in samples]
    assert max(used) == furniture + upscale, f"one of each ran at once: {sorted(set(used))}"
    assert all(0 <= u <= GPU_COMPUTE for u in used), "never beyond its compute"
    assert max(running) == 2, "the compute bounds it: slots and VRAM would have taken more"
    assert min(s["vram_free_mb"] for s in samples) >= GPU_VRAM_MB - 2 * SERVICES["remove_furniture"].vram_mb(*SMALL)
    after = gpu_record(stack, "local-0")
    assert (after["compute_free"], after["vram_free_mb"], after["running"]) == (GPU_COMPUTE, GPU_VRAM_MB, 0)


def test_spillway_fleet_shows_the_compute_in_use(stack: StackInfo, api: httpx.Client) -> None:
    job_id = submit(api, "upscale_2x", render_room(9, *SMALL), EU_NORMAL).raise_for_status().json()["job_id"]
    first_attempt(api, job_id, "running_at")  # its agent took it
    stack.agents("stop", "local-0")  # frozen (SIGSTOP): its task runs on however long the listing takes to start
    try:
        listed = subprocess.run([sys.executable, "-m", "spillway.cli", "fleet", "--api", stack.api_url],
                                env=os.environ | {"SPILLWAY_TOKEN": stack.token},  # an operator is a tenant too
                                capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()
    finally:
        stack.agents("cont", "local-0")  # well within its stale window (the template's 30 s)
    answered(api, [job_id])
    assert "COMPUTE USED" in listed[0]
    line = next(line for line in listed if line.startswith("local-0"))
    assert f"{SERVICES['upscale_2x'].compute(*SMALL)}/{GPU_COMPUTE}%" in line, line


def test_a_job_no_pool_could_ever_hold_is_refused_at_submit_faas_included(api: httpx.Client) -> None:
    huge = png(6000, 5000)  # remove_furniture: 47 GB, over FaaS's 40 GB and the office's 12 GB
    refused = submit(api, "remove_furniture", huge, US_HIGH)
    assert refused.status_code == 422, refused.text
    message = refused.json()["message"]
    assert "47000 MB" in message and f"{GPU_VRAM_MB} MB" in message and f"FaaS's has {FAAS_VRAM_MB} MB" in message


def test_a_job_too_big_for_the_office_and_cloud_goes_to_faas_only_in_a_faas_segment(api: httpx.Client) -> None:
    big = png(3200, 2200)  # remove_furniture: 12.6 GB, over the office's 12 GB, within FaaS's 40 GB
    refused = submit(api, "remove_furniture", big, EU_NORMAL)
    assert refused.status_code == 422, refused.text
    assert "FaaS does not serve its segment" in refused.json()["message"]
    accepted = submit(api, "remove_furniture", big, US_HIGH)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    view = answered(api, [job_id], timeout=120)[job_id]
    assert view["status"] == "SUCCEEDED", view
    assert [a["pool"] for a in view["attempts"]] == ["faas"], "never to a GPU that cannot hold it"


def test_the_fleet_file_is_what_the_control_plane_packs_by(stack: StackInfo) -> None:
    record = gpu_record(stack, "local-0")
    assert (record["compute_total"], record["vram_total_mb"], record["slots"]) == (GPU_COMPUTE, GPU_VRAM_MB, SLOTS)
