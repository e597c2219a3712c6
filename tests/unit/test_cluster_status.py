"""The cluster engine's view in `hastack db status`, parsed from output captured on a lab
(crm_mon --output-as=xml, corosync-quorumtool -s)."""

from __future__ import annotations

from pathlib import Path

from hastack import cluster

DATA = Path(__file__).resolve().parent / "data"


def test_quorum_with_the_quorum_device_voting():
    q = cluster.parse_quorum((DATA / "corosync-quorumtool-db1.txt").read_text())
    assert q == {"running": True, "quorate": True, "total_votes": 3, "expected_votes": 3,
                 "quorum": 2, "qdevice_configured": True, "qdevice": True, "qdevice_votes": 1}


def test_quorum_on_two_votes_while_qnetd_is_gone():
    q = cluster.parse_quorum((DATA / "corosync-quorumtool-db1-qnetd-down.txt").read_text())
    assert q["quorate"] and (q["total_votes"], q["expected_votes"]) == (2, 3)
    # the device is configured (flag) but its vote does not count
    assert q["qdevice_configured"] and not q["qdevice"] and q["qdevice_votes"] == 0


def test_corosync_not_running_is_an_error_not_a_crash():
    q = cluster.parse_quorum("Cannot initialize QUORUM service\n")
    assert q == {"running": False, "error": "Cannot initialize QUORUM service"}
    assert cluster.parse_crm_mon("crm_mon: Error: cluster is not available on this node\n")[
        "running"] is False


def test_pacemaker_view():
    view = cluster.parse_crm_mon((DATA / "crm_mon-db1.xml").read_text())
    assert view["running"] and view["dc"] == "db1" and view["with_quorum"]
    assert view["fencing_enabled"] is False and view["no_quorum_policy"] == "demote"
    assert [(n["name"], n["online"]) for n in view["nodes"]] == [("db1", True), ("db2", True)]
    fences = {r["id"]: r for r in view["resources"]}
    assert fences["fence-db2"]["nodes"] == ["db1"] and fences["fence-db1"]["nodes"] == ["db2"]
    assert all(r["active"] and not r["failed"] for r in fences.values())
    assert view["failcounts"] == []
    assert view["fence_history"] == [{"action": "reboot", "target": "db2", "status": "success",
                                      "by": "db1", "completed": "2026-11-28 12:20:07Z"}]


def test_one_answer_is_both_views_and_the_summary_names_them():
    text = ((DATA / "crm_mon-db1.xml").read_text() + cluster.SEPARATOR + "\n"
            + (DATA / "corosync-quorumtool-db1-qnetd-down.txt").read_text())
    crm, quorum = cluster.parse_answer(text)
    assert crm["dc"] == "db1" and quorum["total_votes"] == 2
    status = {"engine": "pacemaker",
              "members": [{"name": "db1", "quorum_running": True, **{
                  k: v for k, v in quorum.items() if k != "running"}}],
              "view": {**crm, "from": "db1"}}
    lines = cluster.summary_lines(status)
    assert lines[0].startswith("cluster (pacemaker, as db1 sees it): DC db1, fencing off, "
                               "without quorum: demote; online db1, db2")
    assert "  db1: quorate (2/3 votes, qdevice not voting)" in lines
    assert "  fenced: reboot db2 success (by db1, 2026-11-28 12:20:07Z)" in lines
    assert cluster.summary_lines({"engine": "none"})[0].startswith("cluster: none")
