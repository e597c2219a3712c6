"""Runs ON an app machine (python3 + PyMySQL from Debian), with the site's own credentials.

Closed-loop INSERTs into the primary from a few threads (one connection each) for a fixed
time: commits per second and each commit's latency (p50/p99), as the site's writes pay it.
Prints JSON. Bounded by --seconds; stops by itself.
"""

import argparse
import json
import os
import threading
import time

import pymysql


def connect(hostport: str) -> pymysql.connections.Connection:
    host, _, port = hostport.partition(":")
    ca = os.environ.get("FOOBAR_DB_TLS_CA")  # the servers require TLS; verify like the site
    return pymysql.connect(host=host, port=int(port or 3306), user=os.environ["FOOBAR_DB_USER"],
                           password=os.environ["FOOBAR_DB_PASSWORD"],
                           database=os.environ["FOOBAR_DB_NAME"], autocommit=True,
                           ssl={"ca": ca} if ca else None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--primary", required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    latencies: list[float] = []
    lock = threading.Lock()
    until = time.monotonic() + args.seconds

    def writer(n: int) -> None:
        mine = []
        with connect(args.primary).cursor() as cur:
            while time.monotonic() < until:
                started = time.monotonic()
                cur.execute("INSERT INTO messages (author, body) VALUES ('bench', %s)",
                            (f"commit cost {n}",))
                mine.append(time.monotonic() - started)
        with lock:
            latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000,
                     2)

    print(json.dumps({"commits": len(latencies),
                      "commits_per_s": round(len(latencies) / elapsed, 1),
                      "p50_ms": pct(50), "p99_ms": pct(99)}))


if __name__ == "__main__":
    main()
