"""Data layer: MariaDB nodes, read/write routing and read-your-writes via GTIDs."""

from foobar.db.nodes import (
    PRIMARY,
    REPLICA,
    ConnectSettings,
    Node,
    NodeAddress,
    NodeUnavailable,
    parse_address,
)
from foobar.db.router import NoPrimary, RoleView, Routed, Router, RouterEvents, Written

__all__ = [
    "PRIMARY",
    "REPLICA",
    "ConnectSettings",
    "Node",
    "NodeAddress",
    "NodeUnavailable",
    "NoPrimary",
    "RoleView",
    "Routed",
    "Router",
    "RouterEvents",
    "Written",
    "parse_address",
]
