"""Bad input: one clear line on stderr, a non-zero exit, and nothing half-made."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from pyroute2 import IPRoute

from .conftest import HASTACK, REPO, one_line_error, run


@pytest.fixture
def own_state(tmp_path: Path) -> dict[str, str]:
    """A separate state directory, so a refused command can be seen to create nothing."""
    return {"HASTACK_STATE": str(tmp_path / "state")}


def test_invalid_topology_creates_nothing(tmp_path: Path, own_state):
    bad = tmp_path / "hastack.toml"
    bad.write_text("[counts]\nweb = 0\n")
    line = one_line_error(run("up", "-t", str(bad), check=False, env=own_state))
    assert f"{bad}: counts.web: 0 is out of range; use 1 to 9" in line
    assert not Path(own_state["HASTACK_STATE"]).exists()


def test_not_root_is_refused(tmp_path: Path):
    """The real `hastack up` (this checkout's venv script, imports, CLI and error printing),
    run by a process whose user is not root, refuses with its own message.

    The user is nobody (65534) in a new user namespace: uid and euid are 65534, and it has no
    capability, so require_root's check and anything root-only fail as for any other user.
    Files are checked against the uid outside, which stays ours: the checkout, its venv and
    the interpreter stay readable wherever they live and whatever the umask. Switching to
    the real nobody (setpriv) would fail under a directory nobody cannot enter, e.g. a clone
    in /root or in `mktemp -d`, and copying the checkout somewhere readable would be slow.
    """
    state = tmp_path / "s"
    result = subprocess.run(["unshare", "--user", "--map-user=65534", "--map-group=65534",
                             HASTACK, "up"], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "HASTACK_STATE": str(state)})
    if result.stderr.startswith("unshare:"):
        pytest.fail(f"cannot run as a non-root user: {result.stderr.strip()}")
    line = one_line_error(result)
    assert "hastack up must run as root" in line and "sudo" in line
    assert not state.exists()


def test_missing_debian_package_is_named(own_state):
    venv_bin = str(Path(HASTACK).parent)
    env = {**own_state, "PATH": f"{venv_bin}:/nonexistent"}
    line = one_line_error(run("up", check=False, env=env))
    assert "systemd-nspawn not found" in line and "systemd-container" in line
    assert not Path(own_state["HASTACK_STATE"]).exists()


def test_bridge_name_taken(own_state):
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname="hs-pub"):
            pytest.fail("a lab is already up; run 'hastack down' before the e2e tests")
        ipr.link("add", ifname="hs-pub", kind="bridge")
        try:
            line = one_line_error(run("up", check=False, env=own_state))
        finally:
            ipr.link("del", index=ipr.link_lookup(ifname="hs-pub")[0])
    assert "network device hs-pub already exists and was not created by this lab" in line
    assert not Path(own_state["HASTACK_STATE"]).exists()


def test_unreachable_inventory_host(tmp_path: Path):
    # The example inventory, every host pointed at a closed port on loopback: the connection
    # is refused at once and nothing leaves the box.
    data = yaml.safe_load((REPO / "examples" / "servers.yml").read_text())
    for hv in data["all"]["hosts"].values():
        hv.update(ansible_host="127.0.0.1", ansible_port=1)
    inventory = tmp_path / "servers.yml"
    inventory.write_text(yaml.safe_dump(data))
    line = one_line_error(run("deploy", "-i", str(inventory), check=False))
    assert re.search(r"deploy failed: \w+ is unreachable: ", line), line


def test_invalid_inventory_is_refused_before_connecting(tmp_path: Path):
    inventory = tmp_path / "servers.yml"
    inventory.write_text("all:\n  hosts: {}\n  children: {}\n")
    line = one_line_error(run("deploy", "-i", str(inventory), check=False))
    assert f"{inventory}: group 'loadbalancer' has no hosts" in line
    assert not (tmp_path / ".hastack-secrets").exists()


def test_unknown_machine_for_ssh(own_state, tmp_path: Path):
    line = one_line_error(run("ssh", "nosuch", check=False, env=own_state))
    assert "no lab is up" in line




def test_chaos_with_the_lab_down_starts_nothing(own_state, tmp_path: Path):
    report = tmp_path / "report"
    line = one_line_error(run("chaos", "--faults", "web1-nginx-killed", "--report",
                               str(report), check=False, env=own_state))
    assert "no lab is up; run 'hastack up' first" in line
    assert not report.exists() and not Path(own_state["HASTACK_STATE"]).exists()
