"""Alerting variables of an inventory: refused in one clear line before a deploy changes
anything (receivers, SMTP relay, extra rules)."""

from __future__ import annotations

import shutil
from pathlib import Path

import ansible_runner
import pytest

from hastack import alerting
from hastack.errors import HastackError

GOOD = [
    {"name": "ops-mail", "type": "email", "to": "ops@example.com",
     "match": {"severity": "critical"}},
    {"name": "chat", "type": "slack", "url": "https://hooks.slack.com/services/T0/B0/XX",
     "channel": "#ops", "group_by": ["alertname", "machine"], "send_resolved": False},
    {"name": "pager", "type": "webhook", "url": "http://198.19.0.99:8080/hook",
     "match": {"alertname": "DatabaseSplitBrain", "tier": "database"}},
]
SMTP = {"smarthost": "smtp.example.com:587", "from": "alerts@example.com",
        "auth_username": "alerts", "auth_password": "x", "require_tls": True}


def test_good_receivers_pass():
    assert alerting.check_receivers(GOOD) == GOOD
    alerting.check_smtp(SMTP, GOOD)
    assert alerting.check_receivers(None) == []
    alerting.check_smtp(None, [])


def test_vault_encrypted_url_is_left_to_amtool():
    vaulted = {"__ansible_vault": "$ANSIBLE_VAULT;1.1;AES256\n6162..."}
    alerting.check_receivers([{"name": "chat", "type": "slack", "url": vaulted}])


def one(**changes):
    r = {"name": "pager", "type": "webhook", "url": "https://pager.example.com/hook"}
    r.update(changes)
    return [{k: v for k, v in r.items() if v is not None}]


@pytest.mark.parametrize(("receivers", "message"), [
    ({"name": "x"}, r"hastack_alert_receivers: must be a list"),
    (["x"], r"\[0\]: must be a map"),
    (one(url="htp:/pager.example.com"), r"\[0\].url: 'htp:/pager.example.com' is not an "
                                        r"http\(s\) URL"),
    (one(url="https://"), r"is not an http\(s\) URL"),
    (one(url="https://pager.example.com:port/x"), r"is not an http\(s\) URL"),
    (one(url="https://pager example.com/"), r"is not an http\(s\) URL"),
    (one(url=None), r"\[0\].url: is required for a webhook receiver"),
    (one(to="ops@example.com"), r"\[0\].to: a webhook receiver takes url, not to"),
    (one(type="pagerduty"), r"\[0\].type: 'pagerduty' is not a receiver type; use webhook, "
                            r"email, slack"),
    (one(name="Pager!"), r"\[0\].name: 'Pager!' is not a receiver name"),
    (one(name="hastack-history"), r"'hastack-history' is already taken"),
    (one() + one(), r"\[1\].name: 'pager' is already taken"),
    (one(colour="red"), r"\[0\].colour: unknown key; allowed: channel, group_by"),
    (one(match={"team": "web"}), r"\[0\].match.team: unknown routing label; alerts are routed "
                                 r"on alertname, severity, tier, machine, vip"),
    (one(match={"severity": "page"}), r"\[0\].match.severity: no alert has severity 'page'; "
                                      r"use one of critical, warning"),
    (one(match={"alertname": "NoSuchAlert"}), r"no alert has alertname 'NoSuchAlert'"),
    (one(match={"machine": 'web1"} or {'}), r"must be a plain value"),
    (one(match={}), r"\[0\].match: must be a map of label: value"),
    (one(group_by=["instance"]), r"\[0\].group_by: unknown routing label 'instance'"),
    (one(send_resolved="yes"), r"send_resolved: must be true or false"),
    (one(channel="#ops"), r"\[0\].channel: only a slack receiver has a channel"),
    ([{"name": "m", "type": "email", "to": "ops at example.com"}],
     r"\[0\].to: 'ops at example.com' is not an email address"),
    ([{"name": "m", "type": "email", "to": ["ops@example.com", "x@"]}],
     r"\[0\].to\[1\]: 'x@' is not an email address"),
])
def test_bad_receivers_are_refused_in_one_line(receivers, message):
    with pytest.raises(HastackError, match=message) as err:
        alerting.check_receivers(receivers)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("smtp", "message"), [
    (None, r"hastack_alert_smtp: is required by the email receivers"),
    ("smtp.example.com", r"must be a map"),
    ({**SMTP, "smarthost": "smtp.example.com"}, r"smarthost: 'smtp.example.com' must be "
                                                r"host:port"),
    ({**SMTP, "smarthost": "smtp.example.com:99999"}, r"must be host:port"),
    ({**SMTP, "from": "alerts"}, r"from: 'alerts' is not an email address"),
    ({k: v for k, v in SMTP.items() if k != "auth_password"}, r"give both auth_username and "
                                                               r"auth_password"),
    ({**SMTP, "require_tls": "no"}, r"require_tls: must be true or false"),
    ({**SMTP, "hello": "x"}, r"hello: unknown key"),
])
def test_bad_smtp_is_refused(smtp, message):
    with pytest.raises(HastackError, match=message):
        alerting.check_smtp(smtp, [{"name": "m", "type": "email", "to": "ops@example.com"}])


RULES = [{"name": "mine", "rules": [{"alert": "QueueStuck", "expr": "up{job=\"node\"} == 0",
                                     "for": "1m", "labels": {"severity": "warning"}}]}]


@pytest.mark.parametrize(("rules", "message"), [
    ({"name": "x"}, r"must be a list of rule groups"),
    ([{"rules": []}], r"\[0\]: must be a rule group with a name"),
    ([{"name": "g", "rules": []}], r"\[0\].rules: must be a non-empty list"),
    ([{"name": "g", "rules": [{"alert": "X"}]}], r"rules\[0\]: needs alert \(or record\) and "
                                                  r"expr"),
    ([{"name": "g", "rules": [{"alert": "MachineDown", "expr": "up == 0"}]}],
     r"'MachineDown' is one of the stack's own alerts"),
])
def test_bad_rule_shapes_are_refused(rules, message):
    with pytest.raises(HastackError, match=message):
        alerting.check_rules(rules, promtool="/nonexistent")


needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool missing: run scripts/host-deps.sh")


@needs_promtool
def test_rules_promtool_accepts_pass():
    alerting.check_rules(RULES)


@needs_promtool
def test_a_rule_that_does_not_parse_is_refused_in_one_line():
    bad = [{"name": "mine", "rules": [{"alert": "Broken", "expr": "rate(up[5m] > 1"}]}]
    with pytest.raises(HastackError, match=r"hastack_alert_rules: promtool refuses the rules: "
                                           r".*parse error") as err:
        alerting.check_rules(bad)
    assert "\n" not in str(err.value)
    typo = [{"name": "mine", "rules": [{"alert": "Typo", "expr": "up", "lables": {}}]}]
    with pytest.raises(HastackError, match=r"unmarshal errors: .*field lables not found"):
        alerting.check_rules(typo)


def listing(all_vars=None, mon1=None, mon2=None) -> dict:
    return {"all": {"vars": all_vars or {}},
            "monitoring": {"hosts": ["mon1", "mon2"]},
            "_meta": {"hostvars": {"mon1": mon1 or {}, "mon2": mon2 or {}, "web1": {}}}}


def test_inventory_check_reads_what_the_monitoring_machines_see(tmp_path):
    inv = tmp_path / "servers.yml"
    alerting.check_inventory(listing({"hastack_alert_receivers": GOOD,
                                      "hastack_alert_smtp": SMTP}), inv)
    alerting.check_inventory(listing(), inv)  # nothing to add: the lab's case
    with pytest.raises(HastackError, match=rf"^{inv}: hastack_alert_receivers\[0\].url: "):
        alerting.check_inventory(listing(mon1={"hastack_alert_receivers": one(url="ftp://x")},
                                         mon2={"hastack_alert_receivers": one(url="ftp://x")}),
                                 inv)
    with pytest.raises(HastackError, match=r"the monitoring machines disagree on "
                                           r"hastack_alert_receivers"):
        alerting.check_inventory(listing(mon1={"hastack_alert_receivers": one()}), inv)


def test_known_values_come_from_the_rules_file():
    known = alerting.known_values()
    assert {"MachineDown", "DatabaseSplitBrain", "VipHeldByTwoLbs"} <= known["alertname"]
    assert known["severity"] == {"critical", "warning"}
    assert Path(alerting.RULES_FILE).exists()


def test_deploy_refuses_bad_alerting_before_certificates_or_ansible(monkeypatch, tmp_path):
    from rich.console import Console

    from hastack import deploy

    inv = tmp_path / "servers.yml"
    inv.write_text("all: {}\n")
    bad = listing({"hastack_alert_receivers": one(match={"team": "web"})})
    monkeypatch.setattr(deploy, "list_inventory", lambda inventory, env=None: bad)
    touched = []
    monkeypatch.setattr(deploy, "ensure_tls", lambda *a, **k: touched.append("tls"))
    monkeypatch.setattr(ansible_runner, "run", lambda **k: touched.append("ansible"))
    with pytest.raises(HastackError, match=r"match.team: unknown routing label") as err:
        deploy.run(inv, tmp_path / "secrets", Console(quiet=True))
    assert touched == [] and "\n" not in str(err.value)
