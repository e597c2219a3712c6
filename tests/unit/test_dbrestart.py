"""The rolling restart's plan: replicas first, the primary last; refused when it cannot roll."""

from __future__ import annotations

import pytest
from rich.console import Console

from hastack import db as dbmod
from hastack import dbrestart
from hastack.db import NodeStatus
from hastack.dbrestart import order
from hastack.errors import HastackError


def node(name: str, role: str, io: str = "Yes", sql: str = "Yes") -> NodeStatus:
    replica = role == "replica"
    return NodeStatus(name, f"198.19.0.{len(name)}", role, read_only=role != "primary",
                      io_running=io if replica else "", sql_running=sql if replica else "")


def test_replicas_first_then_the_primary():
    nodes = [node("db1", "replica"), node("db2", "primary"), node("db3", "replica")]
    assert order(nodes) == (["db1", "db3"], "db2")


def test_only_the_named_nodes():
    nodes = [node("db1", "primary"), node("db2", "replica"), node("db3", "replica")]
    assert order(nodes, ["db3"]) == (["db3"], "")
    assert order(nodes, ["db1"]) == ([], "db1")


@pytest.mark.parametrize(("nodes", "only", "message"), [
    ([node("db1", "primary"), node("db2", "replica")], ["db9"], "'db9' is not a database node"),
    ([node("db1", "replica"), node("db2", "replica")], None, "found none"),
    ([node("db1", "primary"), node("db2", "primary")], None, "found db1, db2"),
    ([node("db1", "primary"), node("db2", "down")], None, "db2 (down, IO -, SQL -)"),
    ([node("db1", "primary"), node("db2", "replica", sql="No")], None,
     "db2 (replica, IO Yes, SQL No)"),
    ([node("db1", "primary")], None, "needs a replica"),
])
def test_what_cannot_roll_is_refused_before_anything(nodes, only, message):
    with pytest.raises(HastackError) as exc:
        order(nodes, only)
    assert message in str(exc.value)


def test_after_a_deploy_only_the_nodes_running_an_older_configuration_are_restarted(
        monkeypatch):
    nodes = [node("db1", "primary"), node("db2", "replica"), node("db3", "replica")]
    nodes[2].restart_pending = True
    monkeypatch.setattr(dbmod, "status", lambda fleet: nodes)
    calls = []
    monkeypatch.setattr(dbrestart, "rolling_restart",
                        lambda fleet, console, only: calls.append(only) or {"db3": {}})
    assert dbrestart.restart_pending(None, Console()) == {"db3": {}}
    assert calls == [["db3"]]
    nodes[2].restart_pending = False
    assert dbrestart.restart_pending(None, Console()) == {} and calls == [["db3"]]


def test_a_pending_restart_that_cannot_roll_is_said_and_left_pending(monkeypatch):
    nodes = [node("db1", "primary"), node("db2", "replica", sql="No")]
    nodes[0].restart_pending = True
    monkeypatch.setattr(dbmod, "status", lambda fleet: nodes)
    console = Console(record=True, width=200)
    assert dbrestart.restart_pending(None, console) == {}
    said = console.export_text()
    assert "not restarted" in said and "db2 (replica, IO Yes, SQL No)" in said
