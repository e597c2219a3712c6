"""Schema migrations: an ordered list of SQL steps, applied once each on the primary.

`foobar-migrate` may run on every app machine at every deploy: a server-wide GET_LOCK
makes concurrent runs take turns, and the schema_migrations table makes later runs no-ops.
Steps are also written to be harmless if repeated (IF NOT EXISTS), because MariaDB
commits DDL at once, so a run killed between a step and its bookkeeping row must be able to
run that step again. Replicas get the schema through replication.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pymysql

from foobar.config import ConfigError, database_from_env
from foobar.db.nodes import ConnectSettings, NodeAddress, NodeUnavailable, connect


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create messages",
        (
            """
            CREATE TABLE IF NOT EXISTS messages (
                id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                author VARCHAR(40) NOT NULL,
                body VARCHAR(500) NOT NULL,
                created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                INDEX messages_created_at (created_at)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
            """,
        ),
    ),
    # One row per write, inserted in the write's own transaction (foobar.messages): the
    # primary key is what makes a replayed request return the first one's result instead
    # of inserting again. request_hash tells a replay from a different request reusing the
    # key; the response is rebuilt from message_id (messages never change). Rows older
    # than a day are deleted in small batches along created_at (messages.KeyPurger).
    Migration(
        2,
        "create idempotency_keys",
        (
            """
            CREATE TABLE IF NOT EXISTS idempotency_keys (
                idempotency_key VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                request_hash BINARY(32) NOT NULL,
                message_id BIGINT NULL,
                created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                PRIMARY KEY (idempotency_key),
                INDEX idempotency_keys_created_at (created_at)
            ) ENGINE=InnoDB
            """,
        ),
    ),
)

_BOOKKEEPING = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version INT NOT NULL PRIMARY KEY,
        name VARCHAR(200) NOT NULL,
        applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


class MigrationError(Exception):
    pass


def check_order(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise MigrationError(f"migration versions must be unique and increasing: {versions}")


def applied_versions(cursor) -> set[int]:
    cursor.execute("SELECT version FROM schema_migrations")
    return {int(row["version"]) for row in cursor.fetchall()}


def migrate(
    conn,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    lock_timeout: int = 60,
    say: Callable[[str], None] = lambda line: None,
) -> list[int]:
    """Apply the missing migrations in order; return the versions applied by this call."""
    check_order(migrations)
    with conn.cursor() as cursor:
        cursor.execute("SELECT DATABASE() AS db")
        lock = f"foobar-migrate:{cursor.fetchone()['db']}"[:64]
        cursor.execute("SELECT GET_LOCK(%s, %s) AS got", (lock, lock_timeout))
        if cursor.fetchone()["got"] != 1:
            raise MigrationError(f"another migration held lock {lock!r} for {lock_timeout}s")
        try:
            cursor.execute(_BOOKKEEPING)
            done = applied_versions(cursor)
            applied = []
            for migration in migrations:
                if migration.version in done:
                    continue
                say(f"applying {migration.version}: {migration.name}")
                for statement in migration.statements:
                    cursor.execute(statement)
                cursor.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                applied.append(migration.version)
            return applied
        finally:
            cursor.execute("SELECT RELEASE_LOCK(%s)", (lock,))


def _connect(primary: NodeAddress, settings: ConnectSettings):
    # DDL on a big table can take a while; the app's 2 s read timeout is for web requests.
    patient = dataclasses.replace(
        settings, connect_timeout=5.0, read_timeout=600.0, write_timeout=60.0
    )
    return connect(primary, patient)


def _connect_writable(nodes: Sequence[NodeAddress], settings: ConnectSettings):
    """The node that is the primary now (read_only off), the configured one asked first: a
    failover cluster promotes another node, and the configuration names the first primary."""
    seen = []
    for node in nodes:
        try:
            conn = _connect(node, settings)
        except NodeUnavailable as exc:
            seen.append(f"{node.name} unreachable ({exc})")
            continue
        with conn.cursor() as cursor:
            cursor.execute("SELECT @@global.read_only AS ro")
            read_only = cursor.fetchone()["ro"]
        if not read_only:
            return conn
        conn.close()
        seen.append(f"{node.name} read-only")
    raise NodeUnavailable(", ".join(seen), RuntimeError("no writable node"), not_applied=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="foobar-migrate",
        description="Apply foobar's schema migrations to the primary (the writable node of "
        "FOOBAR_DB_PRIMARY and FOOBAR_DB_REPLICAS, the configured primary asked first).",
    )
    parser.add_argument("--status", action="store_true", help="list migrations, change nothing")
    parser.add_argument("--lock-timeout", type=int, default=60, metavar="SECONDS")
    args = parser.parse_args(argv)
    try:
        db = database_from_env()
        conn = _connect_writable((db.primary, *db.replicas), db.connect_settings())
    except ConfigError as exc:
        print(f"foobar-migrate: {exc}", file=sys.stderr)
        return 2
    except NodeUnavailable as exc:
        print(f"foobar-migrate: cannot reach primary {exc}", file=sys.stderr)
        return 1
    try:
        if args.status:
            with conn.cursor() as cursor:
                cursor.execute("SHOW TABLES LIKE 'schema_migrations'")
                done = applied_versions(cursor) if cursor.fetchall() else set()
            for m in MIGRATIONS:
                print(f"{m.version:4d} {'applied' if m.version in done else 'pending'} {m.name}")
            return 0
        applied = migrate(conn, lock_timeout=args.lock_timeout, say=print)
        print(f"foobar-migrate: applied {applied}" if applied else "foobar-migrate: up to date")
        return 0
    except (MigrationError, pymysql.err.Error) as exc:
        print(f"foobar-migrate: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
