"""What the lab gives its DB nodes for fencing: each node's fence device in the inventory
(fence_redfish against the lab's Redfish endpoint on the host's private address), the flow to
it, a password made once (0600), and a certificate the nodes verify (IP SAN, internal CA)."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from hastack import pki, topology
from hastack.lab.lab import FENCE_PORT, Lab


@pytest.fixture
def lab(tmp_path: Path, monkeypatch) -> Lab:
    monkeypatch.setenv("HASTACK_STATE", str(tmp_path))
    lab = Lab()
    lab.dir.mkdir(parents=True)
    return lab


def test_every_db_node_gets_its_fence_device_and_the_flow_to_it(lab):
    topo = topology.load(None)
    lab._write_inventory(topo)
    inv = yaml.safe_load(lab.inventory.read_text())
    password = lab.fence_password.read_text().strip()
    assert len(password) >= 24 and stat.S_IMODE(lab.fence_password.stat().st_mode) == 0o600
    for name in ("db1", "db2"):
        fence = inv["all"]["hosts"][name]["hastack_fence"]
        assert fence == {"agent": "fence_redfish", "params": {
            "ip": "198.19.0.1", "ipport": FENCE_PORT, "username": "hastack-fence",
            "password": password, "systems_uri": f"/redfish/v1/Systems/{name}",
            "pcmk_host_argument": "none"}}
    assert "hastack_fence" not in inv["all"]["hosts"]["web1"]
    assert inv["all"]["vars"]["firewall_extra_flows"] == [
        {"name": "fence-from-db", "from": "database", "to": "admin", "proto": "tcp",
         "ports": [FENCE_PORT]}]
    # made once: a second inventory keeps the password the endpoint runs with
    lab._write_inventory(topo)
    assert lab.fence_password.read_text().strip() == password


def test_no_cluster_no_fencing(lab):
    topo = topology.parse({"counts": {"replicas": 0}})
    lab._write_inventory(topo)
    inv = yaml.safe_load(lab.inventory.read_text())
    assert "hastack_fence" not in inv["all"]["hosts"]["db1"]
    assert "firewall_extra_flows" not in inv["all"]["vars"]
    assert not lab.fence_password.exists()


def test_the_endpoint_certificate_names_the_host_address(tmp_path):
    cert, key = pki.ensure_host_service(tmp_path, "www.foobar.com", "lab-fence",
                                        ["198.19.0.1"])
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.19.0.1")]
    ca = x509.load_pem_x509_certificate(pki.ca_cert_path(tmp_path).read_bytes())
    leaf.verify_directly_issued_by(ca)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # kept apart from what the deploy ships, and reused while it fits
    assert cert.parent == tmp_path / "lab-fence"
    again, _ = pki.ensure_host_service(tmp_path, "www.foobar.com", "lab-fence", ["198.19.0.1"])
    assert again.read_bytes() == cert.read_bytes()
