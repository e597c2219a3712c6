"""The environment's certificates: real keys and certificates, real verification."""

from __future__ import annotations

import copy
import ipaddress
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from hastack import deploy, pki
from hastack.errors import HastackError

DOMAIN = "www.foobar.com"
ALIASES = ["foobar.com"]
MACHINES = {"lb1": ["198.18.0.11", "198.19.0.11"], "web1": ["198.19.0.21"],
            "db1": ["198.19.0.41"]}
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def make(secrets: Path, *, aliases=ALIASES, machines=MACHINES, now=T0, **kw) -> Path:
    return pki.ensure(secrets, DOMAIN, aliases, machines, now=now, **kw)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def spki(public) -> bytes:
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def sans(c: x509.Certificate) -> list[str]:
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]


def eku(c: x509.Certificate) -> set:
    return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {str(f.relative_to(root)): (f.read_bytes(), f.stat().st_mtime_ns, mode(f))
            for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    return tmp_path / "secrets"


# ---- what is issued --------------------------------------------------------------------------

def test_ca(secrets):
    tls = make(secrets)
    ca = cert(secrets / "ca" / "ca.crt")
    assert pki.ca_cert_path(secrets) == secrets / "ca" / "ca.crt"
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        "hastack www.foobar.com CA"
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= timedelta(days=3650)
    ca_key = key(secrets / "ca" / "ca.key")
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert isinstance(ca_key.curve, ec.SECP256R1)
    assert spki(ca_key.public_key()) == spki(ca.public_key())
    assert (tls / "ca.crt").read_bytes() == (secrets / "ca" / "ca.crt").read_bytes()


def test_site_certificate(secrets):
    tls = make(secrets)
    leaf, ca = chain(tls / "site.crt")
    assert ca == cert(tls / "ca.crt")
    assert sans(leaf) == ["www.foobar.com", "foobar.com"]
    assert eku(leaf) == {ExtendedKeyUsageOID.SERVER_AUTH}
    site_key = key(tls / "site.key")
    assert isinstance(site_key, ec.EllipticCurvePrivateKey)
    assert isinstance(site_key.curve, ec.SECP256R1)
    assert spki(site_key.public_key()) == spki(leaf.public_key())
    assert leaf.not_valid_after_utc == T0 + timedelta(days=397)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_machine_certificates(secrets):
    tls = make(secrets)
    lb1 = cert(tls / "lb1.crt")
    assert lb1.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "lb1"
    san = lb1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["lb1"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.0.11"),
                                                       ipaddress.ip_address("198.19.0.11")]
    assert eku(lb1) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert lb1.not_valid_after_utc == T0 + timedelta(days=365)
    for name in MACHINES:
        k = key(tls / f"{name}.key")
        assert isinstance(k, ec.EllipticCurvePrivateKey) and isinstance(k.curve, ec.SECP256R1)
        assert spki(k.public_key()) == spki(cert(tls / f"{name}.crt").public_key())
    assert sorted(f.name for f in tls.iterdir()) == [
        "ca.crt", "db1.crt", "db1.key", "lb1.crt", "lb1.key", "site.crt", "site.key",
        "web1.crt", "web1.key"]


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o022])
def test_modes(secrets, umask):
    old = os.umask(umask)
    try:
        make(secrets)
    finally:
        os.umask(old)
    for d in (secrets, secrets / "ca", secrets / "tls"):
        assert mode(d) == 0o700, d
    for f in secrets.rglob("*"):
        if f.is_file():
            assert mode(f) == (0o600 if f.suffix == ".key" else 0o644), f


def test_leaves_verify_against_the_ca(secrets):
    """cryptography's web PKI verifier (strict RFC 5280 profile) and openssl both accept."""
    tls = make(secrets, now=None)
    store = Store([cert(tls / "ca.crt")])
    site_leaf, *rest = chain(tls / "site.crt")
    for name in ("www.foobar.com", "foobar.com"):
        PolicyBuilder().store(store).build_server_verifier(
            x509.DNSName(name)).verify(site_leaf, rest)
    lb1 = cert(tls / "lb1.crt")
    PolicyBuilder().store(store).build_server_verifier(
        x509.IPAddress(ipaddress.ip_address("198.19.0.11"))).verify(lb1, [])
    PolicyBuilder().store(store).build_client_verifier().verify(lb1, [])
    for purpose, files in (("sslserver", ["site.crt", "lb1.crt", "web1.crt", "db1.crt"]),
                           ("sslclient", ["lb1.crt", "web1.crt", "db1.crt"])):
        result = subprocess.run(["openssl", "verify", "-CAfile", str(tls / "ca.crt"),
                                 "-purpose", purpose, *(str(tls / f) for f in files)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(["openssl", "verify", "-CAfile", str(tls / "ca.crt"),
                             "-verify_hostname", "foobar.com", str(tls / "site.crt")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- idempotence and renewal -----------------------------------------------------------------

def test_second_run_changes_nothing(secrets):
    make(secrets)
    before = snapshot(secrets)
    make(secrets)
    make(secrets, now=T0 + timedelta(days=300))  # older, but more than 30 days left
    assert snapshot(secrets) == before


def test_renewal_close_to_expiry(secrets):
    tls = make(secrets)
    before = snapshot(secrets)
    make(secrets, now=T0 + timedelta(days=340))  # machines: 25 days left, site: 57
    after = snapshot(secrets)
    for name in MACHINES:
        assert after[f"tls/{name}.crt"][0] != before[f"tls/{name}.crt"][0]
        assert after[f"tls/{name}.key"][0] != before[f"tls/{name}.key"][0]
    assert cert(tls / "web1.crt").not_valid_after_utc == T0 + timedelta(days=340 + 365)
    for unchanged in ("tls/site.crt", "tls/site.key", "tls/ca.crt", "ca/ca.crt", "ca/ca.key"):
        assert after[unchanged] == before[unchanged], unchanged
    make(secrets, now=T0 + timedelta(days=370))  # site: 27 days left
    assert snapshot(secrets)["tls/site.crt"][0] != after["tls/site.crt"][0]


def test_renewal_when_names_change(secrets):
    tls = make(secrets)
    before = snapshot(secrets)
    make(secrets, aliases=["foobar.com", "shop.foobar.com"])
    after = snapshot(secrets)
    assert sans(chain(tls / "site.crt")[0]) == ["www.foobar.com", "foobar.com", "shop.foobar.com"]
    assert after["tls/site.key"] != before["tls/site.key"]
    assert all(after[f] == before[f] for f in before if not f.startswith("tls/site."))

    make(secrets, aliases=["foobar.com", "shop.foobar.com"],
         machines={**MACHINES, "web1": ["198.19.0.21", "198.19.0.99"]})
    later = snapshot(secrets)
    assert "198.19.0.99" in sans(cert(tls / "web1.crt"))
    assert {f for f in later if later[f] != after[f]} == {"tls/web1.crt", "tls/web1.key"}


def test_new_ca_reissues_every_leaf(secrets):
    tls = make(secrets)
    old_ca = cert(tls / "ca.crt")
    before = snapshot(secrets)
    for f in (secrets / "ca").iterdir():
        f.unlink()
    make(secrets)
    after = snapshot(secrets)
    assert {f for f in after if after[f][0] == before[f][0]} == set()
    new_ca = cert(tls / "ca.crt")
    assert new_ca != old_ca
    for name in ("site", *MACHINES):
        cert(tls / f"{name}.crt").verify_directly_issued_by(new_ca)
    assert chain(tls / "site.crt")[1] == new_ca


def test_ca_renewed_only_near_its_end(secrets):
    tls = make(secrets)
    ca_before = (secrets / "ca" / "ca.crt").read_bytes()
    late = T0 + timedelta(days=3500)  # 150 days left: kept; leaves end with it
    make(secrets, now=late)
    ca = cert(secrets / "ca" / "ca.crt")
    assert (secrets / "ca" / "ca.crt").read_bytes() == ca_before
    assert cert(tls / "site.crt").not_valid_after_utc == ca.not_valid_after_utc
    make(secrets, now=T0 + timedelta(days=3630))  # 20 days left: a new CA, new leaves
    new_ca = cert(secrets / "ca" / "ca.crt")
    assert new_ca.not_valid_after_utc > ca.not_valid_after_utc
    cert(tls / "site.crt").verify_directly_issued_by(new_ca)


def test_damaged_leaf_is_replaced(secrets):
    tls = make(secrets)
    (tls / "web1.key").write_bytes(b"not a key")
    (tls / "db1.crt").unlink()
    make(secrets)
    for name in ("web1", "db1"):
        assert spki(key(tls / f"{name}.key").public_key()) == \
            spki(cert(tls / f"{name}.crt").public_key())
    assert mode(tls / "web1.key") == 0o600


def test_machine_that_left_is_removed(secrets):
    tls = make(secrets)
    (tls / ".web1.key.tmp123").write_bytes(b"left by a killed run")
    make(secrets, machines={"lb1": MACHINES["lb1"]})
    assert sorted(f.name for f in tls.iterdir()) == [
        "ca.crt", "lb1.crt", "lb1.key", "site.crt", "site.key"]


@pytest.mark.parametrize(("machines", "message"), [
    ({"ca": ["198.19.0.5"]}, r"machine name 'ca' is taken by tls/ca.crt"),
    ({"site": ["198.19.0.5"]}, r"machine name 'site' is taken"),
    ({"web/1": ["198.19.0.5"]}, r"machine name 'web/1' cannot name a certificate file"),
    ({"web1": ["web one"]}, r"machine web1: 'web one' is neither an IP address nor a DNS name"),
    ({"web1": ["*.example.com"]}, r"machine web1: '\*.example.com' is neither an IP address"),
])
def test_unusable_machines_are_refused(secrets, machines, message):
    with pytest.raises(HastackError, match=message):
        make(secrets, machines=machines)
    assert not secrets.exists()


def test_unusable_site_name_is_refused(secrets):
    with pytest.raises(HastackError, match=r"site name 'foo bar' is not a DNS name"):
        make(secrets, aliases=["foo bar"])
    assert not secrets.exists()


# ---- bring your own site certificate ---------------------------------------------------------

class PublicCA:
    """Stands in for an ACME CA: a root and an intermediate that issues leaves."""

    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._ca("Test Root", self.root_key, None, None)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._ca("Test Intermediate", self.key, self.root, self.root_key)

    @staticmethod
    def _ca(name, k, issuer, issuer_key):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        return (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(issuer.subject if issuer else subject)
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(T0 - timedelta(days=1000))
                .not_valid_after(T0 + timedelta(days=3000))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(issuer_key or k, hashes.SHA256()))

    def issue(self, tmp_path: Path, names: list[str], *, start=T0 - timedelta(days=10),
              days=90, leaf_key=None, order=None) -> tuple[Path, Path]:
        leaf_key = leaf_key or ec.generate_private_key(ec.SECP256R1())
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.cert.subject).public_key(leaf_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        certs = [leaf, self.cert] if order is None else order(leaf, self.cert)
        cert_file, key_file = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
        cert_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                       for c in certs))
        key_file.write_bytes(leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return cert_file, key_file


@pytest.fixture
def public_ca() -> PublicCA:
    return PublicCA()


def test_own_certificate_is_copied(secrets, tmp_path, public_ca):
    cert_file, key_file = public_ca.issue(tmp_path, ["www.foobar.com", "foobar.com"])
    tls = make(secrets, site_cert=cert_file, site_key=key_file)
    assert (tls / "site.crt").read_bytes() == cert_file.read_bytes()
    assert (tls / "site.key").read_bytes() == key_file.read_bytes()
    assert mode(tls / "site.key") == 0o600
    cert(tls / "web1.crt").verify_directly_issued_by(cert(tls / "ca.crt"))  # ours, still
    before = snapshot(secrets)
    make(secrets, site_cert=cert_file, site_key=key_file)
    assert snapshot(secrets) == before
    make(secrets)  # back to our own CA: the site gets one of ours again
    chain(tls / "site.crt")[0].verify_directly_issued_by(cert(tls / "ca.crt"))


@pytest.mark.parametrize("names", [["*.foobar.com", "foobar.com"],
                                   ["FOOBAR.com", "WWW.foobar.com"]])
def test_own_certificate_wildcards_and_case(secrets, tmp_path, public_ca, names):
    cert_file, key_file = public_ca.issue(tmp_path, names)
    make(secrets, site_cert=cert_file, site_key=key_file)


def test_own_rsa_certificate(secrets, tmp_path, public_ca):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert_file, key_file = public_ca.issue(tmp_path, ["www.foobar.com", "foobar.com"],
                                          leaf_key=rsa_key)
    make(secrets, site_cert=cert_file, site_key=key_file)


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not PEM\n")


def _other_key(path: Path) -> None:
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def _encrypted(path: Path) -> None:
    k = serialization.load_pem_private_key(path.read_bytes(), password=None)
    path.write_bytes(k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))


REFUSALS = [
    # (names on the certificate, issue options, which file to spoil and how, file named, match)
    (["*.foobar.com"], {}, None, "cert",
     r"does not cover foobar.com \(it names \*.foobar.com\); get one for www.foobar.com, "
     r"foobar.com"),
    (["www.example.com"], {}, None, "cert",
     r"does not cover www.foobar.com, foobar.com \(it names www.example.com\)"),
    (["*.com"], {}, None, "cert", r"does not cover www.foobar.com"),
    (["www.foobar.com", "foobar.com"], {"start": T0 - timedelta(days=100)}, None, "cert",
     r"expired on 2024-12-22 00:00 UTC; renew it"),
    (["www.foobar.com", "foobar.com"], {"start": T0 + timedelta(days=2)}, None, "cert",
     r"not valid before 2025-01-03 00:00 UTC"),
    (["www.foobar.com", "foobar.com"], {}, ("key", _other_key), "key",
     r"does not match the certificate in .*fullchain.pem"),
    (["www.foobar.com", "foobar.com"], {}, ("key", _encrypted), "key", r"encrypted"),
    (["www.foobar.com", "foobar.com"], {}, ("cert", _garbage), "cert",
     r"not a PEM certificate"),
    (["www.foobar.com", "foobar.com"], {}, ("key", _garbage), "key", r"not a PEM private key"),
    (["www.foobar.com", "foobar.com"], {}, ("cert", Path.unlink), "cert",
     r"cannot read the site's certificate \(No such file or directory\); check "
     r"hastack_site_cert_file"),
    (["www.foobar.com", "foobar.com"], {"order": lambda leaf, ca: [leaf, ca, ca]}, None,
     "cert", r"certificate 3 did not issue certificate 2; order the file leaf first"),
]


@pytest.mark.parametrize(("names", "options", "spoil", "named", "message"), REFUSALS)
@pytest.mark.parametrize("fresh", [True, False])
def test_own_certificate_refused(secrets, tmp_path, public_ca, names, options, spoil, named,
                                 message, fresh):
    """One line naming the file; nothing written (a fresh environment or an existing one)."""
    if not fresh:
        make(secrets)
    before = snapshot(secrets) if secrets.exists() else None
    files = dict(zip(("cert", "key"), public_ca.issue(tmp_path, names, **options), strict=True))
    if spoil:
        spoil[1](files[spoil[0]])
    with pytest.raises(HastackError, match=message) as err:
        make(secrets, site_cert=files["cert"], site_key=files["key"])
    text = str(err.value)
    assert text.startswith(f"{files[named]}: ") and "\n" not in text
    assert "PRIVATE KEY" not in text
    assert (snapshot(secrets) if secrets.exists() else None) == before


def test_own_certificate_needs_both_files(secrets, tmp_path, public_ca):
    cert_file, _ = public_ca.issue(tmp_path, ["www.foobar.com", "foobar.com"])
    with pytest.raises(HastackError, match="give both"):
        make(secrets, site_cert=cert_file)
    assert not secrets.exists()


def test_check_site_pair_returns_what_it_checked(tmp_path, public_ca):
    cert_file, key_file = public_ca.issue(tmp_path, ["www.foobar.com"])
    assert pki.check_site_pair(cert_file, key_file, ["www.foobar.com"], T0) == (
        cert_file.read_bytes(), key_file.read_bytes())


# ---- the deploy's view of an inventory -------------------------------------------------------

LISTING = {
    "_meta": {"hostvars": {
        "lb1": {"hastack_domain": DOMAIN, "hastack_aliases": ALIASES,
                "hastack_private_address": "198.19.0.11", "hastack_public_address": "198.18.0.11",
                "hastack_site_cert_file": "certs/fullchain.pem",
                "hastack_site_key_file": "/etc/letsencrypt/live/x/privkey.pem"},
        "web1": {"hastack_domain": DOMAIN, "hastack_aliases": ALIASES,
                 "hastack_private_address": "198.19.0.21",
                 "hastack_site_cert_file": "certs/fullchain.pem",
                 "hastack_site_key_file": "/etc/letsencrypt/live/x/privkey.pem"},
    }},
    "all": {"children": ["ungrouped", "loadbalancer", "web"]},
    "loadbalancer": {"hosts": ["lb1"]},
    "web": {"hosts": ["web1"]},
}


def test_tls_request_from_a_listing(tmp_path):
    inventory = tmp_path / "inv" / "servers.yml"
    request = deploy.tls_request(LISTING, inventory)
    assert request.domain == DOMAIN
    assert request.aliases == ALIASES
    # addresses, then the service name of each tier the host is in
    assert request.machines == {
        "lb1": ["198.19.0.11", "198.18.0.11", "loadbalancer.hastack.internal"],
        "web1": ["198.19.0.21", "web.hastack.internal"]}
    assert request.site_cert == tmp_path / "inv" / "certs" / "fullchain.pem"
    assert request.site_key == Path("/etc/letsencrypt/live/x/privkey.pem")


def test_tls_request_reads_exported_all_vars(tmp_path):
    """`--export` shape: site variables under all.vars, only host variables per host."""
    listing = {"_meta": {"hostvars": {"web1": {"hastack_private_address": "198.19.0.21"}}},
               "all": {"children": ["ungrouped"], "vars": {"hastack_domain": DOMAIN}},
               "ungrouped": {"hosts": ["web1"]}}
    request = deploy.tls_request(listing, tmp_path / "servers.yml")
    assert (request.domain, request.aliases, request.site_cert) == (DOMAIN, [], None)


def _edit(path: list[str], value) -> dict:
    listing = copy.deepcopy(LISTING)
    target = listing
    for step in path[:-1]:
        target = target[step]
    if value is None:
        target.pop(path[-1])
    else:
        target[path[-1]] = value
    return listing


@pytest.mark.parametrize(("listing", "message"), [
    (_edit(["_meta", "hostvars", "web1", "hastack_domain"], "www.other.com"),
     r"hosts disagree on hastack_domain \(lb1: \"www.foobar.com\"; web1: \"www.other.com\"\)"),
    (_edit(["_meta", "hostvars", "web1", "hastack_private_address"], None),
     r"all.hosts.web1.hastack_private_address is missing"),
    (_edit(["_meta", "hostvars", "lb1", "hastack_public_address"], "lb1.example.com"),
     r"all.hosts.lb1.hastack_public_address: 'lb1.example.com' is not an IP address"),
    (_edit(["web", "hosts"], ["web1", "web2"]),
     r"all.hosts.web2.hastack_private_address is missing"),
    ({"_meta": {"hostvars": {}}, "all": {"children": ["ungrouped"]}}, r"lists no hosts"),
])
def test_tls_request_mistakes(tmp_path, listing, message):
    inventory = tmp_path / "servers.yml"
    with pytest.raises(HastackError, match=message) as err:
        deploy.tls_request(listing, inventory)
    assert str(err.value).startswith(f"{inventory}: ")


def test_tls_request_needs_both_files(tmp_path):
    listing = copy.deepcopy(LISTING)
    for hv in listing["_meta"]["hostvars"].values():
        hv.pop("hastack_site_key_file")
    with pytest.raises(HastackError, match=r"set both all.vars.hastack_site_cert_file"):
        deploy.tls_request(listing, tmp_path / "servers.yml")


INVENTORY = """\
all:
  vars:
    hastack_domain: www.foobar.com
    hastack_aliases: [foobar.com]
    hastack_site_cert_file: fullchain.pem
    hastack_site_key_file: privkey.pem
  hosts:
    lb1: {ansible_host: 198.51.100.11, hastack_private_address: 198.51.100.11,
          hastack_public_address: 192.0.2.11}
    web1: {ansible_host: 198.51.100.21, hastack_private_address: 198.51.100.21}
  children:
    loadbalancer: {hosts: {lb1: {}}}
    web: {hosts: {web1: {}}}
"""


def test_real_ansible_inventory(tmp_path, public_ca):
    assert (Path(sys.executable).parent / "ansible-inventory").exists()
    inventory = tmp_path / "servers.yml"
    inventory.write_text(INVENTORY)
    public_ca.issue(tmp_path, ["www.foobar.com", "foobar.com"], start=datetime.now(UTC) -
                    timedelta(days=1))
    request = deploy.tls_request(deploy.list_inventory(inventory), inventory)
    assert request == deploy.TlsRequest(
        DOMAIN, ALIASES, {"lb1": ["198.51.100.11", "192.0.2.11", "loadbalancer.hastack.internal"],
                          "web1": ["198.51.100.21", "web.hastack.internal"]},
        tmp_path / "fullchain.pem", tmp_path / "privkey.pem")
    tls = deploy.ensure_tls(inventory, tmp_path / "secrets")
    assert tls == tmp_path / "secrets" / "tls"
    assert (tls / "site.crt").read_bytes() == (tmp_path / "fullchain.pem").read_bytes()
    assert sorted(f.name for f in tls.iterdir()) == [
        "ca.crt", "lb1.crt", "lb1.key", "site.crt", "site.key", "web1.crt", "web1.key"]


def test_ini_inventory_without_domain(tmp_path):
    inventory = tmp_path / "servers.ini"
    inventory.write_text("[web]\nweb1 hastack_private_address=198.51.100.21\n")
    with pytest.raises(HastackError, match=r"all.vars.hastack_domain is missing"):
        deploy.tls_request(deploy.list_inventory(inventory), inventory)


def test_service_names_follow_child_groups_and_skip_failover_groups(tmp_path):
    listing = {
        "_meta": {"hostvars": {h: {"hastack_domain": DOMAIN, "hastack_private_address": a}
                               for h, a in (("db1", "198.19.0.41"), ("app1", "198.19.0.31"))}},
        "all": {"children": ["ungrouped", "app", "database"]},
        "app": {"hosts": ["app1"]},
        "database": {"children": ["db_primary", "db_replica"]},
        "db_primary": {"hosts": ["db1"]},
    }
    request = deploy.tls_request(listing, tmp_path / "inv.yml")
    assert request.machines == {"app1": ["198.19.0.31", "app.hastack.internal"],
                                "db1": ["198.19.0.41", "database.hastack.internal"]}


def test_machine_certificate_names_its_service(secrets):
    tls = pki.ensure(secrets, DOMAIN, ALIASES, {"app1": ["198.19.0.31", "app.hastack.internal"]})
    cert = x509.load_pem_x509_certificate((tls / "app1.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["app1", "app.hastack.internal"]
