"""Reaching the site the way an outside client does: HTTPS to a VIP, the domain in SNI and
Host, the certificate verified against the environment's CA.

The lab has no DNS on the host, so requests go to a VIP's address while naming the domain
(httpx's `sni_hostname` extension); verification then checks the certificate against the
domain, exactly as a browser resolving the name would.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx


def tls_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """Verifying context: the environment's CA if given, else the system's trust store."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def url(vip: str, path: str = "/", scheme: str = "https") -> str:
    return f"{scheme}://{vip}{path}"


def extensions(domain: str) -> dict[str, Any]:
    """Per-request httpx extensions: present the domain, not the VIP, in the TLS handshake."""
    return {"sni_hostname": domain}


def client(vip: str, domain: str, ca_file: str | Path | None,
           local_address: str | None = None, scheme: str = "https", **kw: Any) -> httpx.Client:
    """An httpx client for one VIP; every request carries the domain as Host and SNI.

    local_address: the client address to connect from (one of the host's own addresses).
    """
    context = tls_context(ca_file)
    transport = httpx.HTTPTransport(verify=context, local_address=local_address)
    return _SniClient(domain, base_url=url(vip, "", scheme), headers={"Host": domain},
                      transport=transport, trust_env=False,
                      timeout=kw.pop("timeout", 5.0), **kw)


def get(vip: str, domain: str, path: str, ca_file: str | Path | None,
        timeout: float = 2.0) -> httpx.Response:
    with client(vip, domain, ca_file, timeout=timeout) as c:
        return c.get(path)


class _SniClient(httpx.Client):
    def __init__(self, domain: str, **kw: Any):
        super().__init__(**kw)
        self._domain = domain

    def send(self, request: httpx.Request, **kw: Any) -> httpx.Response:
        if request.url.scheme == "https":
            request.extensions.setdefault("sni_hostname", self._domain)
        return super().send(request, **kw)
