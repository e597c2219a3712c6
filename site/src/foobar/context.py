"""The per-app state views reach through current_app, kept apart to avoid import cycles."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g

from foobar.config import Config
from foobar.db.gtid import GtidCookie
from foobar.db.router import Routed, Router
from foobar.messages import KeyPurger


@dataclass
class Site:
    """What the views need besides the request: settings, router, cookie signer, the
    deleter of old idempotency keys and the running code's version."""

    config: Config
    router: Router
    gtid_cookie: GtidCookie
    key_purger: KeyPurger
    version: str


def current_site() -> Site:
    return current_app.extensions["foobar"]


def answered_by(routed: Routed) -> None:
    """Note which database node answered and in which role, for X-DB / X-DB-Role."""
    g.db_node = routed.node
    g.db_role = routed.role
