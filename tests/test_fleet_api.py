"""The operators' fleet routes through the API's Lambda handler: the fleet's health, drain, quarantine, readmit."""

from __future__ import annotations

import time

import pytest
from test_api import call

from spillway import health
from spillway.fleet import Fleet
from spillway.models import Pool

from conftest import Cloud
from helpers import beat, fleet_for


@pytest.fixture
def fleet(shared_cloud: Cloud) -> Fleet:
    fleet = fleet_for(shared_cloud.settings)
    now = time.time()
    fleet.heartbeat(beat("local-0", vram_mb=8000), now=now)
    fleet.heartbeat(beat("cloud-0", Pool.CLOUD, vram_mb=24000), now=now - 40)  # its agent went silent
    return fleet


def test_the_fleet_lists_every_gpu_with_its_health_load_heartbeat_and_events(fleet: Fleet) -> None:
    status, body = call("GET", "/v1/fleet")
    assert status == 200
    cloud_0, local_0 = body["gpus"]
    assert (local_0["gpu_id"], local_0["pool"], local_0["health"], local_0["vram_total_mb"], local_0["vram_used_mb"],
            local_0["running"]) == ("local-0", "local", "healthy", 8000, 0, [])
    assert local_0["events"][0]["to"] == "healthy" and "registered" in local_0["events"][0]["reason"]
    assert (cloud_0["gpu_id"], cloud_0["health"]) == ("cloud-0", "down"), "silent: down, recorded or not yet"
    assert cloud_0["reason"].startswith("silent: no heartbeat") and cloud_0["last_heartbeat_age_s"] >= 40


def test_an_operator_drains_quarantines_and_readmits_a_gpu(fleet: Fleet) -> None:
    status, drained = call("POST", "/v1/fleet/local-0/drain")
    assert (status, drained["health"], drained["held"]) == (200, "draining", True)
    fleet.heartbeat(beat("local-0", vram_mb=8000), now=time.time())
    assert fleet.get("local-0").health.state is health.GpuHealth.DRAINING, "its agent's beats do not end it"
    status, quarantined = call("POST", "/v1/fleet/local-0/quarantine")
    assert (status, quarantined["health"], quarantined["quarantined_until"]) == (200, "quarantined", None)
    status, readmitted = call("POST", "/v1/fleet/local-0/readmit")
    assert (status, readmitted["health"], readmitted["held"]) == (200, "probation", False)
    assert [e["to"] for e in readmitted["events"]] == ["healthy", "draining", "quarantined", "probation"]


@pytest.mark.parametrize(("path", "status", "says"), [
    ("/v1/fleet/local-9/drain", 404, "no GPU local-9"),
    ("/v1/fleet/local-0/reboot", 422, "action"),
    ("/v1/fleet/cloud-0/readmit", 409, "comes back by itself"),
], ids=["unknown-gpu", "unknown-action", "readmit-a-down-gpu"])
def test_a_bad_action_is_a_4xx_with_the_reason(fleet: Fleet, path: str, status: int, says: str) -> None:
    got, body = call("POST", path)
    assert got == status and says in body["message"], body


def test_the_census_counts_gpus_by_health_per_pool_zeros_too(fleet: Fleet) -> None:
    from spillway.handlers.wiring import fleet_operations

    census = fleet_operations().census()
    assert census[Pool.LOCAL][health.GpuHealth.HEALTHY] == 1 and sum(census[Pool.LOCAL].values()) == 1
    assert census[Pool.CLOUD][health.GpuHealth.HEALTHY] == 0, "the alarm sees a 0, not no data"
    assert census[Pool.CLOUD][health.GpuHealth.DOWN] == 1
