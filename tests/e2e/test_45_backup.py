"""Backups of the database on the lab: `hastack db backup` pulls a full backup from the
replica to the backup machine (mon1, not a DB node); a mariadbd started on a copy of it holds
every write acknowledged before it; its metrics reach Prometheus; an unreachable source or a
full target is one clear line and leaves nothing half-made. The primary's binary logs are
copied to the backup machine as they are written, a restore to a point in time returns
exactly the rows acknowledged up to it, and the restore drill compares a restore with a
replica at the same GTID.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import pytest

from .conftest import db_roles, in_role, one_line_error, poll, run

PROMETHEUS_PORT = 9090
BACKUP_CONFIG = "/etc/hastack/backup.json"  # the backup role's
SCRATCH = "/var/tmp/hastack-backup-check"


@pytest.fixture(scope="module")
def backup_machine(lab) -> str:
    names = lab.names("backup")
    if not names:
        pytest.skip("this topology has no backup machine")
    return names[0]


def config(lab, machine: str) -> dict:
    return json.loads(lab.ssh(machine, f"cat {BACKUP_CONFIG}"))


def kept(lab) -> list[dict]:
    return json.loads(run("db", "backups", "--json").stdout)


def gtid_seq(gtid: str) -> int:
    """The sequence number of a single-domain GTID position (domain-server-seq)."""
    (seq,) = [int(p.rsplit("-", 1)[1]) for p in gtid.split(",") if p]
    return seq


def count_in_backup(lab, machine: str, path: str, ids: list[int]) -> int:
    """Start a throwaway mariadbd (no network) on a copy of the backup; count those rows."""
    sock = f"{SCRATCH}.sock"
    script = (
        f"set -e; rm -rf {SCRATCH}; cp -a {path} {SCRATCH}; chown -R mysql:mysql {SCRATCH}; "
        f"(mariadbd --user=mysql --datadir={SCRATCH} --socket={sock} --skip-networking "
        f"--pid-file={SCRATCH}.pid --log-error={SCRATCH}.err --skip-log-bin "
        f"--innodb-buffer-pool-size=32M >/dev/null 2>&1 &); "
        f"for i in $(seq 1 100); do [ -S {sock} ] && break; sleep 0.1; done; "
        f"mariadb --socket={sock} -N -B -e 'SELECT COUNT(*) FROM foobar.messages WHERE id IN "
        f"({','.join(map(str, ids))})'; "
        f"kill $(cat {SCRATCH}.pid); while [ -e {SCRATCH}.pid ]; do sleep 0.1; done; "
        f"rm -rf {SCRATCH} {SCRATCH}.err")
    return int(lab.ssh(machine, script).strip().splitlines()[-1])


def test_a_backup_from_the_replica_holds_every_acknowledged_write(lab, backup_machine):
    with lab.client(lab.vips[0]) as c:
        ids = []
        for i in range(20):
            r = c.post("/messages", json={"author": "backup-e2e", "body": f"{i} {uuid.uuid4()}"})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    nodes = json.loads(run("db", "status", "--json").stdout)["nodes"]
    primary = next(n for n in nodes if n["role"] == "primary")
    replica = next(n for n in nodes if n["role"] == "replica")
    acknowledged = gtid_seq(primary["gtid_binlog_pos"])

    out = run("db", "backup").stdout
    assert re.search(rf"taken from {replica['name']} \(replica\) at GTID \S+", out), out
    newest = kept(lab)[-1]
    assert newest["source"] == replica["name"] and newest["source_role"] == "replica"
    assert gtid_seq(newest["gtid"]) >= acknowledged, (newest["gtid"], acknowledged)
    assert newest["bytes"] > 0 and newest["seconds"] > 0
    print(f"\nbackup of the lab's data: {newest['bytes'] / 2**20:.1f} MiB in "
          f"{newest['seconds']:.2f} s (copy {newest['copy_seconds']:.2f} s, prepare "
          f"{newest['prepare_seconds']:.2f} s)")

    path = f"{config(lab, backup_machine)['dir']}/full/{newest['name']}"
    assert count_in_backup(lab, backup_machine, path, ids) == len(ids)


def test_the_backup_metrics_reach_prometheus(lab, backup_machine):
    mon = next(a for a in lab.machine(lab.names("monitoring")[0])["addresses"]
               if a.startswith("198.19."))
    newest = kept(lab)[-1]

    query = (f'hastack_db_backup_last_success_timestamp_seconds{{machine="{backup_machine}"}} '
             'and on (machine) hastack_db_backup_last_run_success == 1')

    def exported():
        r = httpx.get(f"http://{mon}:{PROMETHEUS_PORT}/api/v1/query", timeout=5,
                      params={"query": query}).json()
        result = r["data"]["result"]
        return result and abs(float(result[0]["value"][1]) - newest["finished"]) < 0.01
    poll(exported, 60, "the newest backup's time in Prometheus")

    # the binary log copy's recovery point: under writes, it keeps up within seconds
    primary = next(n["name"] for n in json.loads(run("db", "status", "--json").stdout)["nodes"]
                   if n["role"] == "primary")
    rpo = (f'time() - hastack_db_binlog_copy_caught_up_timestamp_seconds{{machine='
           f'"{backup_machine}",node="{primary}"}}')
    with lab.client(lab.vips[0]) as c:
        def recent() -> bool:
            assert c.post("/messages", json={"author": "rpo", "body": "x"}).status_code == 201
            r = httpx.get(f"http://{mon}:{PROMETHEUS_PORT}/api/v1/query", timeout=5,
                          params={"query": rpo}).json()["data"]["result"]
            return bool(r) and float(r[0]["value"][1]) < 30
        poll(recent, 60, f"the binlog copy of {primary} caught up, seen by Prometheus",
             interval=1)


def test_an_unreachable_source_is_one_clear_line_and_nothing_half_made(lab, backup_machine):
    before = [b["name"] for b in kept(lab)]
    rule = "hastack-test-no-backup-ssh"
    lab.ssh(backup_machine, f"nft insert rule inet hastack output tcp dport 22 "
                            f"reject comment {rule}")
    try:
        result = run("db", "backup", check=False)
    finally:
        handle = lab.ssh(backup_machine, f"nft -a list chain inet hastack output | "
                                         f"sed -n 's/.*comment \"{rule}\" # handle //p'").strip()
        lab.ssh(backup_machine, f"nft delete rule inet hastack output handle {handle}")
    assert result.returncode != 0
    line = one_line_error(result)
    assert line.startswith(f"error: {backup_machine}: backup failed: no database node can be "
                           "backed up: "), line
    for node in lab.names("db-primary") + lab.names("db-replica"):
        assert f"{node} unreachable" in line, line
    assert [b["name"] for b in kept(lab)] == before
    root = config(lab, backup_machine)["dir"]
    assert lab.ssh(backup_machine, f"ls -A {root} | grep -c partial || true").strip() == "0"


def test_a_full_target_is_refused_before_any_copy(lab, backup_machine):
    before = [b["name"] for b in kept(lab)]
    original = lab.ssh(backup_machine, f"cat {BACKUP_CONFIG}")
    wanted = json.loads(original)
    wanted["min_free_mib"] = 2**30  # a petabyte: more than any lab disk has free
    lab.ssh(backup_machine, f"echo '{json.dumps(wanted)}' > {BACKUP_CONFIG}")
    try:
        result = run("db", "backup", check=False)
    finally:
        lab.ssh(backup_machine, f"echo '{original.strip()}' > {BACKUP_CONFIG}")
    assert result.returncode != 0
    assert re.fullmatch(rf"error: {backup_machine}: backup failed: backup target \S+ has \d+ MiB "
                        r"free, a backup needs \d+ MiB: free space there or lower backup_keep",
                        one_line_error(result)), one_line_error(result)
    assert [b["name"] for b in kept(lab)] == before


def test_the_primary_binary_logs_reach_the_backup_machine_as_they_are_written(lab,
                                                                             backup_machine):
    root = config(lab, backup_machine)["dir"]
    with lab.client(lab.vips[0]) as c:
        r = c.post("/messages", json={"author": "backup-e2e", "body": f"binlog {uuid.uuid4()}"})
        assert r.status_code == 201, r.text
    acked = time.monotonic()
    nodes = json.loads(run("db", "status", "--json").stdout)["nodes"]
    primary = next(n for n in nodes if n["role"] == "primary")
    gtid = primary["gtid_binlog_pos"]  # this write's GTID, or a later one

    def copied():
        return lab.ssh(backup_machine, f"mariadb-binlog {root}/binlogs/{primary['name']}/* "
                                       f"2>/dev/null | grep -c 'GTID {gtid} ' || true"
                       ).strip() == "1"
    poll(copied, 10, f"GTID {gtid} in the backup machine's copy of {primary['name']}'s binlogs")
    print(f"\nthe write's binlog event was on the backup machine "
          f"{time.monotonic() - acked:.2f} s after it was acknowledged (at most; polled)")
    assert "active" in lab.ssh(backup_machine, "systemctl is-active hastack-binlog-follow")


def primary_state(lab) -> tuple[str, str]:
    """(name, gtid_binlog_pos) of the primary."""
    nodes = json.loads(run("db", "status", "--json").stdout)["nodes"]
    p = next(n for n in nodes if n["role"] == "primary")
    return p["name"], p["gtid_binlog_pos"]


def checksum(lab, node: str, table: str) -> int:
    return int(lab.ssh(node, f"mariadb -N -B -e 'CHECKSUM TABLE foobar.{table}'").split()[1])


def test_a_restore_to_a_point_returns_exactly_the_rows_acknowledged_up_to_it(lab,
                                                                              backup_machine):
    run("db", "backup")
    with lab.client(lab.vips[0]) as c:
        def write(tag: str) -> int:
            r = c.post("/messages", json={"author": "restore-e2e", "body": f"{tag} {uuid.uuid4()}"})
            assert r.status_code == 201, r.text
            return r.json()["id"]
        before = [write("before") for _ in range(5)]
        primary, point = primary_state(lab)
        # nothing else writes: the primary's tables now are the state at `point`
        expected = checksum(lab, primary, "messages")
        after = [write("after") for _ in range(5)]
    root = config(lab, backup_machine)["dir"]
    poll(lambda: lab.ssh(backup_machine, f"mariadb-binlog {root}/binlogs/{primary}/* 2>/dev/null"
                                         f" | grep -c 'GTID {point} ' || true").strip() == "1",
         10, f"GTID {point} copied to the backup machine")

    done = json.loads(run("db", "restore", "--to", point, "--json").stdout)
    assert done["restored_to_gtid"] == point and done["applied"] >= 5, done
    assert done["tables"]["messages"]["checksum"] == expected, (done, expected)
    print(f"\nrestore of the lab's data to {point}: {done['seconds']:.2f} s "
          f"({done['applied']} transactions replayed on {done['backup']})")
    assert count_in_backup(lab, backup_machine, done["datadir"], before) == len(before)
    assert count_in_backup(lab, backup_machine, done["datadir"], after) == 0


@pytest.mark.parametrize(("to", "message"), [
    ("2020-01-01T00:00:00Z", r"--to 2020-01-01T00:00:00Z is before the oldest backup \S+ "
                             r"\(consistent at GTID \d+-\d+-\d+, finished \S+\)"),
    ("2099-01-01T00:00:00Z", r"--to 2099-01-01T00:00:00Z is after the newest copied binary "
                             r"log event \(\S+\)"),
    ("0-41-99999999", r"--to 0-41-99999999 is after the newest copied binary log event "
                      r"\(GTID \d+-\d+-\d+\)"),
    ("yesterday", r"--to 'yesterday': give a GTID \(0-41-1234\) or a UTC time "
                  r"\(2026-11-28T09:40:00Z\)"),
])
def test_a_restore_outside_what_is_kept_is_one_clear_line(lab, backup_machine, to, message):
    restore_dir = "/var/backups/hastack-restore"  # backup_restore_dir
    kept_before = lab.ssh(backup_machine, f"ls {restore_dir}")
    result = run("db", "restore", "--to", to, check=False)
    assert result.returncode != 0
    assert re.fullmatch(rf"error: {backup_machine}: restore failed: {message}",
                        one_line_error(result)), one_line_error(result)
    assert lab.ssh(backup_machine, f"ls {restore_dir}") == kept_before


def test_the_restore_drill_equals_a_replica_and_leaves_it_replicating(lab, backup_machine):
    with lab.client(lab.vips[0]) as c:
        for i in range(5):
            assert c.post("/messages", json={"author": "drill-e2e", "body": f"{i}"}
                          ).status_code == 201
    replicas = in_role("replica")
    out = run("db", "drill").stdout
    passed = re.search(r"restore drill passed: \S+ \+ \d+ transactions restored to (\S+)'s "
                       r"GTID \d+-\d+-\d+ in [\d.]+ s; 3 tables equal \(CHECKSUM TABLE\)", out)
    assert passed and passed.group(1) in replicas, (out, replicas)
    replica = passed.group(1)
    print(f"\n{out.strip()}")

    def replicating():
        node = next(n for n in json.loads(run("db", "status", "--json").stdout)["nodes"]
                    if n["name"] == replica)
        return node["io_running"] == "Yes" and node["sql_running"] == "Yes"
    poll(replicating, 10, f"{replica} replicating again after the drill")

    mon = next(a for a in lab.machine(lab.names("monitoring")[0])["addresses"]
               if a.startswith("198.19."))

    def exported():
        r = httpx.get(f"http://{mon}:{PROMETHEUS_PORT}/api/v1/query", timeout=5, params={
            "query": f'hastack_db_restore_drill_success{{machine="{backup_machine}"}} == 1'})
        return r.json()["data"]["result"]
    poll(exported, 60, "the drill's success in Prometheus")


def test_a_diverged_replica_is_reseeded_from_a_fresh_backup_and_replicates_again(
        lab, backup_machine):
    """A replica that took a write of its own (its own GTID, which the primary never had)
    stops replicating once the primary writes on; `hastack db reseed` replaces its data by a
    fresh backup through the cluster: it replicates again, the stray row is gone and its
    table equals the primary's (CHECKSUM TABLE)."""
    roles = db_roles()
    primary = next(n for n, r in roles.items() if r == "primary")
    replica = next(n for n, r in roles.items() if r == "replica")
    line = one_line_error(run("db", "reseed", primary, check=False))
    assert f"{primary} is the primary" in line, line
    stray = f"stray {uuid.uuid4()}"
    lab.ssh(replica, "mariadb foobar -e \"INSERT INTO messages (author, body) "
                     f"VALUES ('reseed', '{stray}')\"")  # root may write past read_only
    with lab.client(lab.vips[0]) as c:
        def diverged() -> bool:
            assert c.post("/messages", json={"author": "reseed", "body": "after"}
                          ).status_code == 201
            st = {n["name"]: n for n in json.loads(run("db", "status", "--json").stdout)
                  ["nodes"]}[replica]
            return st["diverged"] and st["sql_running"] == "No"
        poll(diverged, 60, f"{replica} reported diverged (its SQL thread stopped)", interval=1)
    print(run("db", "reseed", replica).stdout)
    st = {n["name"]: n for n in json.loads(run("db", "status", "--json").stdout)["nodes"]}
    assert (st[replica]["role"], st[replica]["io_running"], st[replica]["sql_running"]) == (
        "replica", "Yes", "Yes")
    assert st[primary]["role"] == "primary"
    assert lab.ssh(replica, "mariadb -N foobar -e \"SELECT COUNT(*) FROM messages WHERE "
                            f"body = '{stray}'\"").strip() == "0"
    gtid = lab.ssh(primary, "mariadb -N -e 'SELECT @@gtid_binlog_pos'").strip()
    lab.ssh(replica, f"mariadb -N -e \"SELECT MASTER_GTID_WAIT('{gtid}', 30)\"")
    sums = {n: lab.ssh(n, "mariadb -N -e 'CHECKSUM TABLE foobar.messages'").split()[-1]
            for n in (primary, replica)}
    assert len(set(sums.values())) == 1, sums
