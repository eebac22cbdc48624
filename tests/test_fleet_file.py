"""The fleet as data: the default file is the company's world, and a bad file is named by file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from spillway.models import Pool
from spillway_embedded import cli as embedded_cli
from spillway_embedded.fleet_file import DEFAULT_FLEET, FleetFileError, load_fleet
from spillway_embedded.stack import EmbeddedStack

GPU = '{ id = "local-0", vram_mb = 6000 }'


def test_the_default_fleet_is_the_office_the_cloud_and_faas() -> None:
    fleet = load_fleet(DEFAULT_FLEET)
    gpus = fleet.gpus()
    assert [(g.gpu_id, g.pool, g.vram_mb, g.slots) for g in gpus] == [
        ("local-0", Pool.LOCAL, 6000, 2), ("local-1", Pool.LOCAL, 6000, 2), ("local-2", Pool.LOCAL, 8000, 2),
        ("local-3", Pool.LOCAL, 8000, 2), ("local-4", Pool.LOCAL, 12000, 2),
        ("cloud-0", Pool.CLOUD, 24000, 4), ("cloud-1", Pool.CLOUD, 24000, 4),
    ]
    assert all(g.services == ("remove_furniture", "upscale_2x") for g in gpus)
    assert fleet.faas is not None
    assert fleet.faas.model_dump() == {
        "endpoint_id": "spillway-dev", "concurrency": 30, "cold_start_seconds": 2.0, "idle_seconds": 60.0,
        "price_per_second_usd": 0.00076, "max_seconds": 120.0, "vram_mb": 80000,
    }
    assert fleet.faas.max_billed_seconds == 122
    assert fleet.source == DEFAULT_FLEET


def test_defaults_apply_and_faas_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text(f'[pools.local]\ngpus = [{GPU}, {{ id = "local-1", vram_mb = 8000, slots = 3,'
                    ' services = ["upscale_2x"] }]\n')
    fleet = load_fleet(path)
    first, second = fleet.gpus()
    assert (first.slots, first.services) == (2, ("remove_furniture", "upscale_2x"))
    assert (second.slots, second.services) == (3, ("upscale_2x",))
    assert fleet.faas is None


def test_a_gpu_may_front_the_stand_in_model_server_or_one_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "servers.toml"
    path.write_text('[pools.local]\ngpus = [{ id = "local-0", vram_mb = 6000, model_server = true },'
                    ' { id = "local-1", vram_mb = 6000, model_url = "http://127.0.0.1:8000/" },'
                    ' { id = "local-2", vram_mb = 6000 }]\n')
    started, own, built_in = load_fleet(path).gpus()
    assert (started.model_server, started.model_url, started.built_in_model) == (True, None, False)
    assert (own.model_server, own.model_url, own.built_in_model) == (False, "http://127.0.0.1:8000", False)
    assert built_in.built_in_model


@pytest.mark.parametrize(("content", "problem"), [
    (f"[pools.local]\ngpus = [{GPU}, {{ id = \"local-1\", vram_mb = -5 }}]",
     "pools.local.gpus[1].vram_mb: Input should be greater than 0 (got -5)"),
    ("[pools.local]\ngpus = [{ id = \"local-0\", vram_mb = 6000, slot = 2 }]",
     "pools.local.gpus[0].slot: Extra inputs are not permitted"),
    (f"[pools.local]\nservices = [\"paint_walls\"]\ngpus = [{GPU}]",
     "pools.local.services[0]: no service 'paint_walls'"),
    (f"[pools.office]\ngpus = [{GPU}]", "pools.office: Input should be 'local' or 'cloud' (got 'office')"),
    (f"[pools.local]\ngpus = [{GPU}]\n[pools.cloud]\ngpus = [{GPU}]",
     "pools.cloud: GPU id 'local-0' is already in pools.local"),
    ("[pools.local]\ngpus = []", "pools.local.gpus: List should have at least 1 item"),
    (f"[pools.local]\ngpus = [{GPU}]\n[faas]\nendpoint_id = \"e\"", "faas.price_per_second_usd: Field required"),
    (f"[pools.local]\ngpus = [{GPU}]\n[faas]\nendpoint_id = \"e\"\nprice_per_second_usd = 0.001\nmax_seconds = 2",
     "faas.max_seconds: Input should be greater than 5 (got 2)"),
    ("[pools.local]\ngpus = [{ id = \"local-0\", vram_mb = 6000, model_server = true, model_url = \"http://h:1\" }]",
     "pools.local.gpus[0]: model_server = true starts a model server for the agent; model_url names one"),
    ("[pools.local]\ngpus = [{ id = \"local-0\", vram_mb = 6000, model_url = \"not a url\" }]",
     "pools.local.gpus[0].model_url: Input should be a valid URL"),
    ("[pools.local\n", "not valid TOML"),
])
def test_a_bad_fleet_file_is_named_by_file_and_field(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(content)
    with pytest.raises(FleetFileError) as refused:
        load_fleet(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert problem in str(refused.value), str(refused.value)


def test_spillway_dev_refuses_a_bad_fleet_before_starting_anything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bad = tmp_path / "bad.toml"
    bad.write_text("[pools.local]\ngpus = [{ id = \"local-0\", vram_mb = \"lots\" }]")
    with pytest.raises(SystemExit) as refused:
        embedded_cli.dev(["--fleet", str(bad), "--state-dir", str(state)])
    assert f"spillway dev: {bad}: 1 problem(s):" in str(refused.value.code)
    assert "pools.local.gpus[0].vram_mb: Input should be a valid integer" in str(refused.value.code)
    with pytest.raises(SystemExit) as missing:
        embedded_cli.dev(["--fleet", str(tmp_path / "nope.toml"), "--state-dir", str(state)])
    assert "nope.toml: no such fleet file" in str(missing.value.code)
    assert not state.exists(), "nothing was started"


def test_the_stack_takes_its_gpus_and_faas_from_the_fleet(tmp_path: Path) -> None:
    stack = EmbeddedStack(state_dir=tmp_path)  # not started: what it would run
    assert len(stack.gpus) == 7 and stack.faas_endpoint_id == "spillway-dev"
    assert stack.faas_url is None, "known once the provider serves"
    assert len(stack.faas_api_key) >= 32 and stack.faas_api_key not in repr(stack)
    limited = tmp_path / "limited.toml"
    limited.write_text('[pools.local]\ngpus = [{ id = "local-0", vram_mb = 6000, services = ["upscale_2x"] }]')
    with pytest.raises(SystemExit, match=r"local-0: the agent runs every service"):
        embedded_cli.dev(["--fleet", str(limited), "--state-dir", str(tmp_path / "state")])
