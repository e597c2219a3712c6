"""The alert rules: promtool accepts them, every rule has a unit test where it fires and one
where it must not, and each states its detection budget (scrape + evaluation + for +
group_wait) in a comment and an annotation that agree with the configured intervals."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible" / "roles" / "monitoring"
RULES = ROLE / "files" / "rules" / "hastack.rules.yml"
TESTS = sorted((ROLE / "files" / "tests").glob("*.test.yml"))
DOC = REPO / "docs" / "monitoring.md"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run scripts/host-deps.sh (Debian package prometheus)")
    return found


def seconds(duration: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", duration)
    assert "".join(n + u for n, u in parts) == duration, f"unsupported duration {duration}"
    return sum(int(n) * units[u] for n, u in parts)


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_checks_the_rules(promtool):
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool):
    assert TESTS, "no rule unit tests found"
    result = subprocess.run([promtool, "test", "rules", *map(str, TESTS)], capture_output=True,
                            text=True, cwd=TESTS[0].parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS:
        data = yaml.safe_load(path.read_text())
        assert data["rule_files"] == ["../rules/hastack.rules.yml"], path
        for test in data["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in alerts()}
    assert len(names) == len(alerts()), "duplicate alert names"
    assert names - firing == set(), "alerts without a case where they fire"
    assert names - quiet == set(), "alerts without a case where they must stay quiet"
    assert (firing | quiet) - names == set(), "tests for alerts that do not exist"


def test_every_alert_is_routable_and_states_its_budget():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    fixed = sum(seconds(defaults[k]) for k in ("monitoring_scrape_interval",
                                               "monitoring_evaluation_interval",
                                               "monitoring_group_wait"))
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["labels"]["tier"] in ("machine", "edge", "dns", "site", "database",
                                          "security"), name
        assert set(rule["annotations"]) == {"summary", "budget"}, name
        budget = fixed + seconds(rule.get("for", "0s"))
        assert seconds(rule["annotations"]["budget"]) == budget, name


def test_every_alert_is_explained_in_a_comment():
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- alert:"):
            above = lines[i - 1].strip()
            assert above.startswith("#"), f"{line.strip()}: explain threshold and for: above it"
            name = line.split(":", 1)[1].strip()
            rule = next(r for r in alerts() if r["alert"] == name)
            if "for" in rule:
                comment = []
                j = i - 1
                while lines[j].strip().startswith("#"):
                    comment.append(lines[j])
                    j -= 1
                assert "for:" in " ".join(comment), f"{name}: the comment must explain for:"


def test_docs_list_every_alert_with_its_budget():
    doc = DOC.read_text()
    for rule in alerts():
        row = [line for line in doc.splitlines() if line.startswith(f"| {rule['alert']} |")]
        assert row, f"docs/monitoring.md has no table row for {rule['alert']}"
        assert f"| {rule['annotations']['budget']} |" in row[0], rule["alert"]
        assert f"| {rule.get('for', '0s')} |" in row[0], rule["alert"]
