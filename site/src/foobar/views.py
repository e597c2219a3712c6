"""The board itself: the HTML page, posting a message and the JSON API."""

from __future__ import annotations

import json

from flask import Blueprint, abort, jsonify, redirect, render_template, request

from foobar import messages
from foobar.context import answered_by, current_site
from foobar.db import gtid
from foobar.validation import (
    AUTHOR_MAX,
    BODY_MAX,
    LIMIT_DEFAULT,
    ValidationError,
    parse_limit,
    validate_message,
)

bp = Blueprint("board", __name__)

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_BIGINT_MAX = 2**63 - 1


def _client_gtid() -> str | None:
    return current_site().gtid_cookie.loads(request.cookies.get(gtid.COOKIE_NAME))


def _render_board(status: int = 200, errors: dict | None = None, form: dict | None = None):
    routed = messages.latest(current_site().router, LIMIT_DEFAULT, _client_gtid())
    answered_by(routed)
    html = render_template(
        "index.html",
        messages=routed.value,
        errors=errors or {},
        form=form or {},
        machine=current_site().config.machine,
        author_max=AUTHOR_MAX,
        body_max=BODY_MAX,
    )
    return html, status


@bp.get("/")
def index():
    return _render_board()


@bp.post("/messages")
def post_message():
    if request.is_json:
        data = _json_object()
        try:
            new = validate_message(data)
        except ValidationError as exc:
            return _invalid(exc)
        written = _store(new)
        response = jsonify(written.value.to_json())
        response.status_code = 201
        response.headers["Location"] = f"/api/messages/{written.value.id}"
    elif request.mimetype in _FORM_TYPES:
        form = {"author": request.form.get("author", ""), "body": request.form.get("body", "")}
        try:
            new = validate_message(form)
        except ValidationError as exc:
            return _render_board(422, exc.errors, form)
        written = _store(new)
        response = redirect("/", code=303)
    else:
        abort(415, "send application/json or an HTML form")
    _remember_write(response, written.gtid)
    return response


def _json_object() -> dict:
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        abort(400, "request body is not valid JSON")
    if not isinstance(data, dict):
        abort(400, "request body must be a JSON object")
    return data


def _invalid(exc: ValidationError):
    response = jsonify(
        {"error": "invalid input", "field": exc.field, "message": str(exc), "errors": exc.errors}
    )
    response.status_code = 422
    return response


def _store(new):
    written = messages.create(current_site().router, new)
    answered_by(written)
    return written


def _remember_write(response, new_gtid: str | None) -> None:
    """Put the client's newest write position into its signed cookie."""
    if not new_gtid:
        return
    try:
        position = gtid.merge(_client_gtid(), new_gtid)
    except ValueError:
        return
    cookie = current_site().gtid_cookie
    response.set_cookie(
        gtid.COOKIE_NAME,
        cookie.dumps(position),
        max_age=cookie.max_age,
        httponly=True,
        samesite="Lax",
        secure=request.is_secure,
    )


@bp.get("/api/messages")
def list_messages():
    try:
        limit = parse_limit(request.args.get("limit"))
    except ValidationError as exc:
        response = _invalid(exc)
        response.status_code = 400
        return response
    routed = messages.latest(current_site().router, limit, _client_gtid())
    answered_by(routed)
    return jsonify([m.to_json() for m in routed.value])


@bp.get("/api/messages/<int:message_id>")
def get_message(message_id: int):
    if message_id > _BIGINT_MAX:
        abort(404)
    routed = messages.get(current_site().router, message_id, _client_gtid())
    answered_by(routed)
    if routed.value is None:
        abort(404, f"no message {message_id}")
    return jsonify(routed.value.to_json())
