"""`hastack db reseed` refuses, before anything changes, what it must not re-seed."""

from __future__ import annotations

import pytest
from rich.console import Console

from hastack import db, dbreseed
from hastack.db import NodeStatus
from hastack.errors import HastackError


class NoHands:
    """A fleet that fails the test if anything is run on a machine."""

    def run_on(self, *args, **kwargs):  # pragma: no cover - reaching it is the failure
        raise AssertionError(f"ran {args} although the request was refused")

    run_checked = run_on


@pytest.mark.parametrize(("nodes", "target", "message"), [
    ([("db1", "primary"), ("db2", "replica")], "web1", "'web1' is not a database node"),
    ([("db1", "primary"), ("db2", "replica")], "db1", "db1 is the primary"),
    ([("db1", "down"), ("db2", "replica")], "db2", "found none"),
    ([("db1", "primary"), ("db2", "primary")], "db2", "found db1, db2"),
])
def test_what_must_not_be_reseeded_is_refused_before_anything(monkeypatch, nodes, target,
                                                                message):
    monkeypatch.setattr(db, "status", lambda fleet: [NodeStatus(n, "198.19.0.1", role)
                                                     for n, role in nodes])
    with pytest.raises(HastackError) as exc:
        dbreseed.reseed(NoHands(), target, Console())
    assert message in str(exc.value)
