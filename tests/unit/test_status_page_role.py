"""The monitoring role's status page files, rendered by Ansible itself (its filters, its
`groups` and `hostvars`) from an inventory like the lab's: the inventory JSON the page reads
back into the same topology, and the unit listening on each machine's private address."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hastack import firewall, inventory, statuspage, topology

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible" / "roles" / "monitoring"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

PLAY = """
- hosts: monitoring
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Load the role's defaults
      ansible.builtin.include_vars: "{{ role }}/defaults/main.yml"
    - name: Render the status page's files
      ansible.builtin.template:
        src: "{{ role }}/templates/{{ item }}.j2"
        dest: "{{ out }}/{{ inventory_hostname }}-{{ item }}"
        mode: "0644"
      loop: [inventory.json, hastack-status-page.service]
"""


def render(tmp_path: Path, topo: topology.Topology) -> dict[str, str]:
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.fail(f"{ANSIBLE_PLAYBOOK} missing: the controller's venv installs Ansible")
    data = inventory.build(topo, {"hastack_db_root_password": "not-for-the-page"})
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(data, sort_keys=False))  # as the lab
    (tmp_path / "play.yml").write_text(PLAY)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml"),
         "-e", json.dumps({"role": str(ROLE), "out": str(out)})],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {f.name: f.read_text() for f in out.iterdir()}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[int, dict[str, str]]:
    """The files for one and for two monitoring machines (one Ansible run each)."""
    return {mons: render(tmp_path_factory.mktemp(f"mons{mons}"),
                         topology.parse({"counts": {"monitoring": mons}})) for mons in (1, 2)}


@pytest.mark.parametrize("mons", [1, 2])
def test_inventory_json_reads_back_as_the_topology(tmp_path, rendered, mons):
    topo = topology.parse({"counts": {"monitoring": mons}})
    files = rendered[mons]
    built = inventory.build(topo)
    for m in topo.with_role("monitoring"):
        text = files[f"{m.name}-inventory.json"]
        data = json.loads(text)
        assert data["all"]["hosts"] == built["all"]["hosts"]
        assert data["all"]["children"] == built["all"]["children"]
        assert data["all"]["vars"] == {k: v for k, v in built["all"]["vars"].items()
                                       if k != "hastack_environment"}
        assert "password" not in text
        path = tmp_path / f"{m.name}.json"
        path.write_text(text)
        loaded = statuspage.load_topology(path)
        assert [(x.name, x.roles, x.private_address, x.public_address)
                for x in loaded.machines] == [(x.name, x.roles, x.private_address,
                                               x.public_address) for x in topo.machines]
        assert loaded.vips == topo.vips and loaded.domain == topo.domain


def test_the_unit_listens_on_the_private_address_as_an_unprivileged_user(rendered):
    files = rendered[2]
    for name, address in (("mon1", "198.19.0.61"), ("mon2", "198.19.0.62")):
        unit = files[f"{name}-hastack-status-page.service"]
        assert (f"-m hastack.statuspage --listen {address}:9096 --inventory "
                f"/opt/hastack-status-page/inventory.json --machine {name}") in unit
        assert "User=hastack-status\n" in unit and "NoNewPrivileges=yes" in unit
        assert "MPLCONFIGDIR=/var/cache/hastack-status-page" in unit


def test_only_the_admin_address_may_open_the_page():
    topo = topology.parse({})
    site = firewall.Site.from_inventory(inventory.build(topo))
    flows = firewall.load_flows()
    allowed = [a for a in firewall.allowed(flows, site) if a.port == 9096]
    assert {(a.flow, a.machine, a.destination, a.sources) for a in allowed} == {
        ("status-page-from-admin", "mon1", "198.19.0.61", frozenset({"198.19.0.1"}))}
