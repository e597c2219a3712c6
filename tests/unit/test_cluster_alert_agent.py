"""The cluster's alert agent (ansible/roles/cluster/templates/hastack-cluster-alert.j2), run for
real with bash against stubs of `mariadb` and `corosync-quorumtool`: it ends a lost replica's
replication connection only on a primary that has quorum, never on a cut-off primary."""

from __future__ import annotations

import os
import subprocess
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
INVENTORY = {"db1": "198.19.0.41", "db2": "198.19.0.42", "db3": "198.19.0.43"}


@pytest.fixture()
def alert(tmp_path: Path):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    values = {"hastack_db_socket": "/run/mysqld/mysqld.sock", "hastack_db_alert_user": "hacluster",
              "cluster_db_hung_seconds": 2, "groups": {"database": list(INVENTORY)},
              "hostvars": {n: {"hastack_private_address": a} for n, a in INVENTORY.items()}}
    script = tmp_path / "hastack-cluster-alert"
    script.write_text(env.get_template("hastack-cluster-alert.j2").render(values))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {"mariadb": MARIADB,
             "corosync-quorumtool": '#!/bin/sh\necho "Nodes:            2"\n'
                                    'echo "Quorate:          $QUORATE"\n',
             "logger": '#!/bin/sh\necho "$*" >> "$LOG"\n'}
    for name, body in stubs.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    calls, log = tmp_path / "calls", tmp_path / "log"

    def run(kind: str = "node", desc: str = "lost", node: str = "db2", quorate: str = "Yes",
            read_only: str = "0", dumps: str = "17@198.19.0.42 18@198.19.0.43",
            rc: int = 0) -> tuple[list[str], str]:
        """The KILL statements that reached the server, and what was logged."""
        calls.write_text("")
        log.write_text("")
        environ = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
                   "LOG": str(log), "QUORATE": quorate, "READ_ONLY": read_only,
                   "DUMPS": dumps, "CRM_alert_kind": kind, "CRM_alert_desc": desc,
                   "CRM_alert_node": node}
        done = subprocess.run(["bash", str(script)], env=environ, timeout=10)
        assert done.returncode == rc
        kills = [line for line in calls.read_text().splitlines() if line.startswith("KILL")]
        return kills, log.read_text()
    return run


def test_a_quorate_primary_ends_the_lost_replicas_connection_only(alert):
    kills, log = alert()
    assert kills == ["KILL CONNECTION 17"]
    assert "db2 lost, this primary quorate: ended its replication connection (17)" in log


def test_a_primary_without_quorum_ends_nothing_and_says_its_commits_wait(alert):
    kills, log = alert(quorate="No")
    assert kills == []
    assert "no quorum" in log


@pytest.mark.parametrize("event", [
    {"read_only": "1"},                  # a replica: nothing waits for acknowledgements here
    {"desc": "member"},                  # a node that came back
    {"kind": "fencing"}, {"kind": "resource"},
    {"node": "web1"},                    # not a DB node
    {"dumps": "18@198.19.0.43"},         # its connection already ended (powered off: RST)
])
def test_anything_else_ends_nothing(alert, event):
    kills, _ = alert(**event)
    assert kills == []
