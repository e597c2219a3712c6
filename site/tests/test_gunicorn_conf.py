"""The gunicorn settings' reload hook: new workers see the environment the deploy wrote."""

import importlib
import os

import pytest


@pytest.fixture
def gunicorn_conf(tmp_path, monkeypatch):
    """The settings module, imported with its side effects kept inside this test: it points
    prometheus_client at a multi-process directory, which other tests must not inherit."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    return importlib.import_module("foobar.gunicorn_conf")


def test_env_file_is_read_like_systemd(gunicorn_conf, tmp_path):
    f = tmp_path / "site.env"
    f.write_text('# comment\n\nFOOBAR_MACHINE=app9\nFOOBAR_DB_REPLICAS=a:1,b:2\nQUOTED="x y"\n')
    assert gunicorn_conf.read_env_file(str(f)) == {
        "FOOBAR_MACHINE": "app9", "FOOBAR_DB_REPLICAS": "a:1,b:2", "QUOTED": "x y"}


def test_on_reload_updates_the_environment(gunicorn_conf, tmp_path, monkeypatch):
    f = tmp_path / "site.env"
    f.write_text("FOOBAR_DB_PRIMARY=198.19.0.42:3306\n")
    monkeypatch.setenv("FOOBAR_ENV_FILE", str(f))
    monkeypatch.setenv("FOOBAR_DB_PRIMARY", "198.19.0.41:3306")
    gunicorn_conf.on_reload(server=None)
    assert os.environ["FOOBAR_DB_PRIMARY"] == "198.19.0.42:3306"


def test_one_tls_context_per_worker_not_per_connection(gunicorn_conf):
    """gunicorn asks for a context on every connection: building it once keeps the files
    read once and lets clients resume their TLS sessions."""
    import ssl

    made = []

    def factory():
        made.append(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        return made[-1]

    first = gunicorn_conf.ssl_context(None, factory)
    assert gunicorn_conf.ssl_context(None, factory) is first
    assert len(made) == 1
    assert first.minimum_version == ssl.TLSVersion.TLSv1_2


def test_a_variable_removed_from_the_file_is_gone_after_a_reload(gunicorn_conf, tmp_path,
                                                                  monkeypatch):
    f = tmp_path / "site.env"
    f.write_text("FOOBAR_BUILD=rel-7\nFOOBAR_MACHINE=app1\n")
    monkeypatch.setenv("FOOBAR_ENV_FILE", str(f))
    monkeypatch.setenv("FOOBAR_MACHINE", "app0")  # restored after the test
    monkeypatch.delenv("FOOBAR_BUILD", raising=False)
    monkeypatch.setenv("FOOBAR_TLS_CERT", "/etc/hastack/tls/machine.crt")  # the unit's own
    gunicorn_conf.on_reload(server=None)
    assert os.environ["FOOBAR_BUILD"] == "rel-7"
    f.write_text("FOOBAR_MACHINE=app1\n")
    gunicorn_conf.on_reload(server=None)
    assert "FOOBAR_BUILD" not in os.environ
    assert os.environ["FOOBAR_MACHINE"] == "app1"
    assert os.environ["FOOBAR_TLS_CERT"] == "/etc/hastack/tls/machine.crt"
