#!/usr/bin/python3
"""Memory per idle client connection of a proxy (pgshift, PgBouncer).

Opens N client connections to 127.0.0.1:PORT that complete the startup and
authentication and then stay idle (no query is ever sent), and reads the
proxy's VmRSS before and after:

    idle_clients.py --port P --pid PROXY_PID --clients N [--backends-dsn DSN]

Before measuring, one warm-up connection logs in, runs SELECT 1 and leaves
(so pool structures and, for PgBouncer, the cached server parameters exist
before the baseline). The N connections are opened with libpq's nonblocking
connect (psycopg's AsyncConnection), at most --concurrency at a time.

--backends-dsn is a superuser connection string of the PostgreSQL server
behind the proxy; the client backends of PGUSER there are counted before and
after, so the output shows that idle clients did not take a server
connection.

Prints one JSON object: clients, rss_before_kb, rss_after_kb,
bytes_per_client, backends_before, backends_after, connect_s.
Credentials come from PGUSER / PGPASSWORD / PGDATABASE.
"""

import argparse
import asyncio
import json
import os
import sys
import time

import psycopg


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


async def backends(conn, user):
    """Client backends of `user` on the server behind the proxy (conn: an
    AsyncConnection as superuser there, or None)."""
    if conn is None:
        return None
    cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
                             " AND backend_type = 'client backend'", (user,))
    return (await cur.fetchone())[0]


async def open_all(conninfo, n, concurrency):
    sem = asyncio.Semaphore(concurrency)
    conns = []
    errors = []

    async def one():
        async with sem:
            for attempt in range(5):
                try:
                    conns.append(await psycopg.AsyncConnection.connect(conninfo,
                                                                       autocommit=True))
                    return
                except psycopg.OperationalError as e:
                    if attempt == 4:
                        errors.append(str(e))
                    await asyncio.sleep(0.2 * (attempt + 1))

    await asyncio.gather(*(one() for _ in range(n)))
    return conns, errors


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--backends-dsn", default="")
    args = ap.parse_args()

    conninfo = "host=127.0.0.1 port=%d dbname=%s user=%s password=%s" % (
        args.port, os.environ.get("PGDATABASE", "bench"), os.environ.get("PGUSER", "bench"),
        os.environ.get("PGPASSWORD", ""))

    warm = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    await (await warm.execute("SELECT 1")).fetchall()
    await warm.close()
    await asyncio.sleep(args.settle)

    user = os.environ.get("PGUSER", "bench")
    counter = None
    if args.backends_dsn:
        counter = await psycopg.AsyncConnection.connect(args.backends_dsn, autocommit=True)
    before = rss_kb(args.pid)
    be_before = await backends(counter, user)
    t0 = time.monotonic()
    conns, errors = await open_all(conninfo, args.clients, args.concurrency)
    connect_s = time.monotonic() - t0
    await asyncio.sleep(args.settle)
    after = rss_kb(args.pid)
    be_after = await backends(counter, user)
    if counter is not None:
        await counter.close()
    if errors:
        print("%d of %d connections failed, first: %s" % (len(errors), args.clients, errors[0]),
              file=sys.stderr)
    ok = len(conns)
    # Still all alive and idle? (A closed socket would show here.)
    closed = sum(1 for c in conns if c.closed)
    for c in conns:
        await c.close()
    print(json.dumps({
        "clients": ok,
        "failed": len(errors),
        "closed_before_end": closed,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "bytes_per_client": round((after - before) * 1024 / ok) if ok else None,
        "backends_before": be_before,
        "backends_after": be_after,
        "connect_s": round(connect_s, 1),
    }))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
