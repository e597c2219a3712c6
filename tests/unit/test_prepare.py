"""`hastack prepare` builds what `up` would (image, wheelhouses: same builders, same calls, so
the same cache paths) and nothing else; a deploy reads its inventory once."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import ansible_runner
import pytest
import yaml
from rich.console import Console

from hastack import cli, deploy, fleet, inventory, topology, wheelhouse
from hastack.errors import HastackError
from hastack.lab import image
from hastack.lab import lab as lab_module

from .test_from_inventory import EXAMPLE, TOPOLOGIES, listing_of


@pytest.fixture
def builders(monkeypatch, tmp_path: Path) -> list[tuple[str, object]]:
    """The image and wheelhouse builders replaced by fakes that record their calls."""
    calls: list[tuple[str, object]] = []

    def fake_image(progress):
        calls.append(("image", None))
        return tmp_path / "cache" / "images" / "rootfs"

    def fake(kind: str):
        def build(console):
            calls.append((kind, console))
            return tmp_path / "cache" / kind
        return build

    monkeypatch.setattr(image, "ensure_image", fake_image)
    monkeypatch.setattr(wheelhouse, "ensure", fake("wheelhouse"))
    monkeypatch.setattr(wheelhouse, "ensure_monitoring", fake("wheelhouse-monitoring"))
    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 0)
    monkeypatch.setenv("HASTACK_STATE", str(tmp_path / "state"))
    return calls


def _deploy_without_ansible(monkeypatch, tmp_path: Path, listing: dict) -> dict:
    """deploy.run with the given listing, Ansible and certificates faked: its extravars."""
    seen: dict = {}
    monkeypatch.setattr(deploy, "list_inventory", lambda *a, **k: pytest.fail("read again"))
    monkeypatch.setattr(deploy, "ensure_tls", lambda *a, **k: tmp_path / "tls")
    monkeypatch.setattr(ansible_runner, "run", lambda **k: seen.update(k) or
                        SimpleNamespace(rc=0, status="successful", stats={}))
    inv = tmp_path / "inventory.yml"
    inv.write_text("all: {}\n")
    deploy.run(inv, tmp_path / "secrets", Console(quiet=True), listing=listing)
    return seen["extravars"]


@pytest.mark.parametrize("data", TOPOLOGIES)
def test_prepare_builds_what_the_deploy_of_up_asks_for(data, builders, monkeypatch,
                                                       tmp_path: Path):
    topo = topology.parse(data)
    console = Console(quiet=True)
    lab_module.prepare_caches(topo, console)
    prepared = list(builders)
    assert prepared[0] == ("image", None)  # what Lab.up calls first (lab.ensure_image)
    builders.clear()
    # up deploys the inventory it writes (inventory.build); ansible-inventory lists it so
    variables = _deploy_without_ansible(monkeypatch, tmp_path, listing_of(inventory.build(topo)))
    assert [kind for kind, _ in prepared[1:]] == [kind for kind, _ in builders] == [
        "wheelhouse"] + (["wheelhouse-monitoring"] if topo.with_role("monitoring") else [])
    assert all(c is console for _, c in prepared[1:])  # their only argument
    assert variables["hastack_wheelhouse"] == str(tmp_path / "cache" / "wheelhouse")
    assert not (tmp_path / "state").exists()  # no lab state, so no machines or bridges


def test_prepare_command_needs_root(monkeypatch, builders):
    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 1000)
    with pytest.raises(HastackError, match=r"^hastack prepare must run as root \(it builds "):
        cli.app(["prepare"], standalone_mode=False)
    assert builders == []


def test_prepare_command_with_an_unreadable_lab_record_takes_the_seed(builders, tmp_path,
                                                                      monkeypatch):
    (tmp_path / "state" / "lab").mkdir(parents=True)
    (tmp_path / "state" / "lab" / "lab.json").write_text('{"topology": {"bad": 1}}')
    monkeypatch.chdir(tmp_path)  # no ./hastack.toml
    cli.app(["prepare"], standalone_mode=False)
    assert [kind for kind, _ in builders] == ["image", "wheelhouse", "wheelhouse-monitoring"]


def test_deploy_of_an_inventory_reads_it_once(monkeypatch, tmp_path: Path, builders):
    path = tmp_path / "servers.yml"
    shutil.copy(EXAMPLE, path)
    reads = []
    listing = listing_of(yaml.safe_load(EXAMPLE.read_text()))
    monkeypatch.setattr(deploy, "list_inventory",
                        lambda inv, env=None: reads.append(env) or listing)
    monkeypatch.setattr(deploy, "ensure_tls", lambda *a, **k: tmp_path / "tls")
    monkeypatch.setattr(ansible_runner, "run",
                        lambda **k: SimpleNamespace(rc=0, status="successful", stats={}))
    settled = []
    monkeypatch.setattr(fleet.Fleet, "settle_database",
                        lambda self, console: settled.append(self.require_topology()))
    fleet.InventoryFleet(path).deploy(Console(quiet=True))
    assert len(reads) == 1 and reads[0]["ANSIBLE_CONFIG"].endswith("ansible.cfg")
    assert settled[0].machine("db1").roles  # the settling's topology: the same reading


def test_a_wheelhouse_finished_meanwhile_by_another_run_is_kept(tmp_path: Path):
    target = tmp_path / "wheelhouse" / "abc"

    def steps(tmp: Path) -> list[list[str]]:
        target.mkdir(parents=True)  # another `up` or `prepare` finished first
        (target / "theirs.whl").write_text("")
        (target / "complete").write_text("")
        return [["true"]]

    assert wheelhouse._build(Console(quiet=True), target, "a wheelhouse", steps) == target
    assert sorted(p.name for p in target.iterdir()) == ["complete", "theirs.whl"]
    assert [p.name for p in target.parent.iterdir()] == ["abc"]  # its own copy removed
