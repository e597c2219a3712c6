"""Error responses: JSON for API clients, a small HTML page for browsers, never a traceback.

A database that cannot be reached is a 503 (try again), not a 500 (our bug).
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

from foobar.db.nodes import NodeUnavailable

log = logging.getLogger(__name__)


def wants_json() -> bool:
    if request.path.startswith("/api/") or request.is_json:
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and not request.accept_mimetypes.accept_html


def _respond(exc: HTTPException):
    response = exc.get_response()  # keeps headers such as Allow on a 405
    if wants_json():
        body = jsonify({"error": exc.name, "message": exc.description, "status": exc.code})
        response.set_data(body.get_data())
        response.mimetype = "application/json"
    else:
        html = render_template("error.html", code=exc.code, name=exc.name, detail=exc.description)
        response.set_data(html)
        response.mimetype = "text/html"
    return response


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _respond(exc)

    @app.errorhandler(NodeUnavailable)
    def database_down(exc: NodeUnavailable):
        log.warning("database unavailable: %s", exc)
        error = ServiceUnavailable("The database is not reachable right now; try again shortly.")
        response = _respond(error)
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _respond(InternalServerError())
