"""FOOBAR_DB_TLS_CA: connections use TLS and trust only that CA."""

import os

from foobar.db.nodes import NodeUnavailable
from mariadb_lab import make_tls_files


def session_cipher(cursor) -> str:
    cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    return cursor.fetchone()["Value"]


def test_connections_use_tls_verified_against_the_ca(make_app, lab):
    app = make_app(env={"FOOBAR_DB_TLS_CA": lab.tls_ca})
    client = app.test_client()
    assert client.post("/messages", json={"author": "tls", "body": "over TLS"}).status_code == 201
    assert client.get("/api/messages?limit=1").headers["X-DB-Role"] == "replica"
    assert client.get("/readyz").status_code == 200
    router = app.extensions["foobar"].router
    for node in router.nodes:
        assert node.run(session_cipher), node.name


def test_a_server_signed_by_another_ca_is_refused(make_app, lab):
    other = make_tls_files(os.path.join(lab.basedir, "other-ca"))
    app = make_app(env={"FOOBAR_DB_TLS_CA": other["ca"], "FOOBAR_WRITE_RETRY_SECONDS": "0.2"})
    client = app.test_client()
    assert client.get("/readyz").status_code == 503
    assert client.get("/api/messages").status_code == 503
    router = app.extensions["foobar"].router
    try:
        router.configured_primary.run(session_cipher)
    except NodeUnavailable as exc:
        assert "certificate verify failed" in str(exc.cause).lower()
    else:
        raise AssertionError("connected despite an untrusted certificate")


def test_without_a_ca_setting_tls_is_not_required(make_app):
    app = make_app()
    assert app.extensions["foobar"].config.db.tls_ca is None
    assert app.test_client().get("/api/messages?limit=1").status_code == 200
