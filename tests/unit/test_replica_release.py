"""The replica release (ansible/roles/cluster/templates/hastack-replica-release.j2), run for real
with python3 against stubs of `corosync-quorumtool -m` (a scripted series of quorum
notifications, in its own format) and `mariadb`: it ends a lost replica's replication
connection only on a primary whose partition is quorate, never on a cut-off primary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "cluster"
MARIADB = """#!/bin/bash
# records each statement; answers @@read_only with $READ_ONLY, the process list with $DUMPS
# (the threads of the given host only, as the server's LIKE would)
for a; do sql=$a; done
echo "$sql" >> "$CALLS"
case "$sql" in
  *@@read_only*) echo "${READ_ONLY:-0}" ;;
  *PROCESSLIST*) host=$(sed -n "s/.*HOST LIKE '\\([^:]*\\):%'.*/\\1/p" <<<"$sql")
                 for d in $DUMPS; do [ "${d#*@}" = "$host" ] && echo "${d%@*}"; done; true ;;
esac
"""
# stdbuf -oL corosync-quorumtool -m: prints the scripted notifications, then ends as it does
# when corosync stops
STDBUF = '#!/bin/sh\n[ "$*" = "-oL corosync-quorumtool -m" ] || exit 99\ncat "$NOTIFICATIONS"\n'
INVENTORY = {"db1": "198.19.0.41", "db2": "198.19.0.42", "db3": "198.19.0.43"}
IDS = {"db1": 41, "db2": 42, "db3": 43}


def notification(quorate: bool, members: list[str]) -> str:
    """One notification as corosync-quorumtool -m prints it (corosync 3.1.7, with a qdevice)."""
    rows = "".join(f"        {IDS[m]}          1    A,V,NMW {m}{' (local)' * (m == 'db1')}\n"
                   for m in members)
    return ("Quorum information\n------------------\nDate:             Sun Nov 29 13:05:02 2026\n"
            f"Quorum provider:  corosync_votequorum\nNodes:            {len(members)}\n"
            f"Node ID:          41\nRing ID:          29.41\n"
            f"Quorate:          {'Yes' if quorate else 'No'}\n\n"
            "Votequorum information\n----------------------\nExpected votes:   4\n"
            "Flags:            Quorate Qdevice \n\n"
            "Membership information\n----------------------\n"
            "    Nodeid      Votes    Qdevice Name\n" + rows +
            "         0          1            Qdevice\n\n")


@pytest.fixture()
def release(tmp_path: Path):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    values = {"hastack_db_socket": "/run/mysqld/mysqld.sock",
              "hastack_db_release_user": "hacluster", "cluster_db_hung_seconds": 2,
              "groups": {"database": list(INVENTORY)},
              "hostvars": {n: {"hastack_private_address": a} for n, a in INVENTORY.items()}}
    script = tmp_path / "hastack-replica-release"
    script.write_text(env.get_template("hastack-replica-release.j2").render(values))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"mariadb": MARIADB, "stdbuf": STDBUF}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    calls, notifications = tmp_path / "calls", tmp_path / "notifications"

    def run(*views: tuple[bool, list[str]], read_only: str = "0",
            dumps: str = "17@198.19.0.42 18@198.19.0.43") -> tuple[list[str], str]:
        """The KILL statements that reached the server, and what it logged."""
        calls.write_text("")
        notifications.write_text("".join(notification(q, m) for q, m in views))
        environ = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
                   "NOTIFICATIONS": str(notifications), "READ_ONLY": read_only,
                   "DUMPS": dumps}
        done = subprocess.run([sys.executable, str(script)], env=environ, timeout=10,
                              capture_output=True, text=True)
        assert done.returncode == 1 and "corosync-quorumtool ended" in done.stderr, done.stderr
        kills = [line for line in calls.read_text().splitlines() if line.startswith("KILL")]
        return kills, done.stderr
    return run


ALL = (True, ["db1", "db2", "db3"])


def test_a_quorate_primary_ends_the_lost_replicas_connection_only(release):
    kills, log = release(ALL, (True, ["db1", "db3"]))
    assert kills == ["KILL CONNECTION 17"]
    assert "db2 lost, this primary quorate: ended its replication connection (17)" in log


def test_a_primary_without_quorum_ends_nothing_and_says_its_commits_wait(release):
    kills, log = release(ALL, (False, ["db1"]))
    assert kills == []
    assert "db2, db3 lost, this primary has no quorum" in log


def test_a_node_lost_before_quorum_came_back_is_released_once_it_is_quorate(release):
    """The membership without the node may be announced before the quorum device's vote."""
    kills, _ = release(ALL, (False, ["db1", "db3"]), (True, ["db1", "db3"]))
    assert kills == ["KILL CONNECTION 17"]


@pytest.mark.parametrize("views, options", [
    ([ALL], {}),                                           # the state at start: nothing left
    ([(True, ["db1", "db3"])], {}),                        # absent from the first view only
    ([ALL, (True, ["db1", "db2", "db3"])], {}),            # nobody left
    ([ALL, (True, ["db1", "db3"])], {"read_only": "1"}),   # a replica: nothing waits here
    ([ALL, (False, ["db1", "db3"]), ALL], {}),             # back before quorum said so
    ([ALL, (True, ["db1", "db3"])], {"dumps": "18@198.19.0.43"}),  # reset (powered off)
])
def test_anything_else_ends_nothing(release, views, options):
    kills, _ = release(*views, **options)
    assert kills == []
