"""keepalived.conf for 1, 2 and 3 LBs: one owner per VIP, a fixed backup order, no ties."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest
import yaml

from hastack import inventory, topology

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "loadbalancer"


def render(lb_count: int) -> dict[str, str]:
    topo = topology.parse({"counts": {"loadbalancers": lb_count}})
    inv = inventory.build(topo)
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True)
    template = env.get_template("keepalived.conf.j2")
    groups = {g: list(c.get("hosts", {})) for g, c in inv["all"]["children"].items()}
    hostvars = {h: {**inv["all"]["vars"], **hv} for h, hv in inv["all"]["hosts"].items()}
    out = {}
    for lb in groups["loadbalancer"]:
        out[lb] = template.render(**defaults, **hostvars[lb], groups=groups, hostvars=hostvars,
                                  inventory_hostname=lb)
    return out


def priorities(config: str) -> dict[int, int]:
    """vrid -> priority in one LB's config."""
    blocks = re.findall(r"virtual_router_id (\d+)\s+priority (\d+)", config)
    return {int(v): int(p) for v, p in blocks}


@pytest.mark.parametrize("count", [1, 2, 3])
def test_each_vip_has_one_owner_and_distinct_backups(count):
    configs = render(count)
    assert len(configs) == count
    vrids = sorted(priorities(next(iter(configs.values()))))
    assert len(vrids) == count
    for i, vrid in enumerate(vrids):
        by_lb = {lb: priorities(c)[vrid] for lb, c in configs.items()}
        assert len(set(by_lb.values())) == count, by_lb  # no ties: no flapping elections
        owner = max(by_lb, key=by_lb.get)
        assert owner == f"lb{i + 1}"  # VIP i belongs to lb i+1


def test_single_lb_has_no_peers_and_two_lbs_peer_each_other():
    single = render(1)["lb1"]
    assert "unicast_peer" not in single
    pair = render(2)
    assert "198.18.0.12" in pair["lb1"].split("unicast_peer")[1]
    assert "198.18.0.11" in pair["lb2"].split("unicast_peer")[1]


def test_every_instance_tracks_haproxy():
    for config in render(2).values():
        assert config.count("haproxy_down weight 0") == 2
        assert config.count("haproxy_answers weight 0") == 2
        assert "state MASTER" not in config


def test_every_instance_reports_its_state_changes_to_the_metrics_script():
    for config in render(2).values():
        assert config.count("notify /usr/local/sbin/hastack-vrrp-metrics") == 2
