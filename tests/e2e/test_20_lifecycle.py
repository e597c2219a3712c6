"""The lab's own lifecycle: idempotent up, status, ssh, restart of stopped machines."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid

from .conftest import HASTACK, REPO, poll, run


def test_status_json_follows_the_contract(lab):
    status = json.loads(run("status", "--json").stdout)
    site = status["site"]
    assert site["domain"] == "www.foobar.com"
    assert site["vips"] == ["198.18.0.100", "198.18.0.101"]
    assert site["dns"] == "198.18.0.53"
    assert "ca_cert" in site
    names = {m["name"] for m in status["machines"]}
    assert names == {"lb1", "lb2", "web1", "web2", "app1", "app2", "db1", "db2", "ns1", "mon1"}
    for m in status["machines"]:
        assert m["state"] == "running" and m["roles"] and m["addresses"]
    assert lab.machine("lb1")["addresses"] == ["198.18.0.11", "198.19.0.11"]


def test_ssh_runs_a_command_on_the_machine(lab):
    assert lab.ssh("web2", "hostname").strip() == "web2"
    assert "active" in lab.ssh("db1", "systemctl is-active pacemaker")


def test_second_up_changes_nothing(lab):
    result = run("up")
    assert "nothing changed since the last deploy" in result.stdout
    assert "started" not in result.stdout


def test_deploy_with_an_inventory_is_the_real_server_path(lab):
    """`hastack deploy -i` (what real servers use) against the lab's own inventory: the same
    playbook, converged already, so it changes nothing that matters and the site stays up."""
    status = json.loads(run("status", "--json").stdout)
    result = run("deploy", "-i", status["inventory"], "--secrets-dir",
                 "/var/lib/hastack/lab/secrets")
    assert "deployed:" in result.stdout
    with lab.client(lab.vips[0]) as c:
        assert c.get("/").status_code == 200


def _post(lab, body: str) -> int:
    with lab.client(lab.vips[0]) as c:
        r = c.post("/messages", json={"author": "life", "body": body})
        assert r.status_code == 201, r.text
        return r.json()["id"]


def test_stopped_lab_comes_back_with_its_data(lab):
    body = f"before the power cut {uuid.uuid4()}"
    row = _post(lab, body)
    run("stop", "--kill")
    lab.refresh()
    assert {m["state"] for m in lab.status["machines"]} == {"stopped"}
    run("up")
    lab.refresh()
    assert {m["state"] for m in lab.status["machines"]} == {"running"}
    with lab.client(lab.vips[1]) as c:
        r = c.get(f"/api/messages/{row}")
        assert r.status_code == 200 and r.json()["body"] == body


def test_up_killed_mid_way_is_repaired_by_the_next_up(lab):
    run("stop", "web2", "app1")
    proc = subprocess.Popen([HASTACK, "up"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "started" in line or "▸" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run("up")
    lab.refresh()
    assert {m["state"] for m in lab.status["machines"]} == {"running"}

    def both_answer():
        with lab.client(lab.vips[0]) as c:
            seen = {c.get("/").headers.get("x-served-by") for _ in range(8)}
        return {"web2/app1", "web1/app1"} & seen
    poll(both_answer, 20, "web2 and app1 back in rotation")
