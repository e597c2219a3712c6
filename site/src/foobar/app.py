"""Builds the Flask app: config, database router and the headers every response carries."""

from __future__ import annotations

import time
from collections.abc import Mapping

from flask import Flask, abort, g, request

from foobar import errors, metrics, ops, views
from foobar.config import Config
from foobar.context import Site
from foobar.db.gtid import GtidCookie
from foobar.db.marks import DownBoard
from foobar.db.nodes import Node
from foobar.db.router import Router, limit_retries
from foobar.messages import KeyPurger
from foobar.version import running_version

MAX_REQUEST_BYTES = 16 * 1024

_HTML_POLICY = (
    "default-src 'self'; img-src 'self'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def build_router(config: Config) -> Router:
    # The configured primary and replicas are the set of nodes; the router finds out from
    # the servers themselves which one is the primary now (see foobar.db.router).
    settings = config.db.connect_settings()
    return Router(
        Node(config.db.primary, settings),
        [Node(address, settings) for address in config.db.replicas],
        max_lag=config.max_replica_lag,
        gtid_wait_timeout=config.gtid_wait_timeout,
        replica_read_timeout=config.replica_read_timeout,
        check_interval=config.replica_check_interval,
        write_retry_seconds=config.write_retry_seconds,
        events=metrics.PrometheusEvents(),
        down_board=DownBoard(config.health_dir) if config.health_dir else None,
    )


def create_app(config: Config | Mapping[str, str] | None = None) -> Flask:
    """config: a Config, a mapping shaped like the environment, or None for os.environ."""
    if not isinstance(config, Config):
        config = Config.from_env(config)
    app = Flask(__name__)
    app.config.update(SECRET_KEY=config.secret_key, MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES)
    router = build_router(config)
    app.extensions["foobar"] = Site(
        config,
        router,
        GtidCookie(config.secret_key),
        KeyPurger(router),
        running_version(config.build),
    )

    app.register_blueprint(views.bp)
    app.register_blueprint(ops.bp)
    errors.register(app)

    @app.before_request
    def start_clock():
        g.started = time.perf_counter()

    @app.before_request
    def bound_waits_of_replayable_requests():
        # What the proxies may send again while it runs (a read; a write whose
        # Idempotency-Key makes that safe) waits for a primary at most
        # replayable_retry_seconds, below their replay bound; a keyless write is never
        # replayed once sent and may wait out a whole switchover (foobar.db.router).
        replayable = request.method in ("GET", "HEAD") or views.IDEMPOTENCY_HEADER in request.headers
        limit_retries(config.replayable_retry_seconds if replayable else None)

    @app.before_request
    def refuse_long_chunked_bodies():
        # With a Content-Length Werkzeug refuses big bodies itself; a chunked body is only
        # cut off at the limit, which would read as truncated JSON or form data.
        if request.content_length is None and request.method in ("POST", "PUT", "PATCH"):
            if len(request.get_data(cache=True)) >= MAX_REQUEST_BYTES:
                abort(413)

    @app.after_request
    def stamp(response):
        response.headers["X-App"] = config.machine
        node = g.get("db_node")
        if node is not None:
            response.headers["X-DB"] = node.name
            response.headers["X-DB-Role"] = g.db_role
            response.headers["Cache-Control"] = "no-store"
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", _HTML_POLICY)
            response.headers.setdefault("Referrer-Policy", "same-origin")
        route = request.url_rule.rule if request.url_rule else "<unmatched>"
        started = g.get("started", time.perf_counter())
        metrics.observe_request(
            route, request.method, response.status_code, time.perf_counter() - started
        )
        return response

    return app
