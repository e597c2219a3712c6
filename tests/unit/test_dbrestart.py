"""The rolling restart's plan: replicas first, the primary last; refused when it cannot roll."""

from __future__ import annotations

import pytest

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
