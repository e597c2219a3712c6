"""The cluster's MariaDB client wrapper (ansible/roles/cluster/templates/
hastack-cluster-mariadb.j2), run for real with bash against a stub `mariadb` that records
what reaches the server: which of the agent's statements it passes, rewrites or drops."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import jinja2
import pytest

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "cluster"
STUB = """#!/bin/bash
# records each call: its arguments, then its stdin when there is no -e; answers SHOW SLAVE
# STATUS with $SLAVE_STATUS and MASTER_GTID_WAIT with $GTID_WAIT (0: reached)
{ printf '%s ' "$@"; echo; } >> "$CALLS"
case " $* " in *" -e "*) ;; *) cat >> "$CALLS" ;; esac
case "$*" in
  *"SHOW SLAVE STATUS"*) printf '%s' "${SLAVE_STATUS:-}" ;;
  *MASTER_GTID_WAIT*) echo "${GTID_WAIT:-0}" ;;
esac
"""


@pytest.fixture()
def wrapper(tmp_path: Path):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    values = {"hastack_db_socket": "/run/mysqld/mysqld.sock", "hastack_db_port": 3306,
              "hastack_db_repl_user": "repl", "hastack_machine_tls_dir": "/etc/hastack/tls",
              "cluster_db_apply_timeout": 20, "cluster_db_heartbeat_seconds": 1,
              "cluster_db_hung_seconds": 2,
              "cluster_db_repl_client_file": str(tmp_path / "repl.cnf")}
    (tmp_path / "repl.cnf").write_text("[client]\npassword = s3cret\n")
    script = tmp_path / "hastack-cluster-mariadb"
    script.write_text(env.get_template("hastack-cluster-mariadb.j2").render(values))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("mariadb", STUB), ("logger", "#!/bin/sh\n")):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"

    def run(sql: str, server: dict[str, str] | None = None, rc: int = 0, **notify: str) -> str:
        """What reached the server; `server` answers (SLAVE_STATUS, GTID_WAIT), `rc` the
        wrapper's expected exit status."""
        calls.write_text("")
        environ = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
                   **(server or {}),
                   **{f"OCF_RESKEY_CRM_meta_notify_{k}": v for k, v in notify.items()}}
        done = subprocess.run(["bash", str(script), "--user=repl", "--password=x", "-e", sql],
                              env=environ, timeout=10)
        assert done.returncode == rc
        return calls.read_text()
    return run


# what Pacemaker passes when it recovers a replica whose monitor found it writable
# ("promoted"): that instance is demoted and stopped, the primary stays, nothing is promoted
WRITABLE_REPLICA_RECOVERED = {"type": "post", "operation": "demote", "demote_uname": "db3 ",
                              "stop_uname": "db3 ", "promote_uname": " ",
                              "master_uname": "db1 db3 ", "promoted_uname": "db1 db3 "}


@pytest.mark.parametrize("sql", ["STOP SLAVE IO_THREAD", "STOP SLAVE",
                                 "RESET SLAVE /*!50516 ALL */;"])
def test_replicas_keep_their_primary_when_a_demotion_promotes_nobody(wrapper, sql):
    assert wrapper(sql, **WRITABLE_REPLICA_RECOVERED) == ""


def test_a_switchover_still_resets_the_replicas_for_the_new_primary(wrapper):
    switchover = {**WRITABLE_REPLICA_RECOVERED, "demote_uname": "db1 ", "stop_uname": "",
                  "promote_uname": "db2 ", "master_uname": "db1 ", "promoted_uname": "db1 "}
    assert "RESET SLAVE" in wrapper("RESET SLAVE /*!50516 ALL */;", **switchover)


def test_a_demoted_primary_with_none_left_resets_the_replicas(wrapper):
    lost_quorum = {**WRITABLE_REPLICA_RECOVERED, "demote_uname": "db1 ", "stop_uname": "",
                   "master_uname": "db1 ", "promoted_uname": "db1 "}
    assert "RESET SLAVE" in wrapper("RESET SLAVE /*!50516 ALL */;", **lost_quorum)


def test_outside_a_notification_statements_reach_the_server(wrapper):
    assert "RESET SLAVE" in wrapper("RESET SLAVE /*!50516 ALL */;")


def test_change_master_gets_tls_and_the_password_from_the_file(wrapper):
    sent = wrapper("CHANGE MASTER TO MASTER_HOST='198.19.0.42', MASTER_USER='repl', "
                   "MASTER_PASSWORD='x'")
    assert "MASTER_HOST='198.19.0.42'" in sent and "MASTER_PASSWORD='s3cret'" in sent
    assert "MASTER_SSL=1" in sent and "MASTER_SSL_VERIFY_SERVER_CERT=1" in sent
    assert "MASTER_HEARTBEAT_PERIOD=1," in sent  # a vanished replica is found within seconds
    assert "--password" not in sent


def replica(sql_running: str, sql_errno: int = 0) -> str:
    return (f"Gtid_IO_Pos: 0-41-120\n Slave_IO_Running: Yes\n"
            f" Slave_SQL_Running: {sql_running}\n Last_SQL_Errno: {sql_errno}\n")


ELECTION = "show global variables like 'gtid_current_pos'"


def test_the_election_counts_a_replica_by_what_it_received_once_applied(wrapper):
    sent = wrapper(ELECTION, {"SLAVE_STATUS": replica("Yes")})
    assert "MASTER_GTID_WAIT('0-41-120', 20)" in sent
    assert sent.rstrip().endswith(ELECTION)


def test_a_stopped_sql_thread_is_started_to_apply_what_was_acknowledged(wrapper):
    # paused by hand or by the restore drill: its IO thread went on acknowledging commits
    sent = wrapper(ELECTION, {"SLAVE_STATUS": replica("No")})
    assert sent.index("START SLAVE SQL_THREAD") < sent.index("MASTER_GTID_WAIT('0-41-120'")
    assert ELECTION in sent


@pytest.mark.parametrize("server", [{"SLAVE_STATUS": replica("No", sql_errno=1950)},
                                    {"SLAVE_STATUS": replica("Yes"), "GTID_WAIT": "-1"}])
def test_a_replica_that_cannot_apply_all_it_received_reports_no_gtid(wrapper, server):
    sent = wrapper(ELECTION, server, rc=1)
    assert "gtid_current_pos" not in sent.replace("MASTER_GTID_WAIT", "")


def test_a_replica_that_has_not_applied_all_it_received_is_not_made_writable(wrapper):
    sent = wrapper("SET GLOBAL read_only=off",
                   {"SLAVE_STATUS": replica("Yes"), "GTID_WAIT": "-1"}, rc=1)
    assert "MASTER_GTID_WAIT('0-41-120', 0)" in sent
    assert "read_only=off" not in sent


@pytest.mark.parametrize("status", ["", replica("Yes")])
def test_a_node_that_applied_everything_or_never_replicated_is_made_writable(wrapper, status):
    assert "SET GLOBAL read_only=off" in wrapper("SET GLOBAL read_only=off",
                                                 {"SLAVE_STATUS": status})
