"""`hastack chaos`, CI-sized: one fault per tier and a rolling deploy of a new site build
under a steady load of reads and writes through both VIPs, then every acknowledged write
looked up on every DB node.

The run is made once (module fixture, a few minutes) through the real CLI; each test reads
its part of the JSON report. Promises (docs/chaos/chaos.md in the report's words): no
acknowledged write lost, none applied twice; no failed request during a web or app fault
or a rolling deploy; no failed read during a DB fault. LB faults are measured, not gated
(the dying LB's in-flight connections die with it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import one_line_error, run

FAULTS = ("web1-nginx-killed", "web1-power-off", "app1-gunicorn-killed", "app1-power-off",
          "lb1-haproxy-killed", "db2-power-off", "db1-mariadbd-killed", "rolling-deploy")
# Promises not met today, each with what was measured (strict assertion kept, case xfail;
# not strict where the failure is intermittent). None at the moment.
KNOWN_BROKEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def chaos_run(lab, tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess[str], Path]:
    report = tmp_path_factory.mktemp("chaos")
    result = run("chaos", "--faults", ",".join(FAULTS), "--rate", "20", "--fault-seconds", "5",
                 "--report", str(report), "--json", check=False, timeout=1800)
    if not result.stdout.strip():
        pytest.fail(f"hastack chaos printed no report (exit {result.returncode}): "
                    f"{result.stderr[-2000:]}")
    return json.loads(result.stdout), result, report


def _fault(data: dict, name: str) -> dict:
    return next(r for r in data["faults"] if r["fault"] == name)


def test_every_fault_ran_and_the_stack_came_back(chaos_run):
    data, _, _ = chaos_run
    assert [r["fault"] for r in data["faults"]] == list(FAULTS)
    for r in data["faults"]:
        assert "error" not in r, r["error"]
        assert r["healthy_after_heal_s"] is not None
        assert sum(k["sent"] for k in r["requests"].values()) > 0


def test_no_acknowledged_write_lost_and_none_applied_twice(chaos_run):
    data, _, _ = chaos_run
    audit = data["audit"]
    assert audit["acknowledged"] > 0
    assert audit["nodes"] == sorted(audit["nodes"]) and len(audit["nodes"]) >= 2
    assert (audit["lost"], audit["duplicated"]) == (0, 0), audit


@pytest.mark.parametrize("fault", FAULTS)
def test_no_request_failed_where_the_design_promises_none(chaos_run, fault, request):
    if fault in KNOWN_BROKEN:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_BROKEN[fault], strict=False))
    data, _, _ = chaos_run
    r = _fault(data, fault)
    print(f"\n{fault}: {r['requests']}, window {r['error_window']}, detected "
          f"{r['detection_s']} s, p99 {r['p99_ms']} ms")
    assert r["promise_broken"] is None, r


def test_detection_is_measured_for_web_lb_and_db_faults(chaos_run):
    data, _, _ = chaos_run
    for name in ("web1-nginx-killed", "lb1-haproxy-killed", "db2-power-off"):
        r = _fault(data, name)
        assert r["detection_s"] is not None and 0 <= r["detection_s"] < 30, r


def test_exit_code_follows_the_verdict_and_the_report_is_written(chaos_run):
    data, result, report = chaos_run
    assert (result.returncode == 0) == (data["verdict"] == []), result.stderr
    md = (report / "chaos.md").read_text()
    assert "cores" in md and "hastack.loadgen" in md and "hastack chaos --faults" in md
    for name in FAULTS:
        assert (report / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("args", "message"), [
    (["--faults", "web9-nginx-killed"], "unknown machine 'web9'"),
    (["--faults", "web1-on-fire"], "unknown fault 'web1-on-fire'"),
    (["--rate", "1000"], "at most 100 requests/s"),
    (["--fault-seconds", "600"], "--fault-seconds must be within 1..120"),
])
def test_bad_input_is_refused_before_anything_starts(lab, tmp_path, args, message):
    report = tmp_path / "report"
    line = one_line_error(run("chaos", *args, "--report", str(report), check=False))
    assert message in line
    assert not report.exists()
