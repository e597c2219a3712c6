"""A throwaway MariaDB primary and GTID replica on 127.0.0.1 for the real-database tests.

Each server gets a temp datadir owned by the mysql user (mariadbd refuses to run as root),
free ports, and is stopped by its own PID. Readiness is polled, never slept for.

Both servers are set up the way a switchover needs (binary log with log_slave_updates,
replication and site accounts on each), so `Lab.switchover` can swap their roles and
`Lab.restore` can put the original arrangement back.
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
MIGRATE_USER = "foobar_migrate"
MIGRATE_PASSWORD = "migrate-pw-for-tests"
REPL_USER = "foobar_repl"
REPL_PASSWORD = "repl-pw-for-tests"

# As deployed: the site serves requests with row rights only, so nothing at request time
# can need DDL; foobar-migrate runs as a user of its own that may also change the schema.
SITE_GRANTS = "SELECT, INSERT, UPDATE, DELETE"
MIGRATION_GRANTS = "CREATE, ALTER, INDEX, DROP"


class LabError(Exception):
    pass


def find_binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    """An ephemeral port, not a fixed one, so parallel test runs on one machine don't clash."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except (pymysql.err.Error, OSError, LabError) as exc:  # polled again until the deadline
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
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise LabError(f"mariadb-install-db failed for {self.name}:\n{done.stderr[-3000:]}")

    def start(self, tries: int = 1) -> None:
        """Start and wait until it answers; with tries > 1, move port if this one got taken."""
        for attempt in range(tries):
            try:
                return self._start_once()
            except LabError:
                if attempt + 1 == tries or "Address already in use" not in self.log_tail():
                    raise
                self.stop()
                self.port = free_port()

    def _start_once(self) -> None:
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
        return self._tcp(SITE_USER, SITE_PASSWORD, database)

    def migrator(self, database: str = DB_NAME) -> pymysql.connections.Connection:
        """A TCP connection as the migrations user, the way foobar-migrate connects."""
        return self._tcp(MIGRATE_USER, MIGRATE_PASSWORD, database)

    def _tcp(self, user: str, password: str, database: str) -> pymysql.connections.Connection:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=user,
            password=password,
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


def make_tls_files(directory: str) -> dict[str, str]:
    """A test CA and a server certificate for 127.0.0.1 (IP SAN), made with openssl."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise LabError("openssl not found (needed for the TLS test certificates)")
    os.makedirs(directory)
    files = {n: os.path.join(directory, f"{n}.pem") for n in ("ca", "ca_key", "cert", "key")}
    csr = os.path.join(directory, "server.csr")
    ext = os.path.join(directory, "san.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         "/CN=foobar test CA", "-keyout", files["ca_key"], "-out", files["ca"]],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", files["key"], "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", files["ca"], "-CAkey", files["ca_key"],
         "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", files["cert"]],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run([openssl, *step], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise LabError(f"openssl {step[0]} failed: {done.stderr[-2000:]}")
    for path in (directory, *files.values()):
        _own(path)
    return files


def _own(path: str) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "mysql", "mysql")


@dataclass
class Lab:
    basedir: str
    primary: Server
    replica: Server
    tls_ca: str  # CA that signed both servers' certificates

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
        tls = make_tls_files(os.path.join(basedir, "tls"))
        tls_options = [
            f"--ssl-ca={tls['ca']}",
            f"--ssl-cert={tls['cert']}",
            f"--ssl-key={tls['key']}",
        ]
        primary = Server(
            "primary",
            free_port(),
            basedir,
            [
                "--server-id=1",
                "--log-bin=primary-bin",
                "--log-slave-updates=ON",
                "--binlog-format=ROW",
                "--gtid-strict-mode=ON",
                "--gtid-domain-id=0",
                "--relay-log=relay",
                *tls_options,
            ],
        )
        replica = Server(
            "replica",
            next(p for p in iter(free_port, None) if p != primary.port),
            basedir,
            [
                "--server-id=2",
                "--read-only=ON",
                # A binlog with the replicated transactions in it: it can be promoted.
                "--log-bin=replica-bin",
                "--log-slave-updates=ON",
                "--binlog-format=ROW",
                "--gtid-strict-mode=ON",
                "--gtid-domain-id=0",
                "--relay-log=relay",
                *tls_options,
            ],
        )
        lab = cls(basedir, primary, replica, tls["ca"])
        try:
            for server in (primary, replica):
                server.install()
                server.start(tries=3)
            lab._set_up()
        except BaseException:
            lab.stop()
            raise
        return lab

    def _set_up(self) -> None:
        site = f"'{SITE_USER}'@'127.0.0.1'"
        migrator = f"'{MIGRATE_USER}'@'127.0.0.1'"
        # Accounts are made on each server, outside the binlog, so the replica's site user
        # can have fewer rights than the primary's (no DDL there). Both servers get the
        # replication account, since either may be the primary after a switchover.
        repl = (
            f"CREATE USER '{REPL_USER}'@'127.0.0.1' IDENTIFIED BY '{REPL_PASSWORD}'",
            f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'127.0.0.1'",
        )
        # The router reads SHOW SLAVE STATUS of any read-only node, whatever its configured
        # role: after a switchover the former primary is the replica.
        monitor = f"GRANT SLAVE MONITOR ON *.* TO {site}"
        self.primary.sql(
            "SET SESSION sql_log_bin = 0",
            *repl,
            f"CREATE USER {site} IDENTIFIED BY '{SITE_PASSWORD}'",
            f"GRANT {SITE_GRANTS} ON `{DB_NAME}`.* TO {site}",
            f"GRANT {SITE_GRANTS} ON `{DB_NAME}_migrations`.* TO {site}",
            monitor,
            f"CREATE USER {migrator} IDENTIFIED BY '{MIGRATE_PASSWORD}'",
            f"GRANT {SITE_GRANTS}, {MIGRATION_GRANTS} ON `{DB_NAME}`.* TO {migrator}",
            f"GRANT {SITE_GRANTS}, {MIGRATION_GRANTS} ON `{DB_NAME}_migrations`.* TO {migrator}",
        )
        self.replica.sql(
            "SET SESSION sql_log_bin = 0",
            *repl,
            f"CREATE USER {site} IDENTIFIED BY '{SITE_PASSWORD}'",
            f"GRANT {SITE_GRANTS} ON `{DB_NAME}`.* TO {site}",
            f"GRANT {SITE_GRANTS} ON `{DB_NAME}_migrations`.* TO {site}",
            monitor,
        )
        # Databases go through the binlog so the replica gets them by replication.
        self.primary.sql(
            f"CREATE DATABASE `{DB_NAME}` CHARACTER SET utf8mb4",
            f"CREATE DATABASE `{DB_NAME}_migrations` CHARACTER SET utf8mb4",
        )
        self.replica.sql(self._change_master(self.primary), "START SLAVE")
        self.wait_replica_caught_up()

    @staticmethod
    def _change_master(source: Server) -> str:
        return (
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={source.port}, "
            f"MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', "
            "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1"
        )

    def replica_status(self) -> dict:
        rows = self.replica.sql("SHOW SLAVE STATUS")
        return rows[0] if rows else {}

    def wait_replica_caught_up(self, timeout: float = 30) -> None:
        self.wait_caught_up(self.primary, self.replica, timeout)

    @staticmethod
    def wait_caught_up(source: Server, follower: Server, timeout: float = 30) -> None:
        """Until `follower` replicates (both threads) and has applied all of `source`'s binlog."""
        target = source.sql("SELECT @@gtid_binlog_pos AS pos")[0]["pos"]

        def caught_up():
            rows = follower.sql("SHOW SLAVE STATUS")
            status = rows[0] if rows else {}
            if status.get("Slave_IO_Running") != "Yes" or status.get("Slave_SQL_Running") != "Yes":
                return False
            waited = follower.sql("SELECT MASTER_GTID_WAIT(%s, 1) AS w", args=(target,))[0]["w"]
            return waited == 0

        wait_until(caught_up, timeout, f"{follower.name} to reach {target}", interval=0.1)

    @staticmethod
    def read_only(server: Server) -> bool:
        return bool(server.sql("SELECT @@global.read_only AS ro")[0]["ro"])

    def switchover(
        self, old: Server, new: Server, *, pause: float = 0.0, timeout: float = 10
    ) -> None:
        """Promote `new` the way `hastack db switchover` does; `old` then replicates from it.

        pause: extra seconds with no node writable (as if catching up took that long).
        """
        old.sql("SET GLOBAL read_only = 1")
        position = old.sql("SELECT @@gtid_binlog_pos AS pos")[0]["pos"]
        waited = new.sql(
            "SELECT MASTER_GTID_WAIT(%s, %s) AS w", args=(position, timeout)
        )[0]["w"]
        if waited != 0:
            old.sql("SET GLOBAL read_only = 0")
            raise LabError(f"{new.name} did not reach {position}; switchover abandoned")
        if pause:
            time.sleep(pause)
        new.sql("STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0")
        old.sql(
            "SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos",
            self._change_master(new),
            "START SLAVE",
        )

    def restore(self) -> None:
        """Back to the start: `primary` writable, `replica` read-only replicating from it."""
        rows = self.replica.sql("SHOW SLAVE STATUS")
        follows_primary = bool(rows) and int(rows[0]["Master_Port"]) == self.primary.port
        if follows_primary:
            # Replication untouched (at most read_only flags changed): just set them back.
            self.replica.sql("SET GLOBAL read_only = 1")
            self.primary.sql("SET GLOBAL read_only = 0")
        else:
            # `replica` was promoted and `primary` follows it: switch back.
            self.switchover(self.replica, self.primary)
        if self.primary.sql("SHOW SLAVE STATUS"):
            self.primary.sql("STOP SLAVE", "RESET SLAVE ALL")
        self.wait_replica_caught_up()

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
            except (OSError, subprocess.SubprocessError) as exc:  # keep stopping the rest
                print(f"could not stop {server.name}: {exc}")
        shutil.rmtree(self.basedir, ignore_errors=True)
