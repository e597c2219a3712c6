"""Migrations against the real primary: idempotent, serialised, replicated."""

import threading

import pymysql
import pytest

from foobar.migrate import MIGRATIONS, Migration, MigrationError, check_order, main, migrate
from mariadb_lab import DB_NAME, MIGRATE_PASSWORD, MIGRATE_USER

SCRATCH_DB = f"{DB_NAME}_migrations"
LATEST = [m.version for m in MIGRATIONS]


def reset_scratch_db(lab):
    lab.primary.sql(
        f"DROP TABLE IF EXISTS `{SCRATCH_DB}`.messages",
        f"DROP TABLE IF EXISTS `{SCRATCH_DB}`.idempotency_keys",
        f"DROP TABLE IF EXISTS `{SCRATCH_DB}`.schema_migrations",
    )


def test_migrations_apply_once_and_are_idempotent(lab):
    reset_scratch_db(lab)
    with lab.primary.migrator(SCRATCH_DB) as conn:
        assert migrate(conn) == LATEST
        assert migrate(conn) == []
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in cur.fetchall()] == LATEST
            cur.execute("SHOW CREATE TABLE messages")
            ddl = cur.fetchone()["Create Table"]
            cur.execute("SHOW CREATE TABLE idempotency_keys")
            keys_ddl = cur.fetchone()["Create Table"]
    assert "utf8mb4" in ddl and "KEY `messages_created_at` (`created_at`)" in ddl
    assert "datetime(6) NOT NULL DEFAULT current_timestamp(6)" in ddl
    assert "PRIMARY KEY (`idempotency_key`)" in keys_ddl
    assert "KEY `idempotency_keys_created_at` (`created_at`)" in keys_ddl
    assert "varchar(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL" in keys_ddl
    lab.wait_replica_caught_up()
    tables = lab.replica.sql(f"SHOW TABLES FROM `{SCRATCH_DB}`")
    assert {next(iter(r.values())) for r in tables} == {
        "messages",
        "idempotency_keys",
        "schema_migrations",
    }


def test_concurrent_runs_apply_each_step_once(lab):
    reset_scratch_db(lab)
    results, errors = [], []

    def run():
        try:
            with lab.primary.migrator(SCRATCH_DB) as conn:
                results.append(migrate(conn))
        except (pymysql.err.Error, MigrationError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(results, key=len) == [[], [], [], LATEST]


def test_later_steps_run_after_earlier_ones(lab):
    reset_scratch_db(lab)
    extra = Migration(2, "add a column", ("ALTER TABLE messages ADD COLUMN IF NOT EXISTS x INT",))
    with lab.primary.migrator(SCRATCH_DB) as conn:
        assert migrate(conn, MIGRATIONS[:1]) == [1]
        assert migrate(conn, (*MIGRATIONS[:1], extra)) == [2]
        assert migrate(conn, (*MIGRATIONS[:1], extra)) == []


def test_a_database_at_step_1_gets_the_idempotency_keys_table(lab):
    # What a deploy of this version meets: a live database migrated by the previous one.
    reset_scratch_db(lab)
    with lab.primary.migrator(SCRATCH_DB) as conn:
        assert migrate(conn, MIGRATIONS[:1]) == [1]
        with conn.cursor() as cur:
            cur.execute("INSERT INTO messages (author, body) VALUES ('old', 'kept')")
        assert migrate(conn) == [2]
        with conn.cursor() as cur:
            cur.execute("SELECT body FROM messages")
            assert [r["body"] for r in cur.fetchall()] == ["kept"]
            cur.execute("SELECT COUNT(*) AS n FROM idempotency_keys")
            assert cur.fetchone()["n"] == 0


def test_order_is_checked():
    with pytest.raises(MigrationError):
        check_order([Migration(2, "b", ()), Migration(1, "a", ())])
    with pytest.raises(MigrationError):
        check_order([Migration(1, "a", ()), Migration(1, "a again", ())])


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE nope (id INT)",
        "ALTER TABLE messages ADD COLUMN nope INT",
        "CREATE INDEX nope ON messages (author)",
        "DROP TABLE messages",
    ],
)
def test_the_site_user_cannot_change_the_schema_on_the_primary(lab, ddl):
    # The app runs with row rights only (as deployed), and the whole test suite with it:
    # nothing at request time may need DDL.
    with (
        lab.primary.site() as conn,
        conn.cursor() as cur,
        pytest.raises(pymysql.err.Error) as caught,
    ):
        cur.execute(ddl)
    assert caught.value.args[0] == 1142  # command denied to user


def test_replica_site_user_cannot_migrate(lab):
    with (
        lab.replica.site(SCRATCH_DB) as conn,
        conn.cursor() as cur,
        pytest.raises(pymysql.err.Error) as caught,
    ):
        cur.execute("CREATE TABLE nope (id INT)")
    assert caught.value.args[0] in (1142, 1290)  # no CREATE grant / read-only


def migrator_env(lab, **overrides) -> dict[str, str]:
    """The app's settings with the migrations user, as the deploy runs foobar-migrate."""
    return lab.env(FOOBAR_DB_USER=MIGRATE_USER, FOOBAR_DB_PASSWORD=MIGRATE_PASSWORD, **overrides)


def test_cli(lab, monkeypatch, capsys):
    reset_scratch_db(lab)
    for name, value in migrator_env(lab, FOOBAR_DB_NAME=SCRATCH_DB).items():
        monkeypatch.setenv(name, value)
    assert main(["--status"]) == 0
    assert "pending" in capsys.readouterr().out
    assert main([]) == 0
    assert f"applied {LATEST}" in capsys.readouterr().out
    assert main([]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["--status"]) == 0
    assert "pending" not in capsys.readouterr().out


def test_cli_names_missing_config(monkeypatch, capsys):
    monkeypatch.delenv("FOOBAR_DB_PRIMARY", raising=False)
    assert main([]) == 2
    assert "FOOBAR_DB_PRIMARY" in capsys.readouterr().err


def test_cli_reports_unreachable_primary(monkeypatch, capsys, lab):
    for name, value in migrator_env(lab, FOOBAR_DB_PRIMARY="127.0.0.1:1").items():
        monkeypatch.setenv(name, value)
    assert main([]) == 1
    assert "cannot reach primary" in capsys.readouterr().err


def test_cli_finds_the_primary_a_failover_made(monkeypatch, capsys, lab):
    """The configuration names the first primary; after a failover that node is read-only
    and another one is writable: migrations run there (not refused on the old one)."""
    reset_scratch_db(lab)
    for name, value in migrator_env(lab, FOOBAR_DB_NAME=SCRATCH_DB,
                                    FOOBAR_DB_PRIMARY=lab.replica.address,
                                    FOOBAR_DB_REPLICAS=lab.primary.address).items():
        monkeypatch.setenv(name, value)
    assert main([]) == 0
    assert f"applied {LATEST}" in capsys.readouterr().out


def test_cli_reports_no_writable_node(monkeypatch, capsys, lab):
    # the site's own user: it exists on the replica too (the migrations user only where the
    # deploy created it)
    for name, value in lab.env(FOOBAR_DB_PRIMARY=lab.replica.address,
                               FOOBAR_DB_REPLICAS="127.0.0.1:1").items():
        monkeypatch.setenv(name, value)
    assert main([]) == 1
    err = capsys.readouterr().err
    assert "read-only" in err and "127.0.0.1:1 unreachable" in err
