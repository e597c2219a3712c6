"""hastack-alert-receiver: records Alertmanager's notifications, counts duplicates, stays
bounded, survives a restart, refuses what is not a webhook payload."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from .role_programs import load

receiver = load("monitoring", "hastack-alert-receiver")


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(max_events: int = 100, history: Path | None = None) -> str:
        h = receiver.History(history or tmp_path / "history.jsonl", max_events)
        server = receiver.make_server("127.0.0.1:0", h)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def alert(name: str, status: str = "firing", fingerprint: str = "f1",
          starts: str = "2026-11-27T20:00:00Z") -> dict:
    return {"status": status, "labels": {"alertname": name, "severity": "critical"},
            "annotations": {"summary": f"{name} happened"}, "startsAt": starts,
            "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint,
            "generatorURL": "http://198.19.0.61:9090/graph"}


def payload(*alerts: dict) -> dict:
    return {"version": "4", "groupKey": "{}:{}", "status": alerts[0]["status"],
            "receiver": "hastack-history", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://198.19.0.61:9093",
            "alerts": list(alerts)}


def test_health(serve):
    url = serve()
    assert httpx.get(f"{url}/healthz").json() == "ok"


def test_a_notification_is_recorded_once_and_a_second_delivery_is_counted(serve):
    url = serve()
    r = httpx.post(f"{url}/alert", json=payload(alert("MachineDown")))
    assert r.status_code == 200 and r.json() == {"recorded": 1, "new": 1}
    history = httpx.get(f"{url}/alerts").json()
    assert history["received"] == 1 and history["duplicates"] == 0
    (event,) = history["alerts"]
    assert event["alertname"] == "MachineDown" and event["status"] == "firing"
    assert event["deliveries"] == 1 and event["labels"]["severity"] == "critical"
    assert event["receiver"] == "hastack-history" and event["from"] == "127.0.0.1"
    # the same notification from the other Alertmanager (the cluster should prevent that)
    assert httpx.post(f"{url}/alert", json=payload(alert("MachineDown"))).json()["new"] == 0
    history = httpx.get(f"{url}/alerts").json()
    assert [e["deliveries"] for e in history["alerts"]] == [2]
    assert history["duplicates"] == 1


def test_resolved_and_a_new_episode_are_new_events(serve):
    url = serve()
    httpx.post(f"{url}/alert", json=payload(alert("MachineDown")))
    httpx.post(f"{url}/alert", json=payload(alert("MachineDown", "resolved")))
    httpx.post(f"{url}/alert", json=payload(alert("MachineDown",
                                                  starts="2026-11-27T21:00:00Z")))
    httpx.post(f"{url}/alert", json=payload(alert("SiteProbeFailed", fingerprint="f2")))
    history = httpx.get(f"{url}/alerts").json()
    assert [(e["alertname"], e["status"]) for e in history["alerts"]] == [
        ("MachineDown", "firing"), ("MachineDown", "resolved"), ("MachineDown", "firing"),
        ("SiteProbeFailed", "firing")]
    only = httpx.get(f"{url}/alerts", params={"alertname": "MachineDown",
                                              "status": "resolved"}).json()["alerts"]
    assert len(only) == 1 and only[0]["status"] == "resolved"
    assert httpx.get(f"{url}/alerts", params={"since": "2999"}).json()["alerts"] == []


def test_history_is_bounded_and_survives_a_restart(serve, tmp_path):
    path = tmp_path / "bounded.jsonl"
    url = serve(max_events=3, history=path)
    for i in range(5):
        httpx.post(f"{url}/alert", json=payload(alert(f"A{i}", fingerprint=f"f{i}")))
    httpx.post(f"{url}/alert", json=payload(alert("A4", fingerprint="f4")))
    names = [e["alertname"] for e in httpx.get(f"{url}/alerts").json()["alerts"]]
    assert names == ["A2", "A3", "A4"]  # the oldest went first
    # the file is compacted once it holds twice the bound in lines
    assert len(path.read_text().splitlines()) <= 6
    with path.open("a") as f:
        f.write('{"key": "cut sho')  # a line cut short by a crash
    again = serve(max_events=3, history=path)
    events = httpx.get(f"{again}/alerts").json()["alerts"]
    assert [(e["alertname"], e["deliveries"]) for e in events] == [("A2", 1), ("A3", 1),
                                                                    ("A4", 2)]


@pytest.mark.parametrize(("body", "code"), [
    (b"not json", 400),
    (json.dumps({"alerts": "nope"}).encode(), 400),
    (json.dumps([1, 2]).encode(), 400),
    (json.dumps({"alerts": [1]}).encode(), 400),
])
def test_what_is_not_a_webhook_payload_is_refused(serve, body, code):
    url = serve()
    r = httpx.post(f"{url}/alert", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == code and "error" in r.json()
    assert httpx.get(f"{url}/alerts").json()["alerts"] == []


def test_unknown_paths_and_huge_bodies(serve):
    url = serve()
    assert httpx.get(f"{url}/nope").status_code == 404
    assert httpx.post(f"{url}/other", json={}).status_code == 404
    big = b"x" * (receiver.MAX_BODY + 1)
    assert httpx.post(f"{url}/alert", content=big).status_code == 413


def test_command_line(tmp_path):
    with pytest.raises(SystemExit):
        receiver.main(["--max-events", "0", "--history", str(tmp_path / "h")])
