"""Settings, read only from environment variables (the deploy writes /etc/foobar/site.env).

One source of truth keeps the systemd unit, the tests and a developer's shell in step; a
missing or malformed variable stops start-up with a message naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from foobar.db.nodes import ConnectSettings, NodeAddress, parse_address
from foobar.version import BUILD_ID


class ConfigError(Exception):
    pass


WRITE_RETRY_MAX = 20.0


@dataclass(frozen=True)
class DatabaseConfig:
    primary: NodeAddress
    replicas: tuple[NodeAddress, ...]
    name: str
    user: str
    password: str
    tls_ca: str | None = None

    def connect_settings(self) -> ConnectSettings:
        return ConnectSettings(self.name, self.user, self.password, self.tls_ca)


@dataclass(frozen=True)
class Config:
    machine: str
    secret_key: str
    db: DatabaseConfig
    max_replica_lag: float = 1.0
    gtid_wait_timeout: float = 0.5
    # A read on a replica that has not answered by then goes elsewhere (foobar.db.router).
    replica_read_timeout: float = 0.5
    # How long work on the primary is retried when that is safe (see foobar.db.router).
    write_retry_seconds: float = 5.0
    # The same for a request the proxies in front may send again while it runs (a read, a
    # write with an Idempotency-Key header): below their replay bound (foobar.db.router).
    replayable_retry_seconds: float = 1.0
    # Not an env var: how long the nodes' role/health answers are reused (tests stretch it).
    replica_check_interval: float = 1.0
    # What /healthz reports after the package version; None = a hash of the code.
    build: str | None = None
    # Where this machine's app processes share the nodes they found silent (tmpfs; None:
    # each process finds out for itself). foobar.db.marks.
    health_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        return cls(
            machine=_required(env, "FOOBAR_MACHINE"),
            secret_key=_required(env, "FOOBAR_SECRET_KEY"),
            db=database_from_env(env),
            max_replica_lag=_seconds(env, "FOOBAR_MAX_REPLICA_LAG", 1.0),
            gtid_wait_timeout=_seconds(env, "FOOBAR_GTID_WAIT_TIMEOUT", 0.5),
            replica_read_timeout=_seconds(env, "FOOBAR_REPLICA_READ_TIMEOUT", 0.5),
            # Below gunicorn's 30 s worker timeout, so a waiting request is never killed.
            write_retry_seconds=_seconds(
                env, "FOOBAR_WRITE_RETRY_SECONDS", 5.0, maximum=WRITE_RETRY_MAX
            ),
            replayable_retry_seconds=_seconds(
                env, "FOOBAR_REPLAYABLE_RETRY_SECONDS", 1.0, maximum=WRITE_RETRY_MAX
            ),
            build=_build(env),
            health_dir=env.get("FOOBAR_HEALTH_DIR") or None,
        )


def database_from_env(env: Mapping[str, str] | None = None) -> DatabaseConfig:
    """Just the database part: all that foobar-migrate needs."""
    env = os.environ if env is None else env
    primary = _address(_required(env, "FOOBAR_DB_PRIMARY"), "FOOBAR_DB_PRIMARY")
    replicas = tuple(
        _address(item, "FOOBAR_DB_REPLICAS")
        for item in env.get("FOOBAR_DB_REPLICAS", "").split(",")
        if item.strip()
    )
    if "FOOBAR_DB_PASSWORD" not in env:
        raise ConfigError("missing required environment variable FOOBAR_DB_PASSWORD")
    tls_ca = env.get("FOOBAR_DB_TLS_CA", "").strip() or None
    if tls_ca and not os.path.isfile(tls_ca):
        raise ConfigError(f"FOOBAR_DB_TLS_CA: no such file {tls_ca!r}")
    return DatabaseConfig(
        primary=primary,
        replicas=replicas,
        name=_required(env, "FOOBAR_DB_NAME"),
        user=_required(env, "FOOBAR_DB_USER"),
        password=env["FOOBAR_DB_PASSWORD"],
        tls_ca=tls_ca,
    )


def _build(env: Mapping[str, str]) -> str | None:
    text = env.get("FOOBAR_BUILD", "").strip()
    if not text:
        return None
    if not BUILD_ID.fullmatch(text):
        raise ConfigError(
            f"FOOBAR_BUILD must be 1-64 letters, digits, '.', '_' or '-', got {text!r}"
        )
    return text


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"missing required environment variable {name}")
    return value


def _address(text: str, name: str) -> NodeAddress:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _seconds(
    env: Mapping[str, str], name: str, default: float, maximum: float = 3600.0
) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {text!r}") from None
    if not 0 <= value < maximum:
        raise ConfigError(f"{name} must be at least 0 and below {maximum:g} seconds, got {text!r}")
    return value
