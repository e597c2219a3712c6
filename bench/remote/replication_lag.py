"""Runs ON an app machine (python3 + PyMySQL from Debian), with the site's own credentials.

Writes at a fixed rate to the primary; for a sample of the writes, a second thread waits on
the replica for that write's GTID (MASTER_GTID_WAIT) and records how long it took to arrive.
Prints JSON. Bounded by --seconds; stops by itself.
"""

import argparse
import json
import os
import queue
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
    parser.add_argument("--replica", required=True)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--sample-every", type=int, default=5)
    args = parser.parse_args()

    samples: queue.Queue = queue.Queue()
    lags: list[float] = []
    timeouts = 0

    def waiter() -> None:
        nonlocal timeouts
        replica = connect(args.replica)
        with replica.cursor() as cur:
            while True:
                item = samples.get()
                if item is None:
                    return
                gtid, committed = item
                cur.execute("SELECT MASTER_GTID_WAIT(%s, 2)", (gtid,))
                if cur.fetchone()[0] == 0:
                    lags.append(time.monotonic() - committed)
                else:
                    timeouts += 1

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    primary = connect(args.primary)
    sent = 0
    started = time.monotonic()
    with primary.cursor() as cur:
        while True:
            due = started + sent / args.rate
            if due - started >= args.seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            cur.execute("INSERT INTO messages (author, body) VALUES ('bench', %s)",
                        (f"lag sample {sent}",))
            committed = time.monotonic()
            if sent % args.sample_every == 0:
                cur.execute("SELECT @@last_gtid")
                samples.put((cur.fetchone()[0], committed))
            sent += 1
    elapsed = time.monotonic() - started
    for _ in threads:
        samples.put(None)
    for t in threads:
        t.join()
    lags.sort()

    def pct(p: float) -> float:
        return round(lags[min(len(lags) - 1, int(p / 100 * len(lags)))] * 1000, 2) if lags else -1

    print(json.dumps({"writes": sent, "writes_per_s": round(sent / elapsed, 1),
                      "lag_samples": len(lags), "lag_timeouts": timeouts,
                      "lag_p50_ms": pct(50), "lag_p99_ms": pct(99), "lag_max_ms": pct(100)}))


if __name__ == "__main__":
    main()
