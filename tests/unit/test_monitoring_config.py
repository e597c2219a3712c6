"""The monitoring role's configurations for 1 and 2 monitoring machines, checked by the
daemons' own tools (promtool, amtool, blackbox --config.check) as the deploy checks them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from hastack import alerting, inventory, topology

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible" / "roles" / "monitoring"
CHECK = ROLE / "files" / "check-monitoring-config"
TOOLS = ("promtool", "amtool", "prometheus-blackbox-exporter")


@pytest.fixture(scope="module", autouse=True)
def tools():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/host-deps.sh (Debian packages "
                    "prometheus, prometheus-alertmanager, prometheus-blackbox-exporter)")


def render(mons: int, tmp: Path, extra: dict | None = None, topo_data: dict | None = None
           ) -> dict[str, dict[str, str]]:
    """Every monitoring template for every monitoring machine: {machine: {file: text}}.

    TLS files and the rules directory point into `tmp` (dummies), so promtool's full check
    (which opens them) runs too.
    """
    topo = topology.parse(topo_data or {"counts": {"monitoring": mons}})
    inv = inventory.build(topo)
    group_vars = yaml.safe_load((REPO / "ansible" / "group_vars" / "all.yml").read_text())
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    tls = tmp / "tls"
    tls.mkdir(exist_ok=True)
    for name in ("ca.crt", "machine.crt", "machine.key"):
        (tls / name).touch()
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    shutil.copy(ROLE / "files" / "rules" / "hastack.rules.yml", rules)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             keep_trailing_newline=True)
    groups = {g: list(c.get("hosts", {})) for g, c in inv["all"]["children"].items()}
    groups["database"] = groups.get("db_primary", []) + groups.get("db_replica", [])
    groups["all"] = list(inv["all"]["hosts"])
    hostvars = {h: {**inv["all"]["vars"], **hv} for h, hv in inv["all"]["hosts"].items()}
    settings = {k: v for k, v in group_vars.items() if not str(v).startswith("{{")}
    settings.update({
        "hastack_tls_service_domain": "hastack.internal",
        "hastack_app_tls_name": "app.hastack.internal",
        "hastack_machine_tls_dir": str(tls),
        **{k: v for k, v in defaults.items() if k not in ("monitoring_receivers",
                                                          "monitoring_smtp")},
        "monitoring_rules_dir": str(rules),
        "monitoring_receivers": [],
        "monitoring_smtp": {},
        **(extra or {}),
    })
    out = {}
    for mon in groups["monitoring"]:
        variables = {**settings, **hostvars[mon], "groups": groups, "hostvars": hostvars,
                     "inventory_hostname": mon}
        out[mon] = {name[:-3]: env.get_template(name).render(**variables)
                    for name in ("prometheus.yml.j2", "alertmanager.yml.j2", "blackbox.yml.j2",
                                 "alertmanager.default.j2", "hastack-alert-receiver.service.j2")}
    return out


def write(tmp: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp / name).write_text(text)
    return tmp


def checker(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CHECK), str(directory)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("mons", [1, 2])
def test_configs_pass_the_daemons_checkers(tmp_path, mons):
    for files in render(mons, tmp_path).values():
        write(tmp_path, files)
        result = checker(tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == ""
        # the full check too: rule files and TLS files it names are opened
        full = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                              capture_output=True, text=True)
        assert full.returncode == 0, full.stdout + full.stderr
        assert re.search(r"SUCCESS: \d+ rules found", full.stdout), full.stdout


def jobs(prometheus_yml: str) -> dict[str, list[dict]]:
    config = yaml.safe_load(prometheus_yml)
    return {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}


def targets(static_configs: list[dict]) -> dict[str, dict]:
    return {t: sc.get("labels", {}) for sc in static_configs for t in sc["targets"]}


def test_every_exporter_of_every_machine_is_scraped(tmp_path):
    text = render(1, tmp_path)["mon1"]["prometheus.yml"]
    j = jobs(text)
    node = targets(j["node"])
    assert len(node) == 10 and node["198.19.0.11:9100"] == {"machine": "lb1"}
    assert set(targets(j["haproxy"])) == {"198.19.0.11:8404", "198.19.0.12:8404"}
    assert set(targets(j["nginx"])) == {"198.19.0.21:9113", "198.19.0.22:9113"}
    assert set(targets(j["mysqld"])) == {"198.19.0.41:9104", "198.19.0.42:9104"}
    assert set(targets(j["site"])) == {"198.19.0.31:8000", "198.19.0.32:8000"}
    assert set(targets(j["prometheus"])) == {"198.19.0.61:9090"}
    assert set(targets(j["alertmanager"])) == {"198.19.0.61:9093"}
    config = yaml.safe_load(text)
    assert "external_labels" not in config["global"]  # both Prometheus send identical alerts
    assert config["global"]["scrape_interval"] == "5s"


def test_blackbox_probes_each_vip_and_the_dns_answer_for_each_vip(tmp_path):
    files = render(1, tmp_path)["mon1"]
    j = jobs(files["prometheus.yml"])
    site = targets(j["blackbox_site"])
    assert site == {
        "https://198.18.0.100/": {"probe": "site", "vip": "198.18.0.100",
                                  "domain": "www.foobar.com"},
        "https://198.18.0.101/": {"probe": "site", "vip": "198.18.0.101",
                                  "domain": "www.foobar.com"},
    }
    dns = [(t, labels) for sc in j["blackbox_dns"] for t in sc["targets"]
           for labels in [sc["labels"]]]
    # ns1's public address: the client's view
    assert [(t, labels["vip"], labels["__param_module"]) for t, labels in dns] == [
        ("198.18.0.53:53", "198.18.0.100", "dns_0"), ("198.18.0.53:53", "198.18.0.101", "dns_1")]
    modules = yaml.safe_load(files["blackbox.yml"])["modules"]
    site_module = modules["site"]["http"]
    assert site_module["headers"] == {"Host": "www.foobar.com"}
    assert site_module["tls_config"]["server_name"] == "www.foobar.com"
    # dnsmasq's answer as blackbox prints each record (miekg/dns RR.String())
    for i, vip in enumerate(["198.18.0.100", "198.18.0.101"]):
        rrs = modules[f"dns_{i}"]["dns"]["validate_answer_rrs"]
        (pattern,) = rrs["fail_if_none_matches_regexp"]
        assert re.search(pattern, f"www.foobar.com.\t30\tIN\tA\t{vip}")
        other = "198.18.0.101" if i == 0 else "198.18.0.100"
        assert not re.search(pattern, f"www.foobar.com.\t30\tIN\tA\t{other}")
        assert not re.search(pattern, f"www.foobar.com.\t30\tIN\tA\t{vip}0")


def test_no_dns_machine_no_dns_probes(tmp_path):
    files = render(1, tmp_path, topo_data={"counts": {"dns": 0, "monitoring": 1}})["mon1"]
    assert "blackbox_dns" not in jobs(files["prometheus.yml"])
    write(tmp_path, files)
    assert checker(tmp_path).returncode == 0


def test_one_monitoring_machine_has_no_cluster(tmp_path):
    files = render(1, tmp_path)["mon1"]
    args = files["alertmanager.default"]
    assert args.rstrip().endswith('--cluster.listen-address="')  # empty: no cluster
    assert "--cluster.peer=" not in args
    assert "--web.listen-address=198.19.0.61:9093" in args
    am = yaml.safe_load(files["alertmanager.yml"])
    assert [w["url"] for w in am["receivers"][0]["webhook_configs"]] == [
        "http://198.19.0.61:9095/alert"]


def test_two_monitoring_machines_form_one_cluster_and_share_one_config(tmp_path):
    out = render(2, tmp_path)
    assert set(out) == {"mon1", "mon2"}
    a1, a2 = out["mon1"]["alertmanager.default"], out["mon2"]["alertmanager.default"]
    assert "--cluster.listen-address=198.19.0.61:9094" in a1
    assert "--cluster.peer=198.19.0.62:9094" in a1 and "--cluster.peer=198.19.0.61" not in a1
    assert "--cluster.listen-address=198.19.0.62:9094" in a2
    assert "--cluster.peer=198.19.0.61:9094" in a2
    # Alertmanager peers must run the same configuration; so do both Prometheus servers
    assert out["mon1"]["alertmanager.yml"] == out["mon2"]["alertmanager.yml"]
    p1, p2 = (yaml.safe_load(out[m]["prometheus.yml"]) for m in ("mon1", "mon2"))
    assert p1 == p2
    assert p1["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "198.19.0.61:9093", "198.19.0.62:9093"]
    am = yaml.safe_load(out["mon1"]["alertmanager.yml"])
    history = am["receivers"][0]
    assert history["name"] == "hastack-history"
    assert [w["url"] for w in history["webhook_configs"]] == [
        "http://198.19.0.61:9095/alert", "http://198.19.0.62:9095/alert"]
    assert am["route"]["group_by"] == ["..."]
    assert am["route"]["group_wait"] == "5s"


RECEIVERS = [
    {"name": "ops-mail", "type": "email", "to": ["ops@example.com", "oncall@example.com"],
     "match": {"severity": "critical", "tier": "database"}},
    {"name": "chat", "type": "slack", "url": "https://hooks.slack.com/services/T0/B0/XX",
     "channel": "#ops", "group_by": ["alertname", "machine"]},
    {"name": "pager", "type": "webhook", "url": "https://pager.example.com/hook?team=web&x=1",
     "send_resolved": False},
]
SMTP = {"smarthost": "smtp.example.com:587", "from": "alerts@example.com",
        "auth_username": "alerts", "auth_password": "s3cret'\"&<"}


def test_extra_receivers_are_rendered_and_accepted_by_amtool(tmp_path):
    alerting.check_receivers(RECEIVERS)
    alerting.check_smtp(SMTP, RECEIVERS)
    files = render(2, tmp_path, {"monitoring_receivers": RECEIVERS, "monitoring_smtp": SMTP})
    text = files["mon1"]["alertmanager.yml"]
    write(tmp_path, files["mon1"])
    result = checker(tmp_path)
    assert result.returncode == 0, result.stdout
    am = yaml.safe_load(text)
    assert am["global"]["smtp_auth_password"] == SMTP["auth_password"]
    routes = am["route"]["routes"]
    assert [r["receiver"] for r in routes] == ["hastack-history", "ops-mail", "chat", "pager"]
    assert all(r["continue"] for r in routes)
    assert routes[1]["matchers"] == ['severity="critical"', 'tier="database"']
    assert routes[2]["group_by"] == ["alertname", "machine"]
    by_name = {r["name"]: r for r in am["receivers"]}
    assert by_name["ops-mail"]["email_configs"][0]["to"] == "ops@example.com, oncall@example.com"
    assert by_name["chat"]["slack_configs"][0]["channel"] == "#ops"
    assert by_name["pager"]["webhook_configs"][0] == {
        "url": "https://pager.example.com/hook?team=web&x=1", "send_resolved": False}


def test_checker_refuses_a_rule_file_that_does_not_parse_in_one_line(tmp_path):
    write(tmp_path, render(1, tmp_path)["mon1"])
    (tmp_path / "rules" / "local.rules.yml").write_text(
        "groups:\n  - name: mine\n    rules:\n      - alert: Broken\n        expr: up ==\n")
    result = checker(tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("promtool check rules: rules/local.rules.yml: ")
    assert "parse error" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1, result.stdout


def test_checker_refuses_a_receiver_amtool_refuses_in_one_line(tmp_path):
    # what hastack.alerting refuses first; a playbook run without `hastack deploy` still stops
    bad = [{"name": "pager", "type": "webhook", "url": "not a url"}]
    write(tmp_path, render(1, tmp_path, {"monitoring_receivers": bad})["mon1"])
    result = checker(tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("amtool check-config: unsupported scheme")
    assert len(result.stdout.strip().splitlines()) == 1, result.stdout


def test_receiver_service_listens_on_the_private_address(tmp_path):
    unit = render(1, tmp_path)["mon1"]["hastack-alert-receiver.service"]
    assert "--listen 198.19.0.61:9095" in unit
    assert "User=prometheus" in unit and "StateDirectory=hastack-alert-receiver" in unit
