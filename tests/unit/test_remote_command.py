"""Commands for lab machines: an argv arrives word for word through the remote shell."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from hastack import cli, topology
from hastack.lab.lab import Lab, remote_command

ARGVS = [
    ["mariadb", "-e", "show slave hosts"],
    ["echo", "a;b", "$x", "$(id)", "`id`", "*", "~", "a|b", "a&&b", ">out", "<in"],
    ["printf", "it's", 'say "hi"', "back\\slash", "\\n", "tab\there", "new\nline", ""],
    ["-e", "--", "-"],
]


@pytest.mark.parametrize("argv", ARGVS)
def test_argv_round_trips_through_a_shell_split(argv):
    assert shlex.split(remote_command(argv)) == argv


@pytest.mark.parametrize("argv", ARGVS)
def test_argv_arrives_literally_in_a_real_shell(argv, tmp_path: Path):
    # What sshd does with the command: sh -c LINE. Nothing may be expanded or run.
    line = remote_command(["printf", "%s\\0", *argv])
    out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env={"x": "EXPANDED", "PATH": "/usr/bin:/bin"})
    assert out.stdout.split("\0")[:-1] == argv
    assert list(tmp_path.iterdir()) == []  # no redirection happened


def test_one_argument_is_a_shell_line():
    line = "echo abc | tr a-c x-z; echo $((1 + 1))"
    assert remote_command([line]) == line == remote_command(line)
    out = subprocess.run(["sh", "-c", remote_command([line])], capture_output=True, text=True)
    assert out.stdout == "xyz\n2\n"


@pytest.fixture
def lab(tmp_path: Path, monkeypatch) -> Lab:
    monkeypatch.setenv("HASTACK_STATE", str(tmp_path))
    lab = Lab()
    lab.dir.mkdir(parents=True)
    lab._record(topology.load(None))
    return lab


def test_cli_ssh_sends_the_argv_quoted(lab, monkeypatch):
    calls = []
    monkeypatch.setattr(cli.os, "execvp", lambda file, argv: calls.append(argv))
    cli.app(["ssh", "db1", "--", "mariadb", "-e", "show slave hosts"], standalone_mode=False)
    cli.app(["ssh", "web1", "--", "systemctl status nginx | head"], standalone_mode=False)
    cli.app(["ssh", "web1"], standalone_mode=False)
    assert calls[0][-3:] == ["root@198.19.0.41", "--", "mariadb -e 'show slave hosts'"]
    assert calls[1][-3:] == ["root@198.19.0.21", "--", "systemctl status nginx | head"]
    assert calls[2][-1] == "root@198.19.0.21"  # no command: a login shell


def test_run_on_takes_a_shell_line_or_an_argv(lab, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **_kw: calls.append(argv))
    lab.run_on("db1", "mariadb -B")
    lab.run_on("db1", ["mariadb", "-e", "show slave hosts"])
    assert calls[0][-2:] == ["--", "mariadb -B"]
    assert calls[1][-2:] == ["--", "mariadb -e 'show slave hosts'"]
