"""Bad input: one clear line on stderr, a non-zero exit, and nothing half-made."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from .conftest import HASTACK, run


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def own_state(tmp_path: Path) -> dict[str, str]:
    """A separate state directory, so a refused command can be seen to create nothing."""
    return {"HASTACK_STATE": str(tmp_path / "state")}


def test_invalid_topology_creates_nothing(tmp_path: Path, own_state):
    bad = tmp_path / "hastack.toml"
    bad.write_text("[counts]\nweb = 0\n")
    line = _one_line_error(run("up", "-t", str(bad), check=False, env=own_state))
    assert f"{bad}: counts.web: 0 is out of range; use 1 to 9" in line
    assert not Path(own_state["HASTACK_STATE"]).exists()


def test_not_root_is_refused(tmp_path: Path):
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             HASTACK, "up"], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "HASTACK_STATE": str(tmp_path / "s")})
    line = _one_line_error(result)
    assert "must run as root" in line and "sudo" in line


def test_missing_debian_package_is_named(own_state):
    venv_bin = str(Path(HASTACK).parent)
    env = {**own_state, "PATH": f"{venv_bin}:/nonexistent"}
    line = _one_line_error(run("up", check=False, env=env))
    assert "systemd-nspawn not found" in line and "systemd-container" in line
    assert not Path(own_state["HASTACK_STATE"]).exists()


def test_bridge_name_taken(own_state):
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname="hs-pub"):
            pytest.fail("a lab is already up; run 'hastack down' before the e2e tests")
        ipr.link("add", ifname="hs-pub", kind="bridge")
        try:
            line = _one_line_error(run("up", check=False, env=own_state))
        finally:
            ipr.link("del", index=ipr.link_lookup(ifname="hs-pub")[0])
    assert "network device hs-pub already exists and was not created by this lab" in line
    assert not Path(own_state["HASTACK_STATE"]).exists()


def test_unreachable_inventory_host(tmp_path: Path):
    inventory = tmp_path / "servers.yml"
    # A closed port on loopback: the connection is refused at once, nothing leaves the box.
    inventory.write_text(
        "all:\n  hosts:\n    web1:\n      ansible_host: 127.0.0.1\n      ansible_port: 1\n"
        "      hastack_private_address: 127.0.0.1\n"
        "  children:\n    web:\n      hosts:\n        web1: {}\n")
    line = _one_line_error(run("deploy", "-i", str(inventory), check=False))
    assert "deploy failed: web1 is unreachable" in line


def test_unknown_machine_for_ssh(own_state, tmp_path: Path):
    line = _one_line_error(run("ssh", "nosuch", check=False, env=own_state))
    assert "no lab is up" in line


