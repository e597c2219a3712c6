"""Fixtures: offline apps for unit tests, and a real MariaDB primary + replica for the rest."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from foobar.app import create_app
from foobar.config import Config
from foobar.migrate import migrate
from mariadb_lab import DB_NAME, Lab, LabError


@pytest.fixture(scope="session")
def lab():
    """Primary + replica on 127.0.0.1, migrated; fails (never skips) without MariaDB."""
    try:
        lab = Lab.start()
    except LabError as exc:
        pytest.fail(f"cannot start the MariaDB test servers: {exc}", pytrace=False)
    try:
        with lab.primary.migrator(DB_NAME) as conn:
            migrate(conn)
        lab.wait_replica_caught_up()
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def make_app(lab):
    """create_app against the lab; keyword args override Config fields.

    Each app's background health checkers stop at the end of the test.
    """
    apps = []

    def make(machine: str = "app1", env: dict | None = None, **fields):
        config = Config.from_env(lab.env(machine, **(env or {})))
        if fields:
            config = dataclasses.replace(config, **fields)
        app = create_app(config)
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["foobar"].router.close()


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_env(**overrides: str) -> dict[str, str]:
    """Settings pointing at ports nothing listens on: the database is 'down'."""
    env = {
        "FOOBAR_DB_PRIMARY": f"127.0.0.1:{unused_port()}",
        "FOOBAR_DB_REPLICAS": f"127.0.0.1:{unused_port()}",
        "FOOBAR_DB_NAME": "foobar",
        "FOOBAR_DB_USER": "site",
        "FOOBAR_DB_PASSWORD": "pw",
        "FOOBAR_MACHINE": "app9",
        "FOOBAR_SECRET_KEY": "unit-test-secret",
        # Nothing will come up: keep the wait for a writable node short.
        "FOOBAR_WRITE_RETRY_SECONDS": "0.2",
    }
    env.update(overrides)
    return env


@pytest.fixture
def offline_client():
    app = create_app(offline_env())
    app.testing = True
    yield app.test_client()
    app.extensions["foobar"].router.close()
