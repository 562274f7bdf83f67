#!/usr/bin/python3
"""The application of `make demo`: an event-store workload through pgshift,
and the check that nothing it was told got lost.

  demo-workload.py seed    --dsn DSN --tenant T --events N --out FILE
  demo-workload.py run     --dsn DSN --tenants T1,T2,... --out FILE [--workers-per-tenant K]
                           [--rate TX_PER_S_PER_WORKER]
  demo-workload.py verify  --source DSN --target DSN --results FILE --seeded FILE
                           [--moved T]...

`run` appends events with the append transaction of DESIGN.md (BEGIN;
version probe; INSERT ... RETURNING global_position; COMMIT) and optimistic
concurrency (the workers of one tenant share aggregates, so they really do
conflict), reads streams back, and on SIGTERM writes every event_id whose
COMMIT was acknowledged to FILE. Each connection says which tenant it works
for with `SET pgshift.tenant` (DESIGN.md, Routing, rule 2), a setting
PostgreSQL itself accepts too.

`verify` connects straight to the stores (not through pgshift) and checks,
per tenant, on the store that serves it: every acknowledged event is there
exactly once, nothing is there that was neither seeded nor acknowledged
(COMMITs whose answer was lost count as "uncertain"), and every stream has
versions 1..n in increasing position order. Exits 1 if anything is wrong.

Runs with Debian's /usr/bin/python3 and python3-psycopg.
"""

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import uuid

import psycopg
from psycopg import errors, sql

AGG_TYPE = "Account"
INSERT = ("INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, "
          "actor_id, version, timestamp, payload) "
          "VALUES (%s, %s, %s, %s, %s, %s, %s, now(), %s) RETURNING global_position")
PROBE = ("SELECT COALESCE(MAX(version), 0) FROM events "
         "WHERE aggregate_id = %s AND aggregate_type = %s")
STREAM = ("SELECT version, global_position FROM events "
          "WHERE aggregate_id = %s AND aggregate_type = %s ORDER BY version")
FEED = ("SELECT global_position, event_id FROM events WHERE tenant_id = %s "
        "AND global_position > %s ORDER BY global_position LIMIT 100")


class Conflict(Exception):
    """The stream moved on since we read it: optimistic concurrency said no."""


class TenantStats:
    def __init__(self):
        self.lock = threading.Lock()
        self.acked = []        # event_ids whose COMMIT was acknowledged
        self.uncertain = []    # event_ids whose COMMIT answer never came
        self.appends = 0       # acknowledged append transactions
        self.conflicts = 0     # optimistic-concurrency refusals (expected)
        self.errors = []       # anything else (unexpected)
        self.reads = 0
        self.read_errors = []


def connect(dsn, tenant):
    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    conn.execute(sql.SQL("SET pgshift.tenant = {}").format(sql.Literal(tenant)))
    return conn


def worker(dsn, tenant, aggregates, versions, vlock, stats, stop, rate):
    """One application connection appending to `tenant`'s aggregates."""
    rnd = random.Random()
    conn = None
    period = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    while not stop.is_set():
        if period:
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                next_at = time.monotonic()
        try:
            if conn is None or conn.closed:
                conn = connect(dsn, tenant)
            agg = rnd.choice(aggregates)
            if rnd.random() < 0.1:
                read_stream(conn, agg, stats)
                continue
            append(conn, tenant, agg, versions, vlock, stats, rnd)
        except psycopg.OperationalError as e:
            with stats.lock:
                stats.errors.append("connection: %s" % str(e).strip().splitlines()[0])
            try:
                conn.close()
            except Exception:
                pass
            conn = None
            stop.wait(0.2)
    if conn is not None:
        conn.close()


def append(conn, tenant, agg, versions, vlock, stats, rnd):
    """The append transaction of DESIGN.md with 1-3 events."""
    with vlock:
        expected = versions[agg]
    n = rnd.choice((1, 1, 2, 3))
    ids = [str(uuid.uuid4()) for _ in range(n)]
    committing = False
    try:
        with conn.transaction():
            cur = conn.cursor()
            cur.execute(PROBE, (agg, AGG_TYPE))
            current = cur.fetchone()[0]
            if current != expected:
                raise Conflict(current)
            for k, eid in enumerate(ids):
                cur.execute(INSERT, (eid, agg, AGG_TYPE, "Deposited", tenant, "demo",
                                     current + k + 1,
                                     json.dumps({"amount": rnd.randint(1, 500), "n": k})))
                cur.fetchone()
            committing = True
        # Leaving the block without an exception: the COMMIT was acknowledged.
        with vlock:
            versions[agg] = max(versions[agg], expected + n)
        with stats.lock:
            stats.acked.extend(ids)
            stats.appends += 1
    except Conflict as c:
        with vlock:
            versions[agg] = max(versions[agg], c.args[0])
        with stats.lock:
            stats.conflicts += 1
    except errors.UniqueViolation:
        # Another writer took this version between our probe and our insert.
        with stats.lock:
            stats.conflicts += 1
    except psycopg.OperationalError:
        if committing:
            with stats.lock:
                stats.uncertain.extend(ids)
        raise
    except psycopg.Error as e:
        with stats.lock:
            stats.errors.append("%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0]))


def read_stream(conn, agg, stats):
    """Read one stream back: versions must be 1..n in increasing position order."""
    cur = conn.cursor()
    cur.execute(STREAM, (agg, AGG_TYPE))
    rows = cur.fetchall()
    with stats.lock:
        stats.reads += 1
        for i, (v, pos) in enumerate(rows):
            if v != i + 1 or (i and pos <= rows[i - 1][1]):
                stats.read_errors.append("stream %s: version %s at row %d" % (agg, v, i + 1))
                break


def cmd_run(a):
    tenants = a.tenants.split(",")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stats = {t: TenantStats() for t in tenants}
    threads = []
    for t in tenants:
        # The workers of a tenant share its aggregates, so appends really race.
        aggregates = [str(uuid.uuid4()) for _ in range(a.aggregates)]
        versions = {g: 0 for g in aggregates}
        vlock = threading.Lock()
        for _ in range(a.workers_per_tenant):
            th = threading.Thread(target=worker, daemon=True,
                                  args=(a.dsn, t, aggregates, versions, vlock, stats[t], stop,
                                        a.rate))
            th.start()
            threads.append(th)
    started = time.monotonic()
    last = 0
    while not stop.is_set():
        stop.wait(1.0)
        total = sum(s.appends for s in stats.values())
        print("workload: %5.1fs  %d appends (%d/s)  conflicts %d  errors %d" % (
            time.monotonic() - started, total, total - last,
            sum(s.conflicts for s in stats.values()),
            sum(len(s.errors) for s in stats.values())), flush=True)
        last = total
    for th in threads:
        th.join(30)
    out = {t: {"acked": s.acked, "uncertain": s.uncertain, "appends": s.appends,
               "conflicts": s.conflicts, "errors": s.errors[:20], "n_errors": len(s.errors),
               "reads": s.reads, "read_errors": s.read_errors[:20],
               "seconds": round(time.monotonic() - started, 1)}
           for t, s in stats.items()}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.rename(tmp, a.out)
    print("workload: stopped", flush=True)


def cmd_seed(a):
    """History for one tenant, written straight to its store (fast, not timed)."""
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        per_agg = 50
        n_aggs = max(1, a.events // per_agg)
        conn.execute(
            "INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, "
            "actor_id, version, timestamp, payload) "
            "SELECT gen_random_uuid(), agg, %s, 'Seeded', %s, 'seed', v, now(), "
            "jsonb_build_object('seed', true, 'v', v) "
            "FROM (SELECT gen_random_uuid() AS agg FROM generate_series(1, %s)) a, "
            "generate_series(1, %s) v",
            (AGG_TYPE, a.tenant, n_aggs, per_agg))
    seeded = {}
    if os.path.exists(a.out):
        with open(a.out) as f:
            seeded = json.load(f)
    seeded[a.tenant] = seeded.get(a.tenant, 0) + n_aggs * per_agg
    with open(a.out, "w") as f:
        json.dump(seeded, f)
    print("seeded %d events for tenant %s" % (n_aggs * per_agg, a.tenant))


def check_tenant(conn, tenant, res, seeded):
    """The per-tenant verdict on the store `conn` (which serves the tenant)."""
    cur = conn.cursor()
    cur.execute("SELECT event_id::text, event_type, aggregate_id, version, global_position "
                "FROM events WHERE tenant_id = %s", (tenant,))
    rows = cur.fetchall()
    ids = {}
    n_seed = 0
    streams = {}
    for eid, etype, agg, ver, pos in rows:
        ids[eid] = ids.get(eid, 0) + 1
        if etype == "Seeded":
            n_seed += 1
        streams.setdefault(agg, []).append((ver, pos))
    acked = res["acked"]
    uncertain = set(res["uncertain"])
    missing = [e for e in acked if ids.get(e, 0) == 0]
    dupes = [e for e, n in ids.items() if n > 1]
    known = set(acked) | uncertain
    extra = [eid for eid, etype, *_ in rows if etype != "Seeded" and eid not in known]
    committed_uncertain = sum(1 for e in uncertain if e in ids)
    bad_streams = 0
    for agg, vs in streams.items():
        vs.sort()
        if [v for v, _ in vs] != list(range(1, len(vs) + 1)) or \
                any(vs[i][1] <= vs[i - 1][1] for i in range(1, len(vs))):
            bad_streams += 1
    return {
        "rows": len(rows), "seeded": n_seed, "seeded_expected": seeded,
        "acked": len(acked), "uncertain": len(uncertain),
        "uncertain_committed": committed_uncertain, "missing": len(missing),
        "duplicates": len(dupes), "unexpected": len(extra), "bad_streams": bad_streams,
        "ok": (not missing and not dupes and not extra and not bad_streams
               and n_seed == seeded
               and len(rows) == seeded + len(acked) + committed_uncertain),
    }


def event_ids(conn, tenant):
    cur = conn.cursor()
    cur.execute("SELECT event_id::text FROM events WHERE tenant_id = %s", (tenant,))
    return {r[0] for r in cur.fetchall()}


def cmd_verify(a):
    with open(a.results) as f:
        results = json.load(f)
    seeded = {}
    if os.path.exists(a.seeded):
        with open(a.seeded) as f:
            seeded = json.load(f)
    moved = set(a.moved or [])
    src = psycopg.connect(a.source, autocommit=True)
    tgt = psycopg.connect(a.target, autocommit=True)
    all_ok = True
    hdr = ("tenant", "store", "rows", "seeded", "acked", "uncertain", "missing", "dupes",
           "unexpected", "bad_streams", "conflicts", "errors", "verdict")
    print("  ".join("%-11s" % h if i == 0 else "%s" % h for i, h in enumerate(hdr)))
    for tenant, res in results.items():
        store = "target" if tenant in moved else "source"
        v = check_tenant(tgt if store == "target" else src, tenant, res, seeded.get(tenant, 0))
        errs = res["n_errors"] + len(res["read_errors"])
        ok = v["ok"] and not res["read_errors"]
        note = None
        if tenant in moved:
            # The source keeps its pre-cutover copy. Every row of it must be on the
            # target too: a source row missing there was lost in the move (I1) or
            # written to the source after the switch (I5).
            src_ids = event_ids(src, tenant)
            not_moved = len(src_ids - event_ids(tgt, tenant))
            ok = ok and not_moved == 0
            note = ("source still holds %d rows of this tenant (its pre-cutover copy); "
                    "%d of them are not on the target" % (len(src_ids), not_moved))
        all_ok &= ok
        print("%-11s  %-5s  %4d  %6d  %5d  %9d  %7d  %5d  %10d  %11d  %9d  %6d  %s" % (
            tenant[:8] + "...", store, v["rows"], v["seeded"], v["acked"], v["uncertain"],
            v["missing"], v["duplicates"], v["unexpected"], v["bad_streams"],
            res["conflicts"], errs, "OK" if ok else "FAIL"))
        if note:
            print("    " + note)
        for e in res["errors"][:3] + res["read_errors"][:3]:
            print("    workload error: %s" % e)
    total_acked = sum(len(r["acked"]) for r in results.values())
    print("acknowledged appends checked: %d events over %d tenants: %s" % (
        total_acked, len(results), "all present exactly once" if all_ok else "PROBLEMS FOUND"))
    sys.exit(0 if all_ok else 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--dsn", required=True)
    s.add_argument("--tenant", required=True)
    s.add_argument("--events", type=int, required=True)
    s.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dsn", required=True)
    r.add_argument("--tenants", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--workers-per-tenant", type=int, default=2)
    r.add_argument("--aggregates", type=int, default=20)
    r.add_argument("--rate", type=float, default=50.0, help="transactions/s per worker")
    v = sub.add_parser("verify")
    v.add_argument("--source", required=True)
    v.add_argument("--target", required=True)
    v.add_argument("--results", required=True)
    v.add_argument("--seeded", required=True)
    v.add_argument("--moved", action="append")
    a = p.parse_args()
    {"seed": cmd_seed, "run": cmd_run, "verify": cmd_verify}[a.cmd](a)


if __name__ == "__main__":
    main()
