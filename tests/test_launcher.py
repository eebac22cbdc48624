"""`LaunchedStack`, the demo's and the end-to-end tests' way to run `spillway dev`: stopping it ends every process
it started — moto's server, the agents, their model servers, the FaaS provider — even after `spillway dev` itself
was killed (SIGKILL: no handler of its own runs), so no test or demo leaves GPUs and ports behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from spillway_embedded.launcher import LaunchedStack, StackInfo

pytestmark = pytest.mark.embedded

FLEET = """
[pools.local]
gpus = [{ id = "local-0", vram_mb = 6000, model_server = true }]

[faas]
endpoint_id = "launcher-test"
price_per_second_usd = 0.00076
"""


def processes() -> dict[int, tuple[int, str]]:
    """Every live process on this machine: pid -> (parent pid, command line). Zombies (dead, not yet reaped by a
    parent that is gone too) are left out: they run nothing and hold no port."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":
            found[int(entry.name)] = (int(ppid), command)
    return found


def descendants(pid: int) -> dict[int, str]:
    table, found, parents = processes(), {}, {pid}
    while parents:
        children = {child: command for child, (ppid, command) in table.items() if ppid in parents}
        found |= children
        parents = set(children)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_stopping_a_killed_spillway_dev_still_ends_every_process_it_started(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text(FLEET)
    launched = LaunchedStack(tmp_path / "stack", ["--api-port", "0", "--fleet", str(tmp_path / "fleet.toml")])
    with launched:
        assert launched.pid is not None
        children = descendants(launched.pid)
        commands = " ".join(children.values())
        for part in ("moto_server", "faas_provider", "--model-server", "--gpu-id local-0"):
            assert part in commands, f"{part} among its children: {children}"
        os.kill(launched.pid, signal.SIGKILL)
        os.waitpid(launched.pid, 0)
        left = set(children) & set(processes())
        assert any("faas_provider" in children[pid] for pid in left), "its children outlive it by themselves"
    deadline = time.monotonic() + 10
    while (alive := set(children) & set(processes())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"still running after the stop: {[children[pid] for pid in alive]}"


def test_the_stack_files_token_is_its_default_tenants() -> None:
    """One source of truth: stack.json keeps every tenant's token by name; the `default` one is what is sent
    unless another tenant is named."""
    info = StackInfo(api_url="http://127.0.0.1:8080", chaos_url="", aws_endpoint="", region="us-east-1",
                     resources={}, gpus=[], tenants={"default": "d-t0k", "acme": "a-t0k"})
    assert info.token == "d-t0k"
    assert info.auth_headers() == {"Authorization": "Bearer d-t0k"}
    assert info.auth_headers("acme") == {"Authorization": "Bearer a-t0k"}
