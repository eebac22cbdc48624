"""The what-if simulator (`spillway simulate`): deterministic by seed; the old design loses what is queued
on a GPU whose link drops, Spillway's routing none while another pool can serve; the CLI's table and plots."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from spillway.models import ErrorType, Pool
from spillway_sim import cli
from spillway_sim.engine import Simulation, simulate
from spillway_sim.report import figures, print_report
from spillway_sim.scenario import ScenarioError, load_world
from spillway_sim.workload import draw

SHORT = {"days": 0.05}  # 72 minutes of the default scenario: hundreds of jobs, a second or two per policy

TINY_FLEET = """
[pools.local]
slots = 1
gpus = [{ id = "local-0", vram_mb = 8000 }]
{cloud}
"""
CLOUD = """
[pools.cloud]
slots = 1
gpus = [{ id = "cloud-0", vram_mb = 24000 }]
"""
# Jobs at fixed times, each 10 s on a GPU; local-0's link is cut from 5 s to 100 s.
TINY_SCENARIO = """
fleet = "fleet.toml"
[timing]
leg_seconds = 0
push_fail_seconds = 1
[outages]
at = [[5, 100, ["local-0"]]]
[services.remove_furniture]
share = 1
seconds = { base = 10 }
sizes = { "1024x768" = 1 }
[arrivals]
jobs_per_day = 1
hourly = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
at = [0, 1, 2, 3, 30, 80, 120]
[[mix]]
share = 1
priority = "normal"
region = "eu"
[policies.spillway]
[policies.old-design]
dispatch = "per_gpu_queues"
detect_seconds = 60
"""


FAAS = """
[faas]
endpoint_id = "sim"
price_per_second_usd = 0.00076
"""


def tiny(tmp_path: Path, cloud: bool, faas: bool = False, priority: str = "normal", region: str = "eu") -> Path:
    pools = (CLOUD if cloud else "") + (FAAS if faas else "")
    (tmp_path / "fleet.toml").write_text(TINY_FLEET.replace("{cloud}", pools))
    (tmp_path / "scenario.toml").write_text(TINY_SCENARIO.replace('priority = "normal"', f'priority = "{priority}"')
                                            .replace('region = "eu"', f'region = "{region}"'))
    return tmp_path / "scenario.toml"


def table_text(world_overrides: dict[str, object]) -> str:
    world = load_world(overrides=world_overrides)
    console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the console
    print_report([figures(r) for r in simulate(world, draw(world))], title="t", console=console)
    return console.export_text()


def test_the_same_seed_gives_the_same_table_and_another_seed_another() -> None:
    first = table_text(SHORT)
    assert first == table_text(SHORT)
    assert first != table_text(SHORT | {"seed": 2})


def test_the_old_design_fails_the_running_job_and_every_job_queued_on_a_gpu_whose_link_drops(tmp_path: Path) -> None:
    world = load_world(tiny(tmp_path, cloud=False))
    results = {r.job.at: r for r in Simulation(world, draw(world), "old-design").run().results}
    # 0 runs when the link drops at 5 s; 1-3 wait behind it, 30 is put on its queue before the broker notices
    # (60 s later), and all fail then; at 80 s no worker is connected; at 120 s the link is back.
    assert {at: r.succeeded for at, r in results.items()} == {
        0: False, 1: False, 2: False, 3: False, 30: False, 80: False, 120: True}
    assert results[0].finished_at == 5 and "while running it" in results[0].reason
    assert {results[at].finished_at for at in (1, 2, 3, 30)} == {65}
    assert "with it queued" in results[30].reason
    assert results[80].reason == "no connected worker could run it"


def test_spillway_loses_no_job_while_the_cloud_can_serve(tmp_path: Path) -> None:
    world = load_world(tiny(tmp_path, cloud=True))
    results = {r.job.at: r for r in Simulation(world, draw(world), "spillway").run().results}
    assert all(r.succeeded for r in results.values())
    # The job running when the tunnel is cut goes on (its agent calls out); the next push fails in a second,
    # local-0 is suspect until a probe gets through, and the waiting jobs go to the cloud.
    assert results[0].pool is Pool.LOCAL and results[120].pool is Pool.LOCAL
    assert {results[at].pool for at in (1, 2, 3, 30, 80)} == {Pool.CLOUD}
    failed = [a for r in results.values() for a in r.attempts if a.error is not None]
    assert [(a.gpu_id, a.error) for a in failed if a.error is not ErrorType.WAIT_EXPIRED] == [
        ("local-0", ErrorType.GPU_UNREACHABLE)]


def test_spillway_loses_no_job_of_a_faas_segment_while_faas_can_serve(tmp_path: Path) -> None:
    world = load_world(tiny(tmp_path, cloud=False, faas=True, priority="high", region="us"))
    results = {r.job.at: r for r in Simulation(world, draw(world), "spillway").run().results}
    assert all(r.succeeded for r in results.values())
    # Behind a busy office GPU, or with its link cut, a US priority job goes to FaaS at once.
    assert {at: r.pool for at, r in results.items()} == {
        0: Pool.LOCAL, 1: Pool.FAAS, 2: Pool.FAAS, 3: Pool.FAAS, 30: Pool.FAAS, 80: Pool.FAAS, 120: Pool.LOCAL}


def test_spillway_loses_no_job_of_the_default_scenario_where_the_old_design_does() -> None:
    world = load_world(overrides={"days": 0.25, "arrivals.jobs_per_day": 40_000, "outages.office_per_day": 8,
                                  "outages.gpu_per_day": 12})
    spillway, old = (figures(r) for r in simulate(world, draw(world), ["spillway", "old-design"]))
    assert spillway.failed == 0
    assert old.failed > 0
    assert spillway.served[Pool.LOCAL] > spillway.served.get(Pool.CLOUD, 0), "the office first"


def test_a_mistake_in_a_scenario_is_named_by_field(tmp_path: Path) -> None:
    path = tiny(tmp_path, cloud=False)
    path.write_text(path.read_text().replace("push_fail_seconds = 1", "push_fail_seconds = -1"))
    with pytest.raises(ScenarioError, match="timing.push_fail_seconds"):
        load_world(path)
    with pytest.raises(ScenarioError, match=r"timing.speed.cloud: Input should be greater than 0 \(got 0\)"):
        load_world(tiny(tmp_path, cloud=False), {"timing.speed": {"cloud": 0}})  # a run would divide by it
    with pytest.raises(ScenarioError, match=r"outages: .*at\[0\]: the outage ends \(5 s\) before it starts"):
        load_world(tiny(tmp_path, cloud=False), {"outages.at": [[100, 5, ["local-0"]]]})
    with pytest.raises(ScenarioError, match="outages.at: no GPU local-9 in the fleet"):  # it would cut nothing
        load_world(tiny(tmp_path, cloud=False), {"outages.at": [[5, 100, ["local-9"]]]})
    with pytest.raises(ScenarioError, match="every hour's rate is 0"):
        load_world(tiny(tmp_path, cloud=False), {"arrivals.hourly": [0] * 24, "arrivals.at": []})
    with pytest.raises(ScenarioError, match="pool_order"):
        load_world(tiny(tmp_path, cloud=False), {"policies.spillway.rules": {"pool_order": ["faas"]}})


def test_simulate_prints_the_table_and_writes_the_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--set", "days=0.05", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for policy in ("spillway", "old-design", "cloud-only", "local-only", "faas-only"):
        assert policy in out
    assert "time to result p95" in out and "high/us" in out
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "failures.png", "spend.png", "spillway-vs-old.png", "time-to-result.png"]


def test_a_sweep_plots_each_answer_against_the_parameter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--set", "days=0.05", "--policies", "spillway", "--sweep", "cloud_gpus=0,3",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cloud_gpus = 0" in out and "cloud_gpus = 3" in out
    assert (tmp_path / "sweep-cloud_gpus.png").stat().st_size > 10_000


def test_the_table_reads_the_office_by_pool_and_faas_spend_per_simulated_day(tmp_path: Path) -> None:
    path = tiny(tmp_path, cloud=False, faas=True, priority="high", region="us")
    for file in (path, tmp_path / "fleet.toml"):  # an office GPU whose name does not say "local"
        file.write_text(file.read_text().replace("local-0", "attic-0"))
    world = load_world(path, {"days": 0.5})
    run = Simulation(world, draw(world), "spillway").run()
    found = figures(run)
    assert run.office_gpus == ("attic-0",) and found.office_utilization > 0
    faas_usd = sum(s.usd for s in run.spend if s.pool is Pool.FAAS)
    assert faas_usd > 0 and found.faas_usd_per_day == pytest.approx(faas_usd / 0.5)


def test_the_old_design_puts_a_job_on_the_office_between_queues_as_short(tmp_path: Path) -> None:
    world = load_world(tiny(tmp_path, cloud=True))
    results = {r.job.at: r for r in Simulation(world, draw(world), "old-design").run().results}
    # Idle at 0 s: the office's GPU, though "cloud-0" sorts before "local-0"; at 1 s its queue is longer.
    assert (results[0].attempts[0].gpu_id, results[1].attempts[0].gpu_id) == ("local-0", "cloud-0")


def test_a_bad_fleet_sweep_or_policy_is_named_not_a_traceback(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny(tmp_path, cloud=False)
    path.write_text(path.read_text().replace('fleet = "fleet.toml"', 'fleet = "nowhere.toml"'))
    assert cli.main(["--scenario", str(path), "--no-plots"]) == 2
    assert "fleet: " in capsys.readouterr().out
    assert cli.main(["--sweep", "outage_rate=often", "--no-plots"]) == 2
    assert "'often' is not a number" in capsys.readouterr().out
    assert cli.main(["--sweep", "cloud_gpus=1", "--policies", "spilway", "--no-plots"]) == 2
    assert "no policy spilway" in capsys.readouterr().out
