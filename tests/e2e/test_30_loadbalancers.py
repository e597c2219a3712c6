"""The load-balancer tier: DNS round-robin, VRRP failover, health checks, drain/enable.

Faults are real (SIGKILL of a daemon, power cut of a machine); clients are the bounded load
generator, which records which LB (X-LB) and which web server answered every request.
"""

from __future__ import annotations

import time

import dns.message
import dns.query
import dns.rdatatype

from hastack import chaos
from hastack import lb as lbtool
from hastack.chaos import primitives
from hastack.lab.lab import Lab as LabApi

from .conftest import load, more, poll, run


def _lb_of(lab, vip: str) -> str:
    with lab.client(vip, timeout=1.0) as c:
        return c.get("/healthz").headers.get("x-lb", "")


def _owners_are_the_masters(lab) -> bool:
    return [_lb_of(lab, vip) for vip in lab.vips] == ["lb1", "lb2"]


# Goals (docs/figures.md, LB tier): the new owner answers VIP-A within this long of the fault,
# and no request fails but those the dying LB held as it died. A connection that arrives
# after that is not refused: the LB's firewall drops a SYN nobody listens for (flow
# site-from-anyone, `listening`), and the client's retransmission meets the new owner.
FAILOVER_GOAL_S = {"haproxy": 0.5, "power": 1.5}


def _in_flight(result, t_fault: float, t_dead: float) -> int:
    """Requests the LB held at some moment of its death: from the kill until its last
    process had exited (the kernel resets the connections still queued on its listener),
    or while its cables were pulled."""
    return sum(1 for s in result.samples if s.start <= t_dead and s.end > t_fault)


def _check_failover(result, t_fault: float, goal: str, what: str,
                    t_dead: float | None = None) -> None:
    """lb2 answers VIP-A within the goal; no failure but the dying LB's in-flight requests."""
    first = result.first_success_after(t_fault, lambda h: h == "lb2")
    assert first is not None, result.served_by()
    failed = [s for s in result.samples if s.failed and s.end >= t_fault]
    in_flight = _in_flight(result, t_fault, t_fault if t_dead is None else t_dead)
    print(f"\n{what}: VIP-A answered by lb2 after {first - t_fault:.3f} s, "
          f"{len(failed)} failed of {result.sent}, {in_flight} in flight (died over "
          f"{1000 * ((t_dead or t_fault) - t_fault):.1f} ms)")
    assert first - t_fault <= FAILOVER_GOAL_S[goal]
    assert len(failed) <= in_flight, [(s.start - t_fault, s.error, s.status) for s in failed][:10]


def test_dns_answers_both_vips(lab):
    server = lab.status["site"]["dns"]
    for name in (lab.domain, "foobar.com"):
        reply = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=2)
        addresses = sorted(r.address for rrset in reply.answer for r in rrset
                           if rrset.rdtype == dns.rdatatype.A)
        assert addresses == sorted(lab.vips), (name, addresses)
        assert reply.flags & dns.flags.AA


def test_each_vip_is_served_by_its_master(lab):
    poll(lambda: _owners_are_the_masters(lab), 15, "VIP-A on lb1 and VIP-B on lb2")


def test_haproxy_killed_moves_the_vip(lab):
    api = LabApi()
    vip_a = lab.vips[0]
    poll(lambda: _owners_are_the_masters(lab), 15, "the VIPs on their masters")
    with load(lab, vip_a) as bg:
        t_fault, t_dead = primitives.crash_service(api, "lb1", "haproxy")
        poll(lambda: any(s.header == "lb2" and s.start > t_fault for s in bg.live), 10,
             "VIP-A answered by lb2")
    _check_failover(bg.result, t_fault, "haproxy", "haproxy SIGKILL on lb1", t_dead)
    # systemd restarts HAProxy; the VIP returns to its master without a flap
    poll(lambda: _owners_are_the_masters(lab), 20, "VIP-A back on lb1 once HAProxy is back")


def test_lb_machine_power_cut_moves_both_vips_and_they_return(lab):
    api = LabApi()
    poll(lambda: _owners_are_the_masters(lab), 15, "the VIPs on their masters")
    try:
        with load(lab, lab.vips[0]) as bg:
            t_fault, t_dead = primitives.power_cut(api, "lb1")
            poll(lambda: any(s.header == "lb2" and s.start > t_fault for s in bg.live), 10,
                 "VIP-A answered by lb2")
        assert all(_lb_of(lab, vip) == "lb2" for vip in lab.vips)
        _check_failover(bg.result, t_fault, "power", "lb1 power cut", t_dead)
    finally:
        chaos.power_on(api, "lb1")
        poll(lambda: _owners_are_the_masters(lab), 60, "VIP-A back on lb1 after it boots")


def test_dead_nginx_fails_no_idempotent_request(lab):
    api = LabApi()
    with load(lab, lab.vips[0], header="x-served-by") as bg:
        t_fault = chaos.kill_service(api, "web1", "nginx")

        def web1_out_of_rotation():
            return all(lbtool.server_stats(api, lb)["web1"]["status"].startswith("DOWN")
                       for lb in ("lb1", "lb2"))
        poll(web1_out_of_rotation, 10, "web1 marked DOWN on both LBs", interval=0.05)
        t_down = time.monotonic()
        print(f"\nweb1 out of rotation on both LBs {t_down - t_fault:.2f} s after its nginx died")
        more(bg, 100, "more load after web1 left")
    result = bg.result
    late = [s for s in result.samples if s.start > t_down and s.ok]
    print(f"\nnginx SIGKILL on web1: {result.failed} failed of {result.sent}")
    assert result.failed == 0, [s for s in result.samples if s.failed][:5]
    assert late and not any(s.header and s.header.startswith("web1/") for s in late)
    chaos.start_service(api, "web1", "nginx")
    poll(lambda: not any(lbtool.server_stats(api, lb)["web1"]["status"].startswith("DOWN")
                         for lb in ("lb1", "lb2")), 15, "web1 back UP")


def test_drain_and_enable_fail_no_request(lab):
    with load(lab, lab.vips[1], header="x-served-by") as bg:
        run("lb", "drain", "web2")
        t_drained = time.monotonic()
        more(bg, 100, "load while web2 is drained")
        t_enabling = time.monotonic()
        run("lb", "enable", "web2")
        t_enabled = time.monotonic()
        more(bg, 100, "load after web2 is enabled")
    result = bg.result
    assert result.failed == 0, [s for s in result.samples if s.failed][:5]
    while_drained = [s for s in result.samples if t_drained < s.start < t_enabling]
    after = [s.header for s in result.samples if s.start > t_enabled + 0.5]
    assert while_drained
    assert not [(s.start - t_drained, s.header) for s in while_drained
                if s.header.startswith("web2/")]
    assert any(h.startswith("web2/") for h in after)
