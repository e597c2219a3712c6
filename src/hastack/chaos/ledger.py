"""Every write of a chaos run, what the site acknowledged, and what each DB node holds.

A write is acknowledged when the site answered 201 with the message's id. After the run,
every DB node is asked (over SSH, the `mariadb` client as root, through the Fleet) for the
run's messages (their body names the write's key) and the run's idempotency keys. Then, on
each node:
- an acknowledged write is *lost* unless its id is there exactly once with its body, its
  body is there exactly once, and its key points at that id;
- any write (acknowledged or not: a client never knows what became of a write that failed)
  is *applied twice* if its body is there more than once.
A write that failed on the client but is on the nodes is neither: the client may resend it
with the same key and get the first result.

`audit` is pure (writes and node rows in, counts out), `read_node` does the SSH.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hastack.chaos.load import Tag, body_of
from hastack.errors import HastackError
from hastack.fleet import Fleet
from hastack.loadgen import Sample

DB_NAME = "foobar"  # hastack_db_name in ansible/group_vars/all.yml


@dataclass(frozen=True)
class Write:
    key: str
    phase: str  # the fault during whose load it was sent
    acked_id: int | None  # the id in the site's 201, None if not acknowledged
    acked: bool = False
    replayed: bool = False


def writes_from(samples: Iterable[Sample], phase: str) -> list[Write]:
    out = []
    for s in samples:
        if not isinstance(s.tag, Tag) or s.tag.kind != "write" or s.tag.key is None:
            continue
        note = s.note if isinstance(s.note, dict) else {}
        acked = s.status == 201
        out.append(Write(s.tag.key, phase, note.get("id") if acked else None, acked,
                         bool(note.get("replayed"))))
    return out


@dataclass
class NodeRows:
    """One node's rows of this run: message ids by body, and message id by key."""

    messages: list[tuple[int, str]] = field(default_factory=list)  # (id, body)
    keys: dict[str, int | None] = field(default_factory=dict)


def node_sql(run_id: str) -> str:
    """Both queries for one node, as one stdin for `mariadb -B -N` (run_id is hex)."""
    if not run_id.isalnum():
        raise ValueError(f"run id must be alphanumeric, not {run_id!r}")
    return (f"SELECT 'm', id, body FROM {DB_NAME}.messages "
            f"WHERE body LIKE 'chaos chaos-{run_id}-%';\n"
            f"SELECT 'k', idempotency_key, IFNULL(message_id, 'NULL') "
            f"FROM {DB_NAME}.idempotency_keys WHERE idempotency_key LIKE 'chaos-{run_id}-%';\n")


def parse_node(text: str) -> NodeRows:
    rows = NodeRows()
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        if parts[0] == "m":
            rows.messages.append((int(parts[1]), parts[2]))
        elif parts[0] == "k":
            rows.keys[parts[1]] = None if parts[2] == "NULL" else int(parts[2])
    return rows


def read_node(fleet: Fleet, node: str, run_id: str) -> NodeRows:
    out = fleet.run_checked(node, "mariadb -B -N", "reading the run's writes", timeout=60,
                            stdin=node_sql(run_id))
    return parse_node(out)


# The client lost or could not open its connection: the server went away (a replica the
# cluster restarts as it settles after the last fault), so the wait is asked again.
CONNECTION_LOST = ("ERROR 2002", "ERROR 2006", "ERROR 2013", "ERROR 2026")


def sync_replicas(fleet: Fleet, primary: str, replicas: list[str], timeout: float = 60,
                  clock: Callable[[], float] = time.monotonic,
                  pause: Callable[[float], None] = time.sleep) -> None:
    """Wait until every replica applied the primary's last write (MASTER_GTID_WAIT), each
    within `timeout`, asking again when the replica's server dropped the connection."""
    position = fleet.run_checked(primary, "mariadb -B -N", "reading the primary's GTID",
                                 stdin="SELECT @@gtid_binlog_pos").strip()
    for node in replicas:
        deadline = clock() + timeout
        while True:
            left = max(1, int(deadline - clock()))
            try:
                waited = fleet.run_checked(
                    node, "mariadb -B -N", "waiting for replication", timeout=left + 15,
                    stdin=f"SELECT MASTER_GTID_WAIT('{position}', {left})").strip()
                break
            except HastackError as exc:
                if not any(code in str(exc) for code in CONNECTION_LOST) or clock() >= deadline:
                    raise
                pause(1.0)
        if waited != "0":
            raise HastackError(f"{node} did not reach the primary's position {position} "
                               f"within {timeout:.0f} s; the audit would be wrong")


def audit(writes: list[Write], nodes: dict[str, NodeRows]) -> dict[str, Any]:
    """Lost and duplicated writes, in all and by phase, from each node's rows."""
    lost: dict[str, set[str]] = defaultdict(set)  # key -> nodes that lack it
    twice: dict[str, set[str]] = defaultdict(set)
    applied_unacked: set[str] = set()
    for node, rows in nodes.items():
        by_body = Counter(body for _, body in rows.messages)
        ids = Counter(i for i, _ in rows.messages)
        body_of_id = dict(rows.messages)
        for w in writes:
            body = body_of(w.key)
            if by_body[body] > 1:
                twice[w.key].add(node)
            if w.acked:
                ok = (w.acked_id is not None and ids[w.acked_id] == 1
                      and body_of_id.get(w.acked_id) == body and by_body[body] == 1
                      and rows.keys.get(w.key) == w.acked_id)
                if not ok:
                    lost[w.key].add(node)
            elif by_body[body]:
                applied_unacked.add(w.key)
    phases: dict[str, dict[str, int]] = {}
    for w in writes:
        p = phases.setdefault(w.phase, {"writes": 0, "acknowledged": 0, "lost": 0,
                                         "duplicated": 0, "unacknowledged_applied": 0})
        p["writes"] += 1
        p["acknowledged"] += w.acked
        p["lost"] += w.key in lost
        p["duplicated"] += w.key in twice
        p["unacknowledged_applied"] += w.key in applied_unacked
    return {
        "nodes": sorted(nodes),
        "writes": len(writes),
        "acknowledged": sum(w.acked for w in writes),
        "replayed_answers": sum(w.replayed for w in writes),
        "lost": len(lost),
        "duplicated": len(twice),
        "unacknowledged_applied": len(applied_unacked),
        "lost_keys": {k: sorted(v) for k, v in sorted(lost.items())[:20]},
        "duplicated_keys": {k: sorted(v) for k, v in sorted(twice.items())[:20]},
        "by_phase": phases,
    }
