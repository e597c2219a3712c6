"""The backup machine's program (ansible/roles/backup/files/hastack-db-backup), its pure parts:
which node a backup comes from, what a target means, how a copied binlog is read, when the
target is too full. The end-to-end test (tests/e2e/test_45_backup.py) runs it for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .role_programs import load


@pytest.fixture(scope="module")
def prog():
    return load("backup", "hastack-db-backup")


NODES = [{"name": "db1", "address": "198.19.0.41"}, {"name": "db2", "address": "198.19.0.42"},
         {"name": "db3", "address": "198.19.0.43"}]


def config(tmp_path: Path, **extra) -> dict:
    return {"dir": str(tmp_path), "keep": 2, "max_replica_lag_seconds": 60,
            "free_space_factor": 2, "min_free_mib": 1, "nodes": NODES, **extra}


def states(prog, monkeypatch, answers: dict[str, dict]) -> None:
    monkeypatch.setattr(prog, "node_state", lambda cfg, node: answers[node["name"]])


PRIMARY = {"read_only": "0", "gtid": "0-41-9", "io": "", "sql": "", "lag": ""}
FIT = {"read_only": "1", "gtid": "0-41-9", "io": "Yes", "sql": "Yes", "lag": "0"}


def test_a_fit_replica_is_the_source_whatever_the_inventory_order(prog, monkeypatch, tmp_path):
    states(prog, monkeypatch, {"db1": PRIMARY, "db2": {**FIT, "lag": "600"}, "db3": FIT})
    node, state, seen = prog.choose_source(config(tmp_path))
    assert node["name"] == "db3" and state["read_only"] == "1"
    assert seen == ["db1 primary", "db2 replica not fit (io Yes, sql Yes, lag 600)",
                    "db3 replica, 0 s behind"]


def test_without_a_fit_replica_the_primary_is_the_source(prog, monkeypatch, tmp_path):
    states(prog, monkeypatch, {"db1": {"error": "no answer"}, "db2": PRIMARY,
                               "db3": {**FIT, "sql": "No"}})
    node, _, seen = prog.choose_source(config(tmp_path))
    assert node["name"] == "db2"
    assert seen[0] == "db1 unreachable (no answer)"


def test_no_node_at_all_is_one_line_naming_each(prog, monkeypatch, tmp_path):
    states(prog, monkeypatch, {n["name"]: {"error": "Connection refused"} for n in NODES})
    with pytest.raises(prog.BackupError, match=r"^no database node can be backed up: db1 "
                       r"unreachable \(Connection refused\); db2 .*; db3 .*$"):
        prog.choose_source(config(tmp_path))


def test_a_full_target_is_refused_from_the_last_backup_size(prog, tmp_path):
    done = tmp_path / "full" / "20261128T000000Z-db2"
    done.mkdir(parents=True)
    (done / "backup.json").write_text(json.dumps({"bytes": 2**60}))
    (tmp_path / "full" / "20261129T000000Z-db2").mkdir()  # no backup.json: not complete
    assert prog.complete_backups(tmp_path) == [done]
    with pytest.raises(prog.BackupError, match=rf"^backup target {tmp_path} has \d+ MiB free, "
                       r"a backup needs 2199023255552 MiB: free space there or lower "
                       r"backup_keep$"):
        prog.check_space(config(tmp_path), tmp_path)


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("0-41-1234", "gtid", "0-41-1234"),
    ("2026-11-28T09:40:00Z", "time", 1795858800),
    ("2026-11-28 09:40:00", "time", 1795858800),
])
def test_a_target_is_a_gtid_or_a_utc_time(prog, text, kind, value):
    assert prog.parse_target(text) == (kind, value)


@pytest.mark.parametrize("text", ["yesterday", "0-41", "09:40"])
def test_anything_else_is_refused_saying_what_to_give(prog, text):
    with pytest.raises(prog.BackupError, match=r"give a GTID \(0-41-1234\) or a UTC time"):
        prog.parse_target(text)


def test_a_date_alone_is_not_read_as_a_gtid(prog):
    # 2026-11-28 has a GTID's shape (domain 2026, server 11, seq 28): never guess
    with pytest.raises(prog.BackupError, match=r"^--to '2026-11-28' is a date alone: give a "
                       r"UTC time \(2026-11-28T00:00:00Z\) or a GTID \(0-41-1234\)$"):
        prog.parse_target("2026-11-28")


def test_a_copied_binlog_line_gives_its_gtid_and_utc_time(prog):
    # as mariadb-binlog 10.11 prints a transaction's GTID event (TZ=UTC)
    line = ("#261128  9:37:47 server id 41  end_log_pos 30702 CRC32 0xcd91c5f5 \tGTID 0-41-56 "
            "trans")
    m = prog.EVENT_RE.match(line)
    assert m and m.group(3) == "0-41-56"
    assert (m.group(1), m.group(2)) == ("261128", "9:37:47")
    assert prog.seq("0-41-56") == 56 and prog.seq("") == 0


def test_a_gtid_of_another_replication_domain_is_refused(prog, tmp_path):
    done = tmp_path / "full" / "20261128T000000Z-db2"
    done.mkdir(parents=True)
    (done / "backup.json").write_text(json.dumps({"name": done.name, "gtid": "0-41-50",
                                                  "finished": 1.0, "bytes": 1}))
    with pytest.raises(prog.BackupError, match=r"^--to 1-41-60: the backups are of "
                                               r"replication domain 0, not 1$"):
        prog.restore(config(tmp_path, restore_dir=str(tmp_path / "r")), "1-41-60")
    assert not (tmp_path / "r").exists()


def test_the_drill_passes_only_when_every_table_equals_the_replicas(prog, monkeypatch,
                                                                    tmp_path):
    (tmp_path / "binlogs" / "db1").mkdir(parents=True)
    monkeypatch.setattr(prog, "copied_events", lambda d: [("0-41-7", 0.0)])
    replica = {"messages": 11, "idempotency_keys": 22}
    monkeypatch.setattr(prog, "replica_checksums",
                        lambda cfg: (NODES[1], "0-41-7", dict(replica)))

    def restored(sums):
        return lambda cfg, to: {"backup": "b", "applied": 3, "seconds": 0.5,
                                "tables": {t: {"checksum": v, "rows": 1} for t, v in sums.items()}}
    monkeypatch.setattr(prog, "restore", restored(replica))
    assert prog.drill(config(tmp_path))["ok"] is True
    monkeypatch.setattr(prog, "restore", restored({**replica, "messages": 12}))
    failed = prog.drill(config(tmp_path))
    assert failed["ok"] is False and failed["differ"] == ["messages"]
    monkeypatch.setattr(prog, "restore", restored({"messages": 11}))
    assert prog.drill(config(tmp_path))["differ"] == ["idempotency_keys"]


def test_after_a_change_of_primary_the_copy_reaching_furthest_is_replayed(prog, monkeypatch,
                                                                         tmp_path):
    # db1 was the primary, then db2 (db1 cut off), then db1 again: db2's copy stops where
    # it stopped being the primary; db1's holds db2's transactions too (log_slave_updates)
    copies = {"db1": [("0-41-5", 0.0), ("0-41-6", 1.0), ("0-42-7", 2.0), ("0-41-8", 3.0)],
              "db2": [("0-41-5", 0.0), ("0-41-6", 1.0), ("0-42-7", 2.0)],
              "db3": [("0-41-9", 4.0)]}  # begins after the backup: cannot be replayed
    for name in copies:
        (tmp_path / "binlogs" / name).mkdir(parents=True)
    monkeypatch.setattr(prog, "copied_events", lambda d: copies[d.name])
    chosen, events = prog.binlogs_to_replay(tmp_path, "0-41-6")
    assert chosen.name == "db1" and events[-1][0] == "0-41-8"
    with pytest.raises(prog.BackupError, match=r"^no node's copied binary logs continue from "
                                               r"the backup's GTID 0-41-2 "):
        prog.binlogs_to_replay(tmp_path, "0-41-2")


def test_the_binlog_copy_lag_counts_what_the_primary_has_and_the_copy_not(tmp_path: Path):
    follow = load("backup", "hastack-binlog-follow")
    (tmp_path / "db1-bin.000001").write_bytes(b"x" * 100)
    (tmp_path / "db1-bin.000002").write_bytes(b"x" * 40)
    assert follow.lag_bytes([("db1-bin.000001", 100), ("db1-bin.000002", 40)], tmp_path) == 0
    assert follow.lag_bytes([("db1-bin.000001", 100), ("db1-bin.000002", 50),
                             ("db1-bin.000003", 7)], tmp_path) == 17
    # a file pruned after a backup held it (older than any kept here) is not owed
    assert follow.lag_bytes([("db1-bin.000000", 500), ("db1-bin.000001", 100),
                             ("db1-bin.000002", 40)], tmp_path) == 0


def test_the_binlog_copy_metrics_name_the_node_followed(tmp_path: Path):
    follow = load("backup", "hastack-binlog-follow")
    textfile = tmp_path / "hastack_db_backup.prom"
    follow.write_metrics({"textfile": str(textfile)}, "db2", 0, 1700000000.5)
    text = (tmp_path / "hastack_db_binlog_copy.prom").read_text()
    assert 'hastack_db_binlog_copy_up{node="db2"} 1' in text
    assert 'hastack_db_binlog_copy_lag_bytes{node="db2"} 0' in text
    assert 'hastack_db_binlog_copy_caught_up_timestamp_seconds{node="db2"} 1700000000.500' in text
    follow.write_metrics({"textfile": str(textfile)}, "", None, None)
    assert (tmp_path / "hastack_db_binlog_copy.prom").read_text().splitlines()[-1] == (
        'hastack_db_binlog_copy_up{node=""} 0')


def test_copied_binlogs_older_than_the_oldest_backup_are_pruned(prog, tmp_path: Path,
                                                                  monkeypatch):
    """A file goes once the next one starts at or before the oldest backup's GTID; the
    newest of each node stays; a node's files stop at the first one still needed."""
    starts = {"db1-bin.000002": "0-41-10", "db1-bin.000003": "0-41-20,0-42-3",
              "db1-bin.000004": "0-41-31", "db2-bin.000008": "0-41-5,0-42-90"}
    for name in [*starts, "db1-bin.000001", "db2-bin.000007"]:
        node = "db1" if name.startswith("db1") else "db2"
        (tmp_path / "binlogs" / node).mkdir(parents=True, exist_ok=True)
        (tmp_path / "binlogs" / node / name).write_text("x")
    monkeypatch.setattr(prog, "starts_after", lambda path: starts[path.name])
    assert prog.prune_binlogs(tmp_path, "0-41-25") == ["db1/db1-bin.000001",
                                                       "db1/db1-bin.000002"]
    assert sorted(p.name for p in (tmp_path / "binlogs" / "db1").iterdir()) == [
        "db1-bin.000003", "db1-bin.000004"]
    # db2's next file starts after 0-42-90: its older one may hold writes the backup lacks
    assert (tmp_path / "binlogs" / "db2" / "db2-bin.000007").exists()
