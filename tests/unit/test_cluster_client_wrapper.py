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
# records each call: its arguments, then its stdin when there is no -e
{ printf '%s ' "$@"; echo; } >> "$CALLS"
case " $* " in *" -e "*) ;; *) cat >> "$CALLS" ;; esac
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

    def run(sql: str, **notify: str) -> str:
        calls.write_text("")
        environ = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
                   **{f"OCF_RESKEY_CRM_meta_notify_{k}": v for k, v in notify.items()}}
        subprocess.run(["bash", str(script), "--user=repl", "--password=x", "-e", sql],
                       env=environ, check=True, timeout=10)
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
