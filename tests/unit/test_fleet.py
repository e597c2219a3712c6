"""The one interface to machines: how real servers are reached (exact ssh argv, Kamal-style)
and what `hastack status` says of machines hastack did not make."""

from __future__ import annotations

import shlex
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from hastack import fleet, inventory, topology
from hastack.errors import HastackError
from hastack.fleet import InventoryFleet, server_ssh_argv

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "servers.yml"
TAIL = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]


def test_plain_host_is_reached_by_its_inventory_name():
    assert server_ssh_argv("web1", {}) == ["ssh", *TAIL, "web1"]


def test_every_connection_variable_is_used():
    hv = {"ansible_host": "203.0.113.21", "ansible_user": "root", "ansible_port": 2222,
          "ansible_ssh_private_key_file": "/keys/prod",
          "ansible_ssh_common_args": "-o ProxyJump=admin@bastion -o 'UserKnownHostsFile=/a b'"}
    assert server_ssh_argv("web1", hv, ["mariadb", "-N", "-e", "select 1"]) == [
        "ssh", "-p", "2222", "-i", "/keys/prod", "-o", "ProxyJump=admin@bastion",
        "-o", "UserKnownHostsFile=/a b", *TAIL, "root@203.0.113.21",
        "--", "mariadb -N -e 'select 1'"]


def test_users_options_come_before_hastacks_so_they_win():
    argv = server_ssh_argv("db1", {"ansible_ssh_common_args": "-o ConnectTimeout=30"})
    assert argv.index("ConnectTimeout=30") < argv.index("ConnectTimeout=10")


def test_a_shell_line_is_sent_unchanged():
    argv = server_ssh_argv("web1", {"ansible_user": "root"}, "systemctl status nginx | head")
    assert argv[-2:] == ["--", "systemctl status nginx | head"]


def test_become_runs_commands_under_sudo_but_not_the_login_shell():
    hv = {"ansible_host": "203.0.113.41", "ansible_user": "deploy", "ansible_become": True}
    argv = server_ssh_argv("db1", hv, ["mariadb", "-e", "show slave hosts"])
    assert argv[-3:] == ["deploy@203.0.113.41", "--",
                         "sudo -n -- sh -c 'mariadb -e '\"'\"'show slave hosts'\"'\"''"]
    # what the remote shell runs: sudo gets exactly the argv's line
    assert shlex.split(argv[-1]) == ["sudo", "-n", "--", "sh", "-c",
                                     "mariadb -e 'show slave hosts'"]
    assert server_ssh_argv("db1", hv) == ["ssh", *TAIL, "deploy@203.0.113.41"]
    as_root = {**hv, "ansible_user": "root", "ansible_become": "yes"}
    assert server_ssh_argv("db1", as_root, "id")[-1] == "id"


def test_sudo_line_arrives_literally_in_a_shell(tmp_path: Path):
    argv = ["printf", "%s\\0", "a;b", "$x", "it's", "`id`"]
    line = server_ssh_argv("h", {"ansible_user": "u", "ansible_become": True}, argv)[-1]
    line = line.replace("sudo -n -- ", "", 1)  # no sudo here; the quoting is the point
    out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env={"x": "EXPANDED", "PATH": "/usr/bin:/bin"})
    assert out.stdout.split("\0")[:-1] == argv[2:]


@pytest.fixture
def servers(tmp_path: Path) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["all"]["vars"].update(ansible_user="deploy", ansible_become=True,
                               ansible_ssh_private_key_file="~/.ssh/prod")
    data["all"]["hosts"]["db1"]["ansible_port"] = 2201
    path = tmp_path / "prod.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_inventory_fleet_reaches_hosts_as_ansible_resolves_them(servers: Path):
    f = InventoryFleet(servers)
    assert f.secrets == servers.parent / ".hastack-secrets" / "prod"
    assert f.ca_cert() == f.secrets / "ca" / "ca.crt"
    assert f.ssh_argv("db1", ["hostname"]) == [
        "ssh", "-p", "2201", "-i", str(Path("~/.ssh/prod").expanduser()), *TAIL,
        "deploy@198.51.100.41", "--", "sudo -n -- sh -c hostname"]
    with pytest.raises(HastackError, match="no machine named 'db9'"):
        f.ssh_argv("db9")


def test_a_missing_inventory_is_one_line(tmp_path: Path):
    with pytest.raises(HastackError, match=r"nope.yml: no such inventory file$"):
        InventoryFleet(tmp_path / "nope.yml")


def monitoring_seeing(node: dict[str, bool | None]) -> dict:
    return {"machines": {name: {"scrapes": {"node": up}} for name, up in node.items()}}


def test_status_follows_the_contract_with_states_from_monitoring(servers: Path):
    f = InventoryFleet(servers)
    info = f.status(monitoring_seeing({"lb1": True, "web1": False, "app1": None}))
    assert info["site"] == {"domain": "www.foobar.com", "aliases": ["foobar.com"],
                            "vips": ["192.0.2.100", "192.0.2.101"], "dns": None,
                            "ca_cert": None, "url": "https://www.foobar.com/"}
    states = {m["name"]: m["state"] for m in info["machines"]}
    assert states["lb1"] == "up" and states["web1"] == "down"
    assert states["app1"] == states["db2"] == "unknown"
    lb1 = next(m for m in info["machines"] if m["name"] == "lb1")
    assert lb1 == {"name": "lb1", "roles": ["loadbalancer"],
                   "addresses": ["192.0.2.11", "198.51.100.11"], "state": "up"}
    assert f.status({"error": "no monitoring"})["machines"][0]["state"] == "unknown"


def test_ca_cert_is_reported_once_it_exists(servers: Path, tmp_path: Path):
    f = InventoryFleet(servers, tmp_path / "secrets")
    f.ca_cert().parent.mkdir(parents=True)
    f.ca_cert().write_text("-----BEGIN CERTIFICATE-----\n")
    assert f.status()["site"]["ca_cert"] == str(tmp_path / "secrets" / "ca" / "ca.crt")


def test_the_lab_and_an_inventory_are_both_fleets():
    from hastack.lab.lab import Lab
    assert issubclass(Lab, fleet.Fleet) and issubclass(InventoryFleet, fleet.Fleet)
    assert Lab.shares_clock and not InventoryFleet.shares_clock
    assert inventory.GROUPS is topology.ROLE_GROUPS  # one mapping, read both ways


def test_the_labs_own_inventory_needs_the_labs_secrets(tmp_path: Path):
    """A lab's inventory with -i and no --secrets-dir would make new secrets beside it and
    re-key the lab's database users; it is refused before anything connects."""
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    path = lab_dir / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory.build(topology.load(None))))
    with pytest.raises(HastackError, match=rf"^{path}: is a lab's inventory "
                                           r"\(hastack_environment: lab\); deploy it with the "
                                           rf"lab's secrets: --secrets-dir {lab_dir}/secrets"):
        InventoryFleet(path).deploy(Console())
    assert not (lab_dir / ".hastack-secrets").exists()
    # reading needs no secrets: operations on it work as on any inventory
    assert InventoryFleet(path).ssh_argv("db1")[-1] == "198.19.0.41"


@pytest.mark.parametrize(("limit", "touches"), [
    ("database", True), ("web,db2", True), ("db_replica", True), ("app:web", False),
    ("monitoring", False), ("web1", False)])
def test_a_limited_deploy_settles_the_database_only_when_it_names_db_nodes(limit, touches):
    assert fleet._touches_database(limit, topology.load(None)) is touches


def test_on_each_asks_every_machine_at_once_and_answers_in_their_order(servers: Path):
    """Each ask waits for all the others to have started: asked one after another, the
    barrier would break (its timeout) instead of letting them through."""
    names = ["db3", "db1", "db2"]
    barrier = threading.Barrier(len(names), timeout=5)

    def ask(name: str) -> str:
        barrier.wait()
        return name.upper()

    fleet_ = InventoryFleet(servers)
    assert fleet_.on_each(names, ask) == ["DB3", "DB1", "DB2"]
    assert fleet_.on_each(["db1"], str.upper) == ["DB1"]
