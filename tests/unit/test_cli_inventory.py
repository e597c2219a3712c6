"""`-i INVENTORY` on the operation commands: bad input is one line and exit 1, before any
connection; `hastack ssh -i` hands ssh exactly the argv the inventory describes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hastack import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "servers.yml"
SRC = Path(__file__).resolve().parents[2] / "src"
COMMANDS = [["status"], ["status", "--json"], ["db", "status"], ["db", "switchover", "db2"],
            ["lb", "status"], ["lb", "bans"], ["lb", "drain", "web1"], ["lb", "enable", "web1"],
            ["lb", "unban", "192.0.2.9"], ["ssh", "web1", "--", "true"]]


def hastack(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}:{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", "from hastack.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_missing_inventory_is_refused_by_every_command(command, tmp_path: Path):
    where = tmp_path / "servers.yml"
    head, rest = (command[:2], command[2:]) if command[0] in ("db", "lb") else (command[:1],
                                                                               command[1:])
    line = one_error_line(hastack(*head, "-i", str(where), *rest))
    assert line == f"error: {where}: no such inventory file"


def _written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "servers.yml"
    path.write_text(text)
    return path


def _example_without(tmp_path: Path, group: str | None = None, var: str | None = None) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    if group:
        data["all"]["children"].pop(group)
    if var:
        data["all"]["vars"].pop(var)
    return _written(tmp_path, yaml.safe_dump(data))


def test_not_yaml(tmp_path: Path):
    path = _written(tmp_path, "all: [unclosed")
    assert f"{path}: not valid YAML" in one_error_line(hastack("status", "-i", str(path)))


def test_missing_group(tmp_path: Path):
    path = _example_without(tmp_path, group="web")
    line = one_error_line(hastack("db", "status", "-i", str(path)))
    assert line.startswith(f"error: {path}: group 'web' has no hosts")


def test_missing_variable(tmp_path: Path):
    path = _example_without(tmp_path, var="hastack_domain")
    line = one_error_line(hastack("lb", "status", "-i", str(path)))
    assert line == f"error: {path}: all.vars.hastack_domain is missing"


def test_missing_variable_in_group_vars_is_named_by_its_key(tmp_path: Path):
    """With group_vars/ beside the inventory, the resolved view is checked instead."""
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text("hastack_aliases: []\n")
    path = _example_without(tmp_path, var="hastack_vips")
    line = one_error_line(hastack("lb", "bans", "-i", str(path)))
    assert line.startswith(f"error: {path}: all.vars.hastack_vips: must list one VIP")


def test_unknown_machine(tmp_path: Path):
    path = _written(tmp_path, EXAMPLE.read_text())
    line = one_error_line(hastack("ssh", "-i", str(path), "mon1"))
    assert line == ("error: no machine named 'mon1' in the topology; known: lb1, lb2, web1, "
                    "web2, app1, app2, db1, db2, qd1")  # the inventory's order


def test_ssh_with_an_inventory_keeps_the_argv(tmp_path: Path, monkeypatch):
    data = yaml.safe_load(EXAMPLE.read_text())
    data["all"]["vars"]["ansible_ssh_common_args"] = "-o ProxyJump=ops@bastion"
    path = _written(tmp_path, yaml.safe_dump(data))
    calls = []
    monkeypatch.setattr(cli.os, "execvp", lambda file, argv: calls.append((file, argv)))
    cli.app(["ssh", "-i", str(path), "db1", "--", "mariadb", "-N", "-e", "select 1"],
            standalone_mode=False)
    assert calls == [("ssh", ["ssh", "-o", "ProxyJump=ops@bastion", "-o", "BatchMode=yes",
                              "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
                              "root@198.51.100.41", "--", "mariadb -N -e 'select 1'"])]
