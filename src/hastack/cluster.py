"""The database cluster engine's view (Pacemaker + Corosync), for `hastack db status`.

Every DB node is asked, over SSH through the Fleet, for its own view of quorum
(`corosync-quorumtool -s`: a node cut off from the others says so itself) and for Pacemaker's
view (`crm_mon --output-as=xml`); the cluster-wide part (DC, members, resources, failcounts,
fencing) comes from the first node that holds quorum, since a node without it may be stale.
Parsing is kept apart from asking, and tested on output captured from a lab.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from hastack.db import PROMOTION_PIN_ID, db_nodes
from hastack.fleet import Fleet

SEPARATOR = "--hastack-quorum--"
CONSTRAINTS_SEPARATOR = "--hastack-constraints--"
# Location constraints: hastack's promotion pin, and bans (a rolling restart's, an operator's).
ASK_CONSTRAINTS = "cibadmin --query --scope constraints"
# One SSH round trip per node; each tool's failure is in its own part of the answer.
ASK = (f"crm_mon -1 --output-as=xml --include=all 2>&1; echo '{SEPARATOR}'; "
       f"corosync-quorumtool -s 2>&1; echo '{CONSTRAINTS_SEPARATOR}'; {ASK_CONSTRAINTS} 2>&1")


def parse_quorum(text: str) -> dict[str, Any]:
    """corosync-quorumtool -s: this node's own view of quorum and votes."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not key.startswith(" "):
            fields[key.strip()] = value.strip()
    if "Quorate" not in fields:
        return {"running": False, "error": (text.strip().splitlines() or ["no answer"])[-1]}
    flags = fields.get("Flags", "").split()
    qdevice_line = re.search(r"^\s*0\s+(\d+)\s+Qdevice", text, re.MULTILINE)
    qdevice_votes = int(qdevice_line.group(1)) if qdevice_line else 0
    return {
        "running": True,
        "quorate": fields["Quorate"] == "Yes",
        "total_votes": _int(fields.get("Total votes")),
        "expected_votes": _int(fields.get("Expected votes")),
        "quorum": _int(fields.get("Quorum")),
        "qdevice_configured": "Qdevice" in flags,
        # the quorum device's vote counts now (qnetd reachable and voting for this side)
        "qdevice": qdevice_votes > 0,
        "qdevice_votes": qdevice_votes,
    }


def parse_crm_mon(text: str) -> dict[str, Any]:
    """crm_mon --output-as=xml --include=all: Pacemaker's view of the cluster."""
    try:
        root = ET.fromstring(text[text.index("<"):])
    except (ValueError, ET.ParseError):
        return {"running": False, "error": (text.strip().splitlines() or ["no answer"])[-1]}
    summary = root.find("summary")
    dc = summary.find("current_dc") if summary is not None else None
    options = summary.find("cluster_options") if summary is not None else None
    nodes = [{"name": n.get("name", ""), "online": n.get("online") == "true",
              "unclean": n.get("unclean") == "true", "standby": n.get("standby") == "true"}
             for n in root.iterfind("nodes/node")]
    resources = []
    for r in root.iter("resource"):
        resources.append({"id": r.get("id", ""), "agent": r.get("resource_agent", ""),
                          "role": r.get("role", ""), "active": r.get("active") == "true",
                          "failed": r.get("failed") == "true",
                          "nodes": [n.get("name", "") for n in r.iterfind("node")]})
    failcounts = []
    for node in root.iterfind("node_history/node"):
        for history in node.iterfind("resource_history"):
            count = history.get("fail-count")
            if count and count != "0":
                failcounts.append({"node": node.get("name", ""), "resource": history.get("id"),
                                   "count": count})
    fencing = [{"action": e.get("action", ""), "target": e.get("target", ""),
                "status": e.get("status", ""), "by": e.get("delegate", ""),
                "completed": e.get("completed", "")}
               for e in root.iterfind("fence_history/fence_event")]
    return {
        "running": True,
        "dc": dc.get("name", "") if dc is not None and dc.get("present") == "true" else "",
        "with_quorum": dc is not None and dc.get("with_quorum") == "true",
        "fencing_enabled": options is not None and options.get("stonith-enabled") == "true",
        "no_quorum_policy": options.get("no-quorum-policy", "") if options is not None else "",
        "nodes": nodes,
        "resources": resources,
        "failcounts": failcounts,
        "fence_history": fencing,
    }


def parse_constraints(text: str) -> dict[str, Any]:
    """cibadmin --query --scope constraints: where the promotion pin holds the primary (None:
    automatic promotion on), and the bans crm_resource made (a rolling restart's, an
    operator's)."""
    try:
        root = ET.fromstring(text[text.index("<"):])
    except (ValueError, ET.ParseError):
        return {"promotion_pin": None, "bans": [], "error": text.strip()[-200:]}
    pin = None
    bans = []
    for loc in root.iter("rsc_location"):
        if loc.get("id") == PROMOTION_PIN_ID:
            expr = loc.find("rule/expression")
            pin = expr.get("value") if expr is not None else None
        elif loc.get("id", "").startswith("cli-ban-"):  # crm_resource --ban
            bans.append({"id": loc.get("id", ""), "resource": loc.get("rsc", ""),
                         "node": loc.get("node", ""), "role": loc.get("role", "")})
    return {"promotion_pin": pin, "bans": bans}


def parse_answer(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One node's answer to ASK: (Pacemaker's view with the constraints, Corosync's quorum
    view)."""
    crm, _, rest = text.partition(SEPARATOR)
    quorum, _, constraints = rest.partition(CONSTRAINTS_SEPARATOR)
    view = parse_crm_mon(crm)
    if view.get("running"):
        view.update(parse_constraints(constraints))
    return view, parse_quorum(quorum)


def _ask(fleet: Fleet, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One node's Pacemaker and quorum views; a node that cannot be asked says why."""
    try:
        return parse_answer(fleet.run_on(name, ASK, timeout=15).stdout)
    except Exception as exc:  # noqa: BLE001 - a node that cannot be asked is reported
        return {"running": False, "error": str(exc)}, {"running": False, "error": str(exc)}


def status(fleet: Fleet) -> dict[str, Any]:
    """Each DB node's own quorum view, plus the cluster view of the first quorate node.
    `engine` is "none" when the topology has no failover cluster (a single DB node)."""
    topo = fleet.require_topology()
    names = db_nodes(topo)
    if len(names) < 2:
        return {"engine": "none"}
    members: list[dict[str, Any]] = []
    view: dict[str, Any] | None = None
    for name, (crm, quorum) in zip(names, fleet.on_each(names, lambda n: _ask(fleet, n)),
                                   strict=True):
        members.append({"name": name, **{f"quorum_{k}" if k in ("running", "error") else k: v
                                         for k, v in quorum.items()}})
        if view is None and crm.get("running") and quorum.get("quorate"):
            view = {**crm, "from": name}
    return {"engine": "pacemaker", "members": members,
            "view": view or {"running": False, "error": "no DB node holds quorum"}}


def summary_lines(cluster: dict[str, Any]) -> list[str]:
    """What `hastack db status` prints under the nodes' table."""
    if cluster.get("engine") != "pacemaker":
        return ["cluster: none (one DB node: nothing to fail over to)"]
    lines = []
    for m in cluster["members"]:
        if not m.get("quorum_running"):
            lines.append(f"  {m['name']}: corosync not answering ({m.get('quorum_error', '')})")
            continue
        votes = f"{m['total_votes']}/{m['expected_votes']} votes"
        device = "qdevice voting" if m["qdevice"] else "qdevice not voting"
        lines.append(f"  {m['name']}: {'quorate' if m['quorate'] else 'NO QUORUM'} "
                     f"({votes}, {device})")
    view = cluster["view"]
    if not view.get("running"):
        return ["cluster (pacemaker): " + view.get("error", "no view"), *lines]
    online = [n["name"] for n in view["nodes"] if n["online"]]
    offline = [n["name"] + (" (unclean)" if n["unclean"] else "")
               for n in view["nodes"] if not n["online"]]
    head = (f"cluster (pacemaker, as {view['from']} sees it): DC {view['dc'] or 'none'}, "
            f"fencing {'on' if view['fencing_enabled'] else 'off'}, without quorum: "
            f"{view['no_quorum_policy']}; online {', '.join(online) or 'none'}"
            + (f"; offline {', '.join(offline)}" if offline else ""))
    pin = view.get("promotion_pin")
    auto = (f"automatic failover off: only {pin} may be the primary (`hastack db failover` "
            "moves it)" if pin else "automatic failover on")
    lines = [head, "  " + auto, *lines]
    for r in view["resources"]:
        where = ", ".join(r["nodes"]) or "nowhere"
        state = "FAILED" if r["failed"] else (r["role"] or "Stopped")
        lines.append(f"  {r['id']} ({r['agent']}): {state} on {where}")
    for b in view.get("bans", []):
        lines.append(f"  ban: {b['resource']} {b['role'] + ' ' if b['role'] else ''}"
                     f"kept off {b['node']} ({b['id']})")
    for f in view["failcounts"]:
        lines.append(f"  failcount {f['resource']} on {f['node']}: {f['count']}")
    for e in view["fence_history"][-3:]:
        lines.append(f"  fenced: {e['action']} {e['target']} {e['status']} (by {e['by']}, "
                     f"{e['completed']})")
    return lines


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
