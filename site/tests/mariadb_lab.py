"""A throwaway MariaDB primary and GTID replica on 127.0.0.1 for the real-database tests.

Each server gets a temp datadir owned by the mysql user (mariadbd refuses to run as root),
free ports, and is stopped by its own PID. Readiness is polled, never slept for.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import pymysql
import pymysql.cursors

DB_NAME = "foobar"
SITE_USER = "foobar_site"
SITE_PASSWORD = "site-pw-for-tests"
REPL_USER = "foobar_repl"
REPL_PASSWORD = "repl-pw-for-tests"

SITE_GRANTS = "SELECT, INSERT, UPDATE, DELETE"
MIGRATION_GRANTS = "CREATE, ALTER, INDEX"


class LabError(Exception):
    pass


def find_binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise LabError("no free port")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except Exception as exc:  # polled again until the deadline
            last_error = exc
            result = None
        if result:
            return result
        time.sleep(interval)
    raise LabError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


@dataclass
class Server:
    name: str
    port: int
    basedir: str
    options: list[str]
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def datadir(self) -> str:
        return os.path.join(self.basedir, self.name, "data")

    @property
    def socket_path(self) -> str:
        return os.path.join(self.basedir, self.name, "mysqld.sock")

    @property
    def log_path(self) -> str:
        return os.path.join(self.basedir, self.name, "error.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def install(self) -> None:
        os.makedirs(self.datadir)
        _own(os.path.dirname(self.datadir))
        _own(self.datadir)
        cmd = [
            find_binary("mariadb-install-db"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ]
        if os.geteuid() == 0:
            cmd.append("--user=mysql")
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise LabError(f"mariadb-install-db failed for {self.name}:\n{done.stderr[-3000:]}")

    def start(self) -> None:
        cmd = [
            find_binary("mariadbd"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket_path}",
            f"--pid-file={os.path.join(self.basedir, self.name, 'mysqld.pid')}",
            f"--log-error={self.log_path}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--skip-innodb-doublewrite",
            "--innodb-flush-log-at-trx-commit=2",
            "--performance-schema=OFF",
            *self.options,
        ]
        if os.geteuid() == 0:
            cmd.append("--user=mysql")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_until(self._ready, 60, f"{self.name} to accept connections")
        except LabError as exc:
            raise LabError(f"{exc}\n--- {self.log_path} ---\n{self.log_tail()}") from None

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise LabError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        with self.root() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        return True

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it will not go."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def root(self) -> pymysql.connections.Connection:
        return pymysql.connect(
            unix_socket=self.socket_path,
            user="root",
            password="",
            autocommit=True,
            connect_timeout=2,
            read_timeout=10,
            cursorclass=pymysql.cursors.DictCursor,
        )

    def site(self, database: str = DB_NAME) -> pymysql.connections.Connection:
        """A TCP connection as the site user, the way the app connects."""
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=SITE_USER,
            password=SITE_PASSWORD,
            database=database,
            autocommit=True,
            connect_timeout=2,
            read_timeout=10,
            cursorclass=pymysql.cursors.DictCursor,
        )

    def sql(self, *statements: str, args=None) -> list[dict]:
        """Run statements as root; return the last one's rows."""
        with self.root() as conn, conn.cursor() as cur:
            rows: list[dict] = []
            for statement in statements:
                cur.execute(statement, args)
                rows = list(cur.fetchall())
            return rows


def _own(path: str) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "mysql", "mysql")


@dataclass
class Lab:
    basedir: str
    primary: Server
    replica: Server

    @classmethod
    def start(cls) -> Lab:
        missing = [b for b in ("mariadbd", "mariadb-install-db") if not find_binary(b)]
        if missing:
            raise LabError(
                f"{', '.join(missing)} not found: the real-database tests need MariaDB "
                "installed (Debian: apt-get install -y mariadb-server)"
            )
        basedir = tempfile.mkdtemp(prefix="foobar-mariadb-")
        _own(basedir)
        primary = Server(
            "primary",
            free_port(33061),
            basedir,
            [
                "--server-id=1",
                "--log-bin=primary-bin",
                "--binlog-format=ROW",
                "--gtid-strict-mode=ON",
                "--gtid-domain-id=0",
            ],
        )
        replica = Server(
            "replica",
            free_port(33062 if primary.port != 33062 else 33063),
            basedir,
            ["--server-id=2", "--read-only=ON", "--gtid-strict-mode=ON", "--relay-log=relay"],
        )
        lab = cls(basedir, primary, replica)
        try:
            for server in (primary, replica):
                server.install()
                server.start()
            lab._set_up()
        except BaseException:
            lab.stop()
            raise
        return lab

    def _set_up(self) -> None:
        site = f"'{SITE_USER}'@'127.0.0.1'"
        # Accounts are made on each server, outside the binlog, so the replica's site user
        # can have fewer rights than the primary's (no DDL there).
        self.primary.sql(
            "SET SESSION sql_log_bin = 0",
            f"CREATE USER '{REPL_USER}'@'127.0.0.1' IDENTIFIED BY '{REPL_PASSWORD}'",
            f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'127.0.0.1'",
            f"CREATE USER {site} IDENTIFIED BY '{SITE_PASSWORD}'",
            f"GRANT {SITE_GRANTS}, {MIGRATION_GRANTS} ON `{DB_NAME}`.* TO {site}",
            f"GRANT {SITE_GRANTS}, {MIGRATION_GRANTS} ON `{DB_NAME}_migrations`.* TO {site}",
        )
        self.replica.sql(
            f"CREATE USER {site} IDENTIFIED BY '{SITE_PASSWORD}'",
            f"GRANT {SITE_GRANTS} ON `{DB_NAME}`.* TO {site}",
            f"GRANT {SITE_GRANTS} ON `{DB_NAME}_migrations`.* TO {site}",
            # The router reads SHOW SLAVE STATUS for replica health and lag.
            f"GRANT SLAVE MONITOR ON *.* TO {site}",
        )
        # Databases go through the binlog so the replica gets them by replication.
        self.primary.sql(
            f"CREATE DATABASE `{DB_NAME}` CHARACTER SET utf8mb4",
            f"CREATE DATABASE `{DB_NAME}_migrations` CHARACTER SET utf8mb4",
        )
        self.replica.sql(
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={self.primary.port}, "
            f"MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', "
            "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            "START SLAVE",
        )
        self.wait_replica_caught_up()

    def replica_status(self) -> dict:
        rows = self.replica.sql("SHOW SLAVE STATUS")
        return rows[0] if rows else {}

    def wait_replica_caught_up(self, timeout: float = 30) -> None:
        target = self.primary.sql("SELECT @@gtid_binlog_pos AS pos")[0]["pos"]

        def caught_up():
            status = self.replica_status()
            if status.get("Slave_IO_Running") != "Yes" or status.get("Slave_SQL_Running") != "Yes":
                return False
            waited = self.replica.sql(
                "SELECT MASTER_GTID_WAIT(%s, 1) AS w", args=(target,)
            )[0]["w"]
            return waited == 0

        wait_until(caught_up, timeout, f"replica to reach {target}", interval=0.1)

    def env(self, machine: str = "app1", **overrides: str) -> dict[str, str]:
        env = {
            "FOOBAR_DB_PRIMARY": self.primary.address,
            "FOOBAR_DB_REPLICAS": self.replica.address,
            "FOOBAR_DB_NAME": DB_NAME,
            "FOOBAR_DB_USER": SITE_USER,
            "FOOBAR_DB_PASSWORD": SITE_PASSWORD,
            "FOOBAR_MACHINE": machine,
            "FOOBAR_SECRET_KEY": "test-secret-key",
        }
        env.update(overrides)
        return env

    def stop(self) -> None:
        for server in (self.replica, self.primary):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the rest
                print(f"could not stop {server.name}: {exc}")
        shutil.rmtree(self.basedir, ignore_errors=True)
