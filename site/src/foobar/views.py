"""The board itself: the HTML page, posting a message and the JSON API.

Every post carries an idempotency key, so that a post sent twice is stored once:
- JSON: the client's `Idempotency-Key` header (1-128 printable ASCII characters, else
  400). A replay with the same key and the same message gets the first response again
  (201, same body and Location, plus `Idempotent-Replayed: true`); the same key with a
  different message is a 422. Without the header the post gets a key of its own, which
  covers the app's own retry after a lost connection but not a client resending it.
- HTML form: a hidden key made when the form is rendered, so a double click, a browser
  resubmission or a proxy replaying the POST carries the same key (the header, if sent,
  must agree with it). A form of the previous version has none and gets a key of its own.
"""

from __future__ import annotations

import json
import re
import secrets

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

IDEMPOTENCY_HEADER = "Idempotency-Key"
FORM_KEY_FIELD = "idempotency_key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"[\x20-\x7e]{1,128}")
_KEY_RULE = f"{IDEMPOTENCY_HEADER} must be 1 to 128 printable ASCII characters"


def _client_gtid() -> str | None:
    return current_site().gtid_cookie.loads(request.cookies.get(gtid.COOKIE_NAME))


def new_key() -> str:
    return secrets.token_urlsafe(24)


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
        # Made now, sent back with the form: a resubmission of this form is the same post.
        idempotency_key=new_key(),
    )
    return html, status


@bp.get("/")
def index():
    return _render_board()


@bp.post("/messages")
def post_message():
    if request.is_json:
        key = _idempotency_key()
        data = _json_object()
        try:
            new = validate_message(data)
        except ValidationError as exc:
            return _invalid(exc)
        try:
            written = _store(new, key)
        except messages.KeyReused as exc:
            return _key_reused(exc)
        response = jsonify(written.value.message.to_json())
        response.status_code = 201
        response.headers["Location"] = f"/api/messages/{written.value.message.id}"
    elif request.mimetype in _FORM_TYPES:
        key = _idempotency_key(request.form.get(FORM_KEY_FIELD))
        form = {"author": request.form.get("author", ""), "body": request.form.get("body", "")}
        try:
            new = validate_message(form)
        except ValidationError as exc:
            return _render_board(422, exc.errors, form)
        try:
            written = _store(new, key)
        except messages.KeyReused:
            problem = {"form": "was posted before with other text; post it again to add it"}
            return _render_board(422, problem, form)
        response = redirect("/", code=303)
    else:
        abort(415, "send application/json or an HTML form")
    if written.value.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    _remember_write(response, written.gtid)
    current_site().key_purger.maybe_purge()
    return response


def _idempotency_key(form_key: str | None = None) -> str:
    """The post's key: the header, else the form's hidden key, else a new one."""
    header = request.headers.get(IDEMPOTENCY_HEADER)
    for value in (header, form_key):
        if value is not None and not _KEY.fullmatch(value):
            abort(400, _KEY_RULE)
    if header is not None and form_key is not None and header != form_key:
        abort(400, f"{IDEMPOTENCY_HEADER} and the form's {FORM_KEY_FIELD} differ")
    return header or form_key or new_key()


def _key_reused(exc: messages.KeyReused):
    response = jsonify(
        {
            "error": "idempotency key reused",
            "field": IDEMPOTENCY_HEADER,
            "message": f"{IDEMPOTENCY_HEADER} was used before for a different message",
            "errors": {IDEMPOTENCY_HEADER: "was used before for a different message"},
        }
    )
    response.status_code = 422
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


def _store(new, key: str):
    written = messages.create(current_site().router, new, key)
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
