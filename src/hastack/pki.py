"""The environment's certificates: one private CA, the site's certificate, one per machine.

Everything the deploy ships is made here, on the controller, before Ansible connects
anywhere, and lands in one directory (``{secrets_dir}/tls``) the roles copy from. A run
rewrites a file only when its content must change (missing, another CA, another key, other
names, or close to expiry), so a repeated deploy sees no change and reloads no daemon.

Real servers may bring their own site certificate (an ACME client's fullchain and key): it
is checked here, and a deploy with a certificate that does not fit changes nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hastack.errors import HastackError

CA_LIFETIME = timedelta(days=3650)
SITE_LIFETIME = timedelta(days=397)
MACHINE_LIFETIME = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)
BACKDATE = timedelta(minutes=5)  # tolerate clocks a little behind the controller's

SITE = "site"
RESERVED = {"ca", SITE}  # tls/ca.crt and tls/site.crt: no machine may take these names
MACHINE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DNS_NAME_RE = re.compile(r"^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?\.)*"
                         r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$")
CN_MAX = 64  # X.509 upper bound; names are matched on the SANs anyway
# Machines also answer to <group>.SERVICE_DOMAIN for the tiers they belong to: the name a
# caller verifies when it balances over several machines (nginx -> any app server). Groups
# whose members change with failover (db_primary, db_replica) get no such name.
SERVICE_DOMAIN = "hastack.internal"
SERVICE_GROUPS = ("loadbalancer", "web", "app", "database", "monitoring", "dns")

PUBLIC_MODE = 0o644
SECRET_MODE = 0o600
DIR_MODE = 0o700

SERVER = [ExtendedKeyUsageOID.SERVER_AUTH]
SERVER_AND_CLIENT = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]

Name = x509.DNSName | x509.IPAddress


def ca_dir(secrets_dir: Path) -> Path:
    return secrets_dir / "ca"


def ca_cert_path(secrets_dir: Path) -> Path:
    """The CA certificate clients trust (e.g. curl --cacert in the lab)."""
    return ca_dir(secrets_dir) / "ca.crt"


def tls_dir(secrets_dir: Path) -> Path:
    """Everything the deploy ships: ca.crt, site.crt/.key, <machine>.crt/.key."""
    return secrets_dir / "tls"


def ensure(secrets_dir: Path, domain: str, aliases: Sequence[str],
           machines: Mapping[str, Sequence[str]], site_cert: Path | None = None,
           site_key: Path | None = None, now: datetime | None = None) -> Path:
    """Bring ``{secrets_dir}/tls`` up to date; returns that directory.

    ``machines`` maps each machine name to its IP addresses. With ``site_cert`` and
    ``site_key`` (both or neither) the site uses that pair instead of one from our CA.
    Raises HastackError, having written nothing, when an input is unusable.
    """
    now = _utc(now)
    site_names = _unique([domain, *aliases])
    for name in site_names:
        if not DNS_NAME_RE.match(name):
            raise HastackError(f"site name '{name}' is not a DNS name; fix hastack_domain or "
                               "hastack_aliases")
    wanted = {name: _machine_names(name, addresses) for name, addresses in machines.items()}
    byo: tuple[bytes, bytes] | None = None
    if (site_cert is None) != (site_key is None):
        raise HastackError("give both the site's certificate and its key "
                           "(hastack_site_cert_file and hastack_site_key_file), or neither")
    if site_cert is not None and site_key is not None:
        byo = check_site_pair(site_cert, site_key, site_names, now)

    _make_dir(secrets_dir)
    ca_cert, ca_key = _ensure_ca(ca_dir(secrets_dir), domain, now)
    out = tls_dir(secrets_dir)
    _make_dir(out)
    _remove_temp_files(out)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write_if_changed(out / "ca.crt", ca_pem, PUBLIC_MODE)

    issuer = _Issuer(ca_cert, ca_key, now)
    if byo is not None:
        _write_if_changed(out / "site.key", byo[1], SECRET_MODE)
        _write_if_changed(out / "site.crt", byo[0], PUBLIC_MODE)
    else:
        leaf = issuer.ensure_leaf(out, SITE, domain, [x509.DNSName(n) for n in site_names],
                                  SERVER, SITE_LIFETIME)
        _write_if_changed(out / "site.crt", leaf + ca_pem, PUBLIC_MODE)

    for name, names in wanted.items():
        leaf = issuer.ensure_leaf(out, name, name, names, SERVER_AND_CLIENT, MACHINE_LIFETIME)
        _write_if_changed(out / f"{name}.crt", leaf, PUBLIC_MODE)
    _prune(out, set(wanted))
    return out


def ensure_host_service(secrets_dir: Path, domain: str, name: str,
                        addresses: Sequence[str], now: datetime | None = None
                        ) -> tuple[Path, Path]:
    """A server certificate from the environment's CA for a service that runs on the
    controller, not on a machine (the lab's fence device); kept in ``{secrets_dir}/{name}``,
    out of the directory the deploy ships. Returns (certificate, key) paths."""
    now = _utc(now)
    ca_cert, ca_key = _ensure_ca(ca_dir(secrets_dir), domain, now)
    out = secrets_dir / name
    _make_dir(out)
    _remove_temp_files(out)
    leaf = _Issuer(ca_cert, ca_key, now).ensure_leaf(
        out, name, name, [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses],
        SERVER, MACHINE_LIFETIME)
    _write_if_changed(out / f"{name}.crt", leaf, PUBLIC_MODE)
    return out / f"{name}.crt", out / f"{name}.key"


# ---- bring your own --------------------------------------------------------------------------

def check_site_pair(cert: Path, key: Path, names: Sequence[str],
                    now: datetime | None = None) -> tuple[bytes, bytes]:
    """Check a user's certificate (leaf first, then its chain) and key for the site.

    Returns the bytes that were checked (certificate, key), so what is copied is exactly
    what passed; raises HastackError naming the file and what to do otherwise.
    """
    now = _utc(now)
    cert_pem = _read(cert, "certificate", "hastack_site_cert_file")
    key_pem = _read(key, "key", "hastack_site_key_file")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise HastackError(f"{cert}: not a PEM certificate; give the full chain file of your "
                           "certificate (e.g. certbot's fullchain.pem)") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise HastackError(f"{key}: the key is encrypted; give an unencrypted PEM key "
                           "(e.g. certbot's privkey.pem)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise HastackError(f"{key}: not a PEM private key; give the certificate's key "
                           "(e.g. certbot's privkey.pem)") from None
    if not isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise HastackError(f"{key}: a {type(private).__name__} key; web servers need an RSA "
                           "or ECDSA key")

    leaf = chain[0]
    if now < leaf.not_valid_before_utc:
        raise HastackError(f"{cert}: not valid before {_date(leaf.not_valid_before_utc)}; "
                           "use a certificate that is valid now (check this machine's clock)")
    if now >= leaf.not_valid_after_utc:
        raise HastackError(f"{cert}: expired on {_date(leaf.not_valid_after_utc)}; renew it "
                           "(e.g. certbot renew) and deploy again")
    if _spki(leaf.public_key()) != _spki(private.public_key()):
        raise HastackError(f"{key}: does not match the certificate in {cert}; give the key "
                           "that certificate was issued for")
    covered = [n.lower() for n in _dns_names(leaf)]
    missing = [n for n in names if not any(_covers(p, n) for p in covered)]
    if missing:
        named = ", ".join(covered) or "no DNS names"
        raise HastackError(f"{cert}: does not cover {', '.join(missing)} (it names {named}); "
                           f"get one for {', '.join(names)}")
    for i, (child, parent) in enumerate(zip(chain, chain[1:], strict=False)):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise HastackError(f"{cert}: certificate {i + 2} did not issue certificate {i + 1}; "
                               "order the file leaf first, then its issuers "
                               "(e.g. certbot's fullchain.pem)") from None
    return cert_pem, key_pem


def _read(path: Path, what: str, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HastackError(f"{path}: cannot read the site's {what} ({exc.strerror}); "
                           f"check {variable} in the inventory") from None


def _covers(pattern: str, name: str) -> bool:
    """RFC 6125 matching: exact, or a wildcard standing for exactly one leftmost label."""
    name = name.lower()
    if pattern == name:
        return True
    if pattern.startswith("*.") and "." in name:
        label, rest = name.split(".", 1)
        return bool(label) and rest == pattern[2:]
    return False


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)


# ---- our CA and its leaves -------------------------------------------------------------------

def _ensure_ca(directory: Path, domain: str,
               now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the environment's CA, or make it (first run, or within RENEW_BEFORE of expiry)."""
    _make_dir(directory)
    _remove_temp_files(directory)
    cert_file, key_file = directory / "ca.crt", directory / "ca.key"
    if cert_file.exists() and key_file.exists():
        cert, key = _load_ca(cert_file, key_file)
        if cert.not_valid_after_utc - now > RENEW_BEFORE:
            return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([_common_name(f"hastack {domain} CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a run killed in between leaves no certificate, so the next run starts over.
    _write(key_file, _key_pem(key), SECRET_MODE)
    _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    return cert, key


def _load_ca(cert_file: Path,
             key_file: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    fix = f"remove {cert_file.parent} to make a new CA (every certificate is then reissued)"
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        raise HastackError(f"{cert_file}: not a readable PEM certificate; {fix}") from None
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
        raise HastackError(f"{key_file}: not a readable unencrypted PEM key; {fix}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or (
            _spki(key.public_key()) != _spki(cert.public_key())):
        raise HastackError(f"{key_file}: not the key of {cert_file}; {fix}")
    return cert, key


@dataclass
class _Issuer:
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    now: datetime

    def ensure_leaf(self, directory: Path, stem: str, common_name: str, names: list[Name],
                    usages: list[x509.ObjectIdentifier], lifetime: timedelta) -> bytes:
        """The PEM of a valid leaf for these names: the current one if it still fits, else
        a new one (its key written here, its certificate left to the caller)."""
        key_file = directory / f"{stem}.key"
        current = self._current(directory / f"{stem}.crt", key_file, names)
        if current is not None:
            return current
        key = ec.generate_private_key(ec.SECP256R1())
        not_after = min(self.now + lifetime, self.ca_cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([_common_name(common_name)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        _write(key_file, _key_pem(key), SECRET_MODE)
        return cert.public_bytes(serialization.Encoding.PEM)

    def _current(self, cert_file: Path, key_file: Path, names: list[Name]) -> bytes | None:
        """The existing leaf's PEM if it can stay, None if it must be (re)issued."""
        try:
            certs = x509.load_pem_x509_certificates(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
            return None  # missing or damaged: ours to replace
        leaf = certs[0]
        try:
            leaf.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return None
        fits = (
            isinstance(key, ec.EllipticCurvePrivateKey)
            and isinstance(key.curve, ec.SECP256R1)
            and _spki(key.public_key()) == _spki(leaf.public_key())
            and _san_set(leaf) == {_canonical(n) for n in names}
            and leaf.not_valid_before_utc <= self.now
            and leaf.not_valid_after_utc - self.now > RENEW_BEFORE
        )
        return leaf.public_bytes(serialization.Encoding.PEM) if fits else None


def _machine_names(name: str, addresses: Sequence[str]) -> list[Name]:
    if not MACHINE_NAME_RE.match(name):
        raise HastackError(f"machine name '{name}' cannot name a certificate file; use "
                           "letters, digits, '.', '-' and '_'")
    if name.lower() in RESERVED:
        raise HastackError(f"machine name '{name}' is taken by tls/{name.lower()}.crt; "
                           "rename that host")
    names: list[Name] = [x509.DNSName(name)]
    for address in _unique(list(addresses)):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            if not DNS_NAME_RE.match(address) or address.startswith("*"):
                raise HastackError(f"machine {name}: '{address}' is neither an IP address "
                                   "nor a DNS name") from None
            names.append(x509.DNSName(address))
    return names


def service_name(group: str) -> str:
    """The DNS name every machine of a tier answers to (see SERVICE_GROUPS)."""
    return f"{group.replace('_', '-')}.{SERVICE_DOMAIN}"


def _san_set(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {_canonical(n) for n in san if isinstance(n, x509.DNSName | x509.IPAddress)}


def _canonical(name: Name) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value.lower()}"
    return f"IP:{name.value}"


# ---- files -----------------------------------------------------------------------------------

def _make_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        path.chmod(DIR_MODE)


def _write_if_changed(path: Path, data: bytes, mode: int) -> None:
    """Leave a file that already holds these bytes (and mode) alone: no change to deploy."""
    try:
        same = path.read_bytes() == data and path.stat().st_mode & 0o777 == mode
    except OSError:
        same = False
    if not same:
        _write(path, data, mode)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically replace `path`; the file has its final mode before it holds any byte."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _prune(directory: Path, machines: set[str]) -> None:
    """Remove the certificates and keys of machines that left the inventory."""
    keep = RESERVED | machines
    for f in directory.iterdir():
        if f.suffix in (".crt", ".key") and f.stem not in keep and f.is_file():
            f.unlink()


def _remove_temp_files(directory: Path) -> None:
    """Temporary files (maybe holding a key) of a run killed mid-write."""
    for f in directory.glob(".*"):
        if f.is_file():
            f.unlink()


# ---- small helpers ---------------------------------------------------------------------------

def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _common_name(text: str) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.COMMON_NAME, text[:CN_MAX])


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _date(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")
