"""Load a ruleset into a throwaway network namespace and send real packets through it.

Run by test_firewall.py as `unshare -n python netns_probe.py SPEC.json`: this process is the
machine (namespace A, the ruleset loaded, its addresses on veth v0); a second namespace B,
made the same way, holds every other address (on v1, the other end). Then:

- inbound probes: B connects from a source address to the machine. Reached = the machine's
  kernel answered (RST / port unreachable: nothing listens); blocked = silence (dropped).
- outbound probes: the machine connects to B. Reached = B's RST; blocked = refused locally.

The spec's `listen` ([address, port] pairs) opens TCP listeners on the machine first: rules
with the socket match accept only while something listens.

Nothing here can touch the host's ruleset: it refuses to run unless its network namespace
differs from the one the caller ran in (HASTACK_OUTER_NETNS).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = 0.5
RETRY_TIMEOUT = 3.0  # a loaded machine may answer late: probes that should pass get this


def sh(*argv: str, ns: int | None = None) -> None:
    prefix = ["nsenter", "-t", str(ns), "-n"] if ns else []
    subprocess.run([*prefix, *argv], check=True, capture_output=True)


def connect(src: str | None, dst: str, proto: str, port: int,
            timeout: float = TIMEOUT) -> str:
    """'reached' (the other end answered) or 'blocked' (dropped or refused on the way)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, kind)
    s.settimeout(timeout)
    try:
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
        if proto == "udp":
            s.send(b"probe")
            s.recv(16)
        return "reached"  # a listener: also reached
    except ConnectionRefusedError:
        return "reached"
    except (TimeoutError, OSError):
        return "blocked"
    finally:
        s.close()


def run(probes: list[dict], peer: int, timeout: float) -> dict[str, str]:
    """Inbound probes run in B (a helper process there), outbound ones here."""
    results: dict[str, str] = {}
    inbound = [p for p in probes if p["direction"] == "in"]
    if inbound:
        here = os.path.dirname(os.path.abspath(__file__))
        code = (f"import json, sys; sys.path.insert(0, {here!r}); "
                "from netns_probe import connect; "
                "from concurrent.futures import ThreadPoolExecutor; ps = json.load(sys.stdin); "
                "print(json.dumps(list(ThreadPoolExecutor(64).map(lambda p: connect("
                f"p['src'], p['dst'], p['proto'], p['port'], {timeout}), ps))))")
        out = subprocess.run(["nsenter", "-t", str(peer), "-n", sys.executable, "-c", code],
                             input=json.dumps(inbound), capture_output=True, text=True,
                             check=True).stdout
        results.update(zip((p["id"] for p in inbound), json.loads(out), strict=True))
    outbound = [p for p in probes if p["direction"] == "out"]
    with ThreadPoolExecutor(64) as pool:
        found = pool.map(lambda p: connect(None, p["dst"], p["proto"], p["port"], timeout),
                         outbound)
        results.update(zip((p["id"] for p in outbound), found, strict=True))
    return results


def main(spec_path: str) -> int:
    outer = os.environ.get("HASTACK_OUTER_NETNS", "")
    if not outer or os.readlink("/proc/self/ns/net") == outer:
        print("refusing: not in a new network namespace", file=sys.stderr)
        return 99
    with open(spec_path) as f:
        spec = json.load(f)
    sh("nft", "-f", spec["ruleset"])
    sh("ip", "link", "set", "lo", "up")
    peer = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:
        for _ in range(200):  # until the child is in its own namespace
            if os.readlink(f"/proc/{peer.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                break
            time.sleep(0.01)
        sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        sh("ip", "link", "set", "v1", "netns", str(peer.pid))
        for addr in spec["machine"]:
            sh("ip", "addr", "add", addr, "dev", "v0")
        sh("ip", "link", "set", "v0", "up")
        sh("ip", "link", "set", "lo", "up", ns=peer.pid)
        for addr in spec["others"]:
            sh("ip", "addr", "add", addr, "dev", "v1", ns=peer.pid)
        sh("ip", "link", "set", "v1", "up", ns=peer.pid)
        listeners = []
        for address, port in spec.get("listen", []):
            server = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((address, port))
            server.listen(256)
            listeners.append(server)
        results = run(spec["probes"], peer.pid, TIMEOUT)
        # silence where an answer was expected: ask again, patiently (a loaded test machine)
        late = [p for p in spec["probes"] if p.get("want") and results[p["id"]] == "blocked"]
        results.update(run(late, peer.pid, RETRY_TIMEOUT))
        ruleset = subprocess.run(["nft", "-j", "list", "ruleset"], check=True,
                                 capture_output=True, text=True).stdout
        print(json.dumps({"results": results, "ruleset": json.loads(ruleset)}))
    finally:
        peer.kill()
        peer.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
