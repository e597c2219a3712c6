"""The edge defends itself and every hop is encrypted, observed from outside and from the
servers' own status.

Abuse tests need clients other than the host's own public address (the lab's load generator,
which the edge trusts): they connect from extra addresses put on the public bridge.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hastack import siteclient

from .conftest import deploy_vars, deploy_with, poll, run

# In the lab's public net, used by no machine: a noisy client, a scanner, a bystander.
UNTRUSTED = ("198.18.0.250", "198.18.0.251", "198.18.0.252")


@pytest.fixture(scope="module")
def clients(lab):
    """Outside clients (addresses on hs-pub the edge does not trust)."""
    for address in UNTRUSTED:
        subprocess.run(["ip", "addr", "replace", f"{address}/32", "dev", "hs-pub"], check=True)
    yield UNTRUSTED
    for address in UNTRUSTED:
        run("lb", "unban", address, check=False)
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "hs-pub"], check=False)


def outside(lab, vip: str, address: str, **kw) -> httpx.Client:
    return siteclient.client(vip, lab.domain, lab.ca, local_address=address, **kw)


def test_plain_http_redirects_to_https_with_path_and_query(lab):
    for vip in lab.vips:
        with siteclient.client(vip, lab.domain, None, scheme="http") as c:
            r = c.get("/messages/7?page=2&q=a%20b")
        assert r.status_code == 301
        assert r.headers["location"] == f"https://{lab.domain}/messages/7?page=2&q=a%20b"


def test_certificate_verifies_for_every_name_on_every_vip(lab):
    names = [lab.domain, *lab.status["site"]["aliases"]]
    for vip in lab.vips:
        for name in names:
            with siteclient.client(vip, name, lab.ca) as c:
                r = c.get("/healthz")
            assert r.status_code == 200, (vip, name)
    # a name the certificate does not cover fails verification
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"), \
            siteclient.client(lab.vips[0], "evil.example", lab.ca) as c:
        c.get("/healthz")


def _handshake(vip: str, domain: str, version: str) -> str:
    """openssl s_client with one protocol version; old versions need security level 0 on
    the client side, so a refusal can only come from the server."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"{vip}:443", "-servername", domain, f"-{version}",
         "-cipher", "DEFAULT@SECLEVEL=0", "-alpn", "h2,http/1.1"],
        input="", capture_output=True, text=True, timeout=10)
    return result.stdout + result.stderr


@pytest.mark.parametrize("version", ["tls1", "tls1_1"])
def test_old_tls_versions_are_refused_by_the_server(lab, version):
    for vip in lab.vips:
        out = _handshake(vip, lab.domain, version)
        assert "alert protocol version" in out, out[-500:]


def test_tls12_and_13_with_h2_ecdhe_aead_only(lab):
    for vip in lab.vips:
        out12 = _handshake(vip, lab.domain, "tls1_2")
        assert "Protocol  : TLSv1.2" in out12
        assert "TLS session ticket:" not in out12  # no-tls-tickets: nothing to rotate
        cipher = out12.split("Cipher is ")[1].split()[0]
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
        out13 = _handshake(vip, lab.domain, "tls1_3")
        assert "TLSv1.3" in out13 and "ALPN protocol: h2" in out13
        assert "Server public key is 256 bit" in out13  # ECDSA P-256


@pytest.mark.parametrize("vip", [0, 1], ids=["vip-a", "vip-b"])
def test_security_headers_on_pages_static_files_and_errors(lab, vip):
    with outside(lab, lab.vips[vip], None) as c:
        for path in ("/", "/static/style.css", "/no-such-page"):
            r = c.get(path)
            assert r.headers["strict-transport-security"].startswith("max-age=63072000"), path
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert r.headers["x-frame-options"] == "DENY", path
            assert "server" not in r.headers, path
        page = c.get("/")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_internal_headers_and_endpoints_stay_inside(lab, clients):
    with outside(lab, lab.vips[0], clients[0]) as c:
        r = c.get("/api/messages?limit=1")
        assert r.status_code == 200
        assert "x-db" not in r.headers and "x-db-role" not in r.headers
        assert r.headers["x-served-by"].count("/") == 1  # web/app stays: round-robin is visible
        # Also spelled so that only a server that decodes or merges the path sees /metrics:
        # refused, or redirected to a spelling that is refused.
        for path in ("/metrics", "/readyz", "/metrics/x", "/%6detrics", "/%72eadyz",
                     "//metrics", "/%2Fmetrics"):
            r = c.get(c.base_url.copy_with(raw_path=path.encode()))  # sent as spelled
            if r.is_redirect:
                r = c.get(urlsplit(r.headers["location"]).path)
            assert r.status_code == 404, (path, r.status_code, r.text[:200])
        spoofed = c.get("/", headers={"X-Forwarded-Proto": "http", "X-Forwarded-For": "1.2.3.4"})
        assert spoofed.status_code == 200
    with outside(lab, lab.vips[0], None) as trusted:  # the operator's own address
        assert trusted.get("/api/messages?limit=1").headers["x-db-role"] in ("primary", "replica")


def test_the_sites_database_user_reads_and_writes_rows_only(lab):
    """Serving requests needs DML; schema changes are the migrations user's, at deploy."""
    primary = lab.names("db-primary")[0]

    def privileges(user: str) -> set[str]:
        hosts = lab.ssh(primary, f"mariadb -B -N -e \"SELECT host FROM mysql.user WHERE "
                                 f"user = '{user}'\"").split()
        assert hosts, user
        found: set[str] = set()
        for host in hosts:
            for grant in lab.ssh(primary, f"mariadb -B -N -e \"SHOW GRANTS FOR "
                                          f"'{user}'@'{host}'\"").splitlines():
                what = grant.split(" ON ")[0].removeprefix("GRANT ")
                found |= {p.strip() for p in what.split(",")}
        return found

    assert privileges("site") <= {"SELECT", "INSERT", "UPDATE", "DELETE", "USAGE",
                                  "SLAVE MONITOR"}, privileges("site")
    assert {"CREATE", "ALTER"} <= privileges("migrate")


def test_database_connections_and_replication_are_encrypted(lab):
    primary, replica = lab.names("db-primary")[0], lab.names("db-replica")[0]
    users = lab.ssh(primary, "mariadb -B -N -e \"SELECT user, ssl_type FROM mysql.user "
                             "WHERE host <> 'localhost'\"")
    rows = [line.split("\t") for line in users.splitlines()]
    assert {u for u, _ in rows} >= {"site", "migrate", "repl"}
    assert all(t == "ANY" for _, t in rows), rows
    variables = lab.ssh(primary, "mariadb -B -N -e \"SELECT @@require_secure_transport, "
                                 "@@have_ssl\"").split()
    assert variables == ["1", "YES"]
    # the site's own traffic made TLS sessions on the primary and on the replica
    with lab.client(lab.vips[0]) as c:
        assert c.post("/messages", json={"author": "tls", "body": str(uuid.uuid4())}
                      ).status_code == 201
    for node in (primary, replica):
        accepts = lab.ssh(node, "mariadb -B -N -e \"SHOW GLOBAL STATUS LIKE 'Ssl_accepts'\"")
        assert int(accepts.split()[1]) > 0, node
    status = lab.ssh(replica, "mariadb -e 'SHOW SLAVE STATUS\\G'")
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in
                                                   status.splitlines()[1:])}
    assert fields["Master_SSL_Allowed"] == "Yes"
    assert fields["Master_SSL_Verify_Server_Cert"] == "Yes"
    assert fields["Slave_IO_Running"] == "Yes"
    # the site's own credentials work over TLS and are refused without it
    app, address = lab.names("app")[0], lab.machine(primary)["addresses"][0]
    probe = ("set -a; . /etc/foobar/site.env; python3 -c \"import os, pymysql; pymysql.connect("
             f"host='{address}', user='site', password=os.environ['FOOBAR_DB_PASSWORD'], "
             "connect_timeout=2, ssl={TLS}); print('connected')\" 2>&1 | tail -1")
    with_tls = lab.ssh(app, probe.replace("{TLS}", "{'ca': os.environ['FOOBAR_DB_TLS_CA']}"))
    assert with_tls.strip() == "connected", with_tls
    without = lab.ssh(app, probe.replace("{TLS}", "None"), check=False)
    assert "1045" in without, without


def test_a_client_over_the_rate_limit_gets_429_while_others_are_served(lab, clients):
    noisy, _, quiet = clients
    codes: Counter[int] = Counter()
    retry_after = None
    with outside(lab, lab.vips[0], noisy, timeout=5) as c:
        deadline = time.monotonic() + 20
        while codes[429] < 5 and time.monotonic() < deadline:
            r = c.get("/healthz")
            codes[r.status_code] += 1
            if r.status_code == 429:
                retry_after = r.headers.get("retry-after")
        with outside(lab, lab.vips[0], quiet) as other:
            assert other.get("/healthz").status_code == 200
    assert codes[429] >= 5, codes
    assert codes[200] >= 300, codes  # the limit is 400 per 10 s, not lower
    assert retry_after == "10"


def test_a_scanner_banned_through_one_vip_is_refused_through_both_until_unbanned(lab, clients):
    scanner = clients[1]
    with outside(lab, lab.vips[0], scanner, timeout=2) as c:
        for i in range(40):
            try:
                c.get(f"/wp-login-{i}.php")
            except httpx.HTTPError:
                break  # banned mid-scan: the edge refuses the connection

    for vip in lab.vips:
        poll(lambda v=vip: _refused(lab, v, scanner), 15, f"the scanner to be refused on {vip}")
    listed = run("lb", "bans").stdout
    assert listed.count(scanner) == len(lab.names("loadbalancer")), listed
    with outside(lab, lab.vips[0], clients[2]) as bystander:
        assert bystander.get("/healthz").status_code == 200

    run("lb", "unban", scanner)
    for vip in lab.vips:
        def served(v=vip) -> bool:
            with outside(lab, v, scanner, timeout=2) as c:
                return c.get("/healthz").status_code == 200
        poll(served, 10, f"the unbanned client to be served on {vip}")


def test_a_ban_ends_by_itself_when_its_time_is_up(lab, clients, tmp_path):
    """Without `hastack lb unban`: the shared table's entry expires and fail2ban's ban with
    it (a short ban time for the test, deployed to the LBs only; the lab's own is put back
    after)."""
    scanner = clients[1]
    seconds = 20
    deploy_vars(lab, tmp_path, limit="loadbalancer", loadbalancer_ban_seconds=seconds)
    try:
        with outside(lab, lab.vips[0], scanner, timeout=2) as c:
            for i in range(40):
                try:
                    c.get(f"/xmlrpc-{i}.php")
                except httpx.HTTPError:
                    break
        poll(lambda: _refused(lab, lab.vips[1], scanner), 15, "the scanner refused on VIP-B")
        banned_at = time.monotonic()
        for vip in lab.vips:
            poll(lambda v=vip: not _refused(lab, v, scanner), seconds + 30,
                 f"the ban to end by itself on {vip}")
        assert time.monotonic() - banned_at >= seconds - 5  # it was a ban, not a blip
    finally:
        run("lb", "unban", scanner, check=False)
        deploy_vars(lab, tmp_path, limit="loadbalancer")


def _refused(lab, vip: str, client: str) -> bool:
    try:
        with outside(lab, vip, client, timeout=2) as c:
            return c.get("/healthz").status_code != 200
    except httpx.HTTPError:
        return True


# ---- bad input: refused in one line before anything is applied ---------------------------

def _self_signed(directory, names, days=30, start_days=-1, key=None):
    """A certificate (and its key) for names, valid from start_days to start_days + days."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + timedelta(days=start_days))
            .not_valid_after(now + timedelta(days=start_days + days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "privkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return directory / "fullchain.pem", directory / "privkey.pem"


def _served_certificate(lab) -> bytes:
    with socket.create_connection((lab.vips[0], 443), timeout=5) as raw:
        context = ssl.create_default_context(cafile=lab.ca)
        with context.wrap_socket(raw, server_hostname=lab.domain) as tls:
            return tls.getpeercert(binary_form=True)


@pytest.mark.parametrize("case", ["wrong name", "expired", "key of another certificate"])
def test_a_bad_site_certificate_is_refused_and_the_site_keeps_serving(lab, tmp_path, case):
    before = _served_certificate(lab)
    names = [lab.domain, *lab.status["site"]["aliases"]]
    if case == "wrong name":
        cert, key = _self_signed(tmp_path / "c", ["www.example.org"])
        expected = f"{cert}: does not cover {lab.domain}"
    elif case == "expired":
        cert, key = _self_signed(tmp_path / "c", names, days=10, start_days=-20)
        expected = f"{cert}: expired on "
    else:
        cert, _ = _self_signed(tmp_path / "c", names)
        _, key = _self_signed(tmp_path / "other", names)
        expected = f"{key}: does not match the certificate in {cert}"
    line, result = deploy_with(lab, tmp_path, hastack_site_cert_file=cert,
                               hastack_site_key_file=key)
    assert expected in line, line
    assert "▸" not in result.stdout  # refused before Ansible ran a single task
    assert _served_certificate(lab) == before
    with lab.client(lab.vips[0]) as c:
        assert c.get("/").status_code == 200


def test_oversized_and_slow_requests_are_cut_off_while_others_are_served(lab, clients):
    slow, _, other = clients
    vip = lab.vips[0]
    with outside(lab, vip, other) as c:
        big = c.post("/messages", content=b"x" * 70_000,
                     headers={"Content-Type": "application/json"})
        assert big.status_code == 413
        assert c.get("/", headers={"X-Big": "y" * 20_000}).status_code in (400, 431)
    # slowloris: many connections that never finish their request head
    held = []
    for _ in range(200):
        s = socket.create_connection((vip, 80), timeout=10, source_address=(slow, 0))
        s.sendall(b"GET / HTTP/1.1\r\nHost: " + lab.domain.encode() + b"\r\n")
        held.append(s)
    started = time.monotonic()
    latencies = []
    with outside(lab, vip, other, timeout=5) as c:
        while time.monotonic() - started < 4:
            t0 = time.monotonic()
            assert c.get("/healthz").status_code == 200
            latencies.append(time.monotonic() - t0)
            for s in held[:20]:
                s.sendall(b"X-Slow: 1\r\n")  # dribbling, never done
            time.sleep(0.2)
    assert max(latencies) < 1.0, max(latencies)

    def cut_off(s: socket.socket) -> bool:
        try:
            data = s.recv(4096)
        except OSError:
            return True
        return data == b"" or data.startswith(b"HTTP/1.1 408")

    for s in held:
        s.settimeout(max(0.1, started + 8 - time.monotonic()))
    closed = sum(cut_off(s) for s in held)
    for s in held:
        s.close()
    assert closed == len(held)  # the edge's 5 s request-head limit


def _private(lab, name: str) -> str:
    return next(a for a in lab.machine(name)["addresses"] if a.startswith("198.19."))


def _serial_served(lab, client: str, server: str, port: int, starttls: str = "") -> str:
    """The serial of the certificate `server` shows on `port`, as `client` sees it (the
    firewall lets only the tier in front through)."""
    option = f"-starttls {starttls}" if starttls else ""
    out = lab.ssh(client, f"openssl s_client -connect {_private(lab, server)}:{port} {option} "
                          "</dev/null 2>/dev/null | openssl x509 -noout -serial", check=False)
    return out.strip().removeprefix("serial=")


def test_renewed_machine_certificates_are_served_after_the_next_deploy(lab):
    """A machine certificate renewed on the controller reaches the daemon that serves it
    (nginx, gunicorn, MariaDB) at the next deploy, without a restart of the tier."""
    hops = {"web1": ("lb1", 443, ""), "app1": ("web1", 8000, ""),
            "db1": ("app1", 3306, "mysql")}
    tls_dir = Path(lab.ca).parent.parent / "tls"
    before = {name: _serial_served(lab, *hop[:1], name, *hop[1:]) for name, hop in hops.items()}
    assert all(before.values()), before
    for name in hops:  # gone: the next deploy issues a new one (pki.ensure)
        (tls_dir / f"{name}.crt").unlink()
    run("up", "--force-deploy")
    for name, hop in hops.items():
        issued = x509.load_pem_x509_certificate((tls_dir / f"{name}.crt").read_bytes())
        expected = f"{issued.serial_number:X}"
        assert expected != before[name]
        poll(lambda name=name, hop=hop, expected=expected:
             _serial_served(lab, hop[0], name, *hop[1:]).lstrip("0") == expected.lstrip("0"),
             30, f"{name} serving its new certificate")
    # and reloading them wrote nothing of its own on any DB node (a FLUSH in a replica's
    # binary log is an errant transaction that stops replication after a switchover)
    for node in lab.names("db-primary") + lab.names("db-replica"):
        binlog = lab.ssh(node, "mariadb-binlog /var/lib/mysql/*-bin.0* 2>/dev/null | "
                               "grep -ci flush || true")
        assert binlog.strip() == "0", node
