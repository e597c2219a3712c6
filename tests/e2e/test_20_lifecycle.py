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


def test_a_killed_lab_and_an_interrupted_up_are_repaired_by_the_next_up(lab):
    """Two machines powered off cleanly, then the plug pulled on all, then an `up` killed
    once it booted them: the next `up` still deploys (a booted machine must be, even if the
    `up` that booted it died), and the site is back whole, with its data. One test, because
    each boot costs a full deploy."""
    body = f"before the power cut {uuid.uuid4()}"
    row = _post(lab, body)
    run("stop", "web2", "app1")
    lab.refresh()
    states = {m["name"]: m["state"] for m in lab.status["machines"]}
    assert states == {name: "stopped" if name in ("web2", "app1") else "running"
                      for name in states}, states
    run("stop", "--kill")
    lab.refresh()
    assert {m["state"] for m in lab.status["machines"]} == {"stopped"}
    with subprocess.Popen([HASTACK, "up"], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "started" in line:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # killed mid-way: after booting the machines, long before its deploy could end
    assert seen and "started" in seen[-1], "".join(seen)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    result = run("up")
    assert "deployed:" in result.stdout, result.stdout[-3000:]
    assert "nothing changed" not in result.stdout, result.stdout[-3000:]
    lab.refresh()
    assert {m["state"] for m in lab.status["machines"]} == {"running"}
    with lab.client(lab.vips[1]) as c:
        r = c.get(f"/api/messages/{row}")
        assert r.status_code == 200 and r.json()["body"] == body

    def both_answer():
        with lab.client(lab.vips[0]) as c:
            served = [c.get("/").headers.get("x-served-by", "") for _ in range(8)]
        return (any(s.startswith("web2/") for s in served)
                and any(s.endswith("/app1") for s in served))
    poll(both_answer, 20, "web2 and app1 back in rotation")
