"""The LBs' VRRP metrics script: held = the VIP is on the interface, state = keepalived's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = (Path(__file__).resolve().parents[2] / "ansible" / "roles" / "loadbalancer" / "files"
          / "hastack-vrrp-metrics")


def run(tmp_path: Path, addresses: str, *args: str) -> str:
    """Run the script with a fake `ip` that shows `addresses` on the interface."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake_ip = bin_dir / "ip"
    fake_ip.write_text(f"#!/bin/sh\ncat <<'EOF'\n{addresses}\nEOF\n")
    fake_ip.chmod(0o755)
    conf = tmp_path / "vrrp-vips"
    conf.write_text("# instance vip interface\nVIP_0 198.18.0.100 pub\nVIP_1 198.18.0.101 pub\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "HASTACK_VRRP_CONF": str(conf), "HASTACK_TEXTFILE_DIR": str(tmp_path / "textfile"),
           "HASTACK_VRRP_STATE_DIR": str(tmp_path / "state")}
    subprocess.run(["sh", str(SCRIPT), *args], env=env, check=True)
    return (tmp_path / "textfile" / "hastack_vrrp.prom").read_text()


HOLDS_A = "3: pub    inet 198.18.0.11/24 brd 198.18.0.255 scope global pub\n" \
          "3: pub    inet 198.18.0.100/24 scope global secondary pub"


def test_held_follows_the_addresses_on_the_interface(tmp_path):
    text = run(tmp_path, HOLDS_A, "INSTANCE", "VIP_0", "MASTER", "250")
    assert 'hastack_vrrp_vip_held{vip="198.18.0.100",vrrp_instance="VIP_0"} 1' in text
    assert 'hastack_vrrp_vip_held{vip="198.18.0.101",vrrp_instance="VIP_1"} 0' in text
    assert 'hastack_vrrp_state{vip="198.18.0.100",vrrp_instance="VIP_0",state="MASTER"} 1' in text
    assert 'hastack_vrrp_state{vip="198.18.0.101",vrrp_instance="VIP_1",state="UNKNOWN"} 1' in text
    assert "# TYPE hastack_vrrp_vip_held gauge" in text


def test_a_timer_refresh_keeps_the_states_and_sees_an_address_left_behind(tmp_path):
    run(tmp_path, HOLDS_A, "INSTANCE", "VIP_0", "BACKUP", "250")
    # keepalived said BACKUP, but the address is still there (keepalived killed with -9)
    text = run(tmp_path, HOLDS_A)
    assert 'hastack_vrrp_vip_held{vip="198.18.0.100",vrrp_instance="VIP_0"} 1' in text
    assert 'hastack_vrrp_state{vip="198.18.0.100",vrrp_instance="VIP_0",state="BACKUP"} 1' in text
    assert 'state="MASTER"} 1' not in text


def test_a_prefix_of_another_address_is_not_the_vip(tmp_path):
    text = run(tmp_path, "3: pub    inet 198.18.0.1001/24 scope global pub")
    assert 'vrrp_instance="VIP_0"} 0' in text


def test_no_label_named_instance(tmp_path):
    # Prometheus owns "instance" (the scrape target); ours would become exported_instance.
    text = run(tmp_path, HOLDS_A)
    assert "instance=" not in text.replace("vrrp_instance=", "")
