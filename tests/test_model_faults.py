"""Chaos on an embedded GPU's model: fail every run, or run slow, per GPU, through a fault file its agent reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from werkzeug.test import Client

from spillway_embedded.chaos import ChaosControl, ChaosRefused
from spillway_embedded.model_faults import ChaosModelError, ModelFault, read_fault, with_faults, write_fault


def echo(service: str, image: bytes) -> bytes:
    return image


def test_a_gpu_with_no_fault_runs_its_model_one_failing_raises_one_slow_takes_longer(tmp_path: Path) -> None:
    fault_file, slept = tmp_path / "local-0.fault.json", []
    run = with_faults(echo, fault_file, sleep=slept.append)
    assert run("upscale_2x", b"img") == b"img" and slept == []
    write_fault(fault_file, ModelFault(mode="fail-model"))
    with pytest.raises(ChaosModelError, match="fails every model run"):
        run("upscale_2x", b"img")
    write_fault(fault_file, ModelFault(mode="slow", seconds=5))
    assert run("upscale_2x", b"img") == b"img" and slept == [5.0]
    write_fault(fault_file, None)
    assert read_fault(fault_file) is None and run("upscale_2x", b"img") == b"img" and slept == [5.0]


class FaultedAgents:
    def __init__(self) -> None:
        self.faults: list[tuple[list[str], ModelFault | None]] = []

    def agent_signal(self, gpu_ids: list[str], action: str) -> None:
        raise AssertionError("a model fault is no signal")

    def agent_states(self) -> dict[str, str]:
        return {"local-0": "running", "cloud-0": "running", "cloud-9": "running"}

    def model_fault(self, gpu_ids: list[str], fault: ModelFault | None) -> None:
        if "cloud-9" in gpu_ids:
            raise ChaosRefused("cloud-9: its agent fronts a model server the stack did not start")
        self.faults.append((gpu_ids, fault))


def test_the_chaos_switchboard_makes_models_fail_slow_and_heals_them() -> None:
    agents = FaultedAgents()
    client = Client(ChaosControl(dict, agents=agents))
    assert client.post("/agents/fail-model", json={"gpu_ids": ["local-0"]}).status_code == 200
    assert client.post("/agents/slow", json={"gpu_ids": ["cloud-0"], "seconds": 4}).status_code == 200
    assert client.post("/agents/heal", json={"gpu_ids": ["local-0", "cloud-0"]}).status_code == 200
    assert agents.faults == [(["local-0"], ModelFault(mode="fail-model")),
                             (["cloud-0"], ModelFault(mode="slow", seconds=4)), (["local-0", "cloud-0"], None)]
    assert client.post("/agents/slow", json={"gpu_ids": ["local-0"], "seconds": -1}).status_code == 422
    assert client.post("/agents/fail-model", json={"gpu_ids": ["local-9"]}).status_code == 404


def test_a_model_fault_the_stack_cannot_inject_is_a_409_with_the_reason() -> None:
    client = Client(ChaosControl(dict, agents=FaultedAgents()))
    answer = client.post("/agents/fail-model", json={"gpu_ids": ["cloud-9"]})
    assert answer.status_code == 409 and "did not start" in answer.json["message"]
