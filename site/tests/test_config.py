"""Configuration from the environment, and clear errors when it is wrong."""

import pytest

from conftest import offline_env
from foobar.app import create_app
from foobar.config import Config, ConfigError
from foobar.db.nodes import NodeAddress, parse_address

REQUIRED = [
    "FOOBAR_DB_PRIMARY",
    "FOOBAR_DB_NAME",
    "FOOBAR_DB_USER",
    "FOOBAR_DB_PASSWORD",
    "FOOBAR_MACHINE",
    "FOOBAR_SECRET_KEY",
]


def test_defaults_and_parsing():
    env = offline_env(FOOBAR_DB_PRIMARY="db1:3306", FOOBAR_DB_REPLICAS=" db2:3307, db3 ,")
    config = Config.from_env(env)
    assert config.db.primary == NodeAddress("db1", 3306)
    assert config.db.replicas == (NodeAddress("db2", 3307), NodeAddress("db3", 3306))
    assert config.max_replica_lag == 1.0
    assert config.gtid_wait_timeout == 0.5
    assert config.db.tls_ca is None


def test_write_retry_budget():
    env = offline_env()
    del env["FOOBAR_WRITE_RETRY_SECONDS"]
    assert Config.from_env(env).write_retry_seconds == 5.0
    assert Config.from_env(offline_env(FOOBAR_WRITE_RETRY_SECONDS="0")).write_retry_seconds == 0
    assert create_app(offline_env(FOOBAR_WRITE_RETRY_SECONDS="2.5")).extensions[
        "foobar"
    ].router.write_retry_seconds == 2.5


def test_replayable_retry_limit():
    assert Config.from_env(offline_env()).replayable_retry_seconds == 1.0
    config = Config.from_env(offline_env(FOOBAR_REPLAYABLE_RETRY_SECONDS="0.8"))
    assert config.replayable_retry_seconds == 0.8
    with pytest.raises(ConfigError, match="FOOBAR_REPLAYABLE_RETRY_SECONDS"):
        Config.from_env(offline_env(FOOBAR_REPLAYABLE_RETRY_SECONDS="soon"))


def test_replicas_may_be_empty_or_absent():
    env = offline_env(FOOBAR_DB_REPLICAS="")
    assert Config.from_env(env).db.replicas == ()
    del env["FOOBAR_DB_REPLICAS"]
    assert Config.from_env(env).db.replicas == ()


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_variable_is_named(name):
    env = offline_env()
    del env[name]
    with pytest.raises(ConfigError, match=name):
        create_app(env)


def test_empty_password_is_allowed():
    assert Config.from_env(offline_env(FOOBAR_DB_PASSWORD="")).db.password == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FOOBAR_MAX_REPLICA_LAG", "soon"),
        ("FOOBAR_GTID_WAIT_TIMEOUT", "-1"),
        ("FOOBAR_WRITE_RETRY_SECONDS", "later"),
        ("FOOBAR_WRITE_RETRY_SECONDS", "-0.5"),
        ("FOOBAR_WRITE_RETRY_SECONDS", "30"),  # gunicorn would kill the waiting worker
        ("FOOBAR_DB_PRIMARY", "db1:notaport"),
        ("FOOBAR_DB_REPLICAS", "db2:99999"),
        ("FOOBAR_DB_TLS_CA", "/nonexistent/ca.pem"),
    ],
)
def test_bad_values_are_named(name, value):
    with pytest.raises(ConfigError, match=name):
        Config.from_env(offline_env(**{name: value}))


def test_tls_ca_turns_on_verified_tls(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not really a cert")
    config = Config.from_env(offline_env(FOOBAR_DB_TLS_CA=str(ca)))
    kwargs = config.db.connect_settings().connect_kwargs(config.db.primary)
    assert kwargs["ssl_ca"] == str(ca)
    assert kwargs["ssl_verify_cert"] and kwargs["ssl_verify_identity"]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("db1", NodeAddress("db1", 3306)),
        ("10.0.0.5:3307", NodeAddress("10.0.0.5", 3307)),
        ("[::1]:3308", NodeAddress("::1", 3308)),
        ("[fd00::2]", NodeAddress("fd00::2", 3306)),
    ],
)
def test_parse_address(text, address):
    assert parse_address(text) == address
    assert parse_address(address.name) == address


@pytest.mark.parametrize("text", ["", ":3306", "db1:", "db1:0", "::1", "[::1", "[::1]x"])
def test_bad_addresses(text):
    with pytest.raises(ValueError):
        parse_address(text)
