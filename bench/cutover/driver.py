#!/usr/bin/python3
"""bench/cutover/driver.py - the load, the migrations and the figures of
bench/cutover/run.sh (issue #5, item 7).

Started by run.sh once two stores (a = default and control store, b) and
pgshift run. In one run:

  1. Tenants 0..T-1 (UUID 5c000000-0000-4000-8000-<i as 12 hex digits>);
     the first half live on a, the second half are routed to b (ROUTE
     TENANT before they have rows). Every client c owns one aggregate per
     tenant (a<c as 7 hex digits>-0000-4000-8000-<tenant as 12 hex>), seeded
     with HISTORY events straight into the tenant's store, so no two clients
     ever append to the same stream (no conflicts) and the version probe is
     an index scan of a stream of realistic length.
  2. CLIENTS asyncpg connections through pgshift, spread over PROCS worker
     processes. Every operation is the event-store append of DESIGN.md, one
     transaction: BEGIN; SELECT COALESCE(MAX(version),0) FROM events WHERE
     aggregate_id=$1 AND aggregate_type=$2; INSERT INTO events (...) VALUES
     (...) RETURNING global_position; COMMIT - with statements prepared right
     after connecting (named prepared statements), the tenant of each append
     drawn at random. Each client records (tenant, start, end, outcome) of
     every append, times on CLOCK_MONOTONIC (shared by all processes).
  3. Max TPS: every client appends as fast as it can for MAX_SECONDS.
  4. The load: half that rate, split evenly over the clients, each on a
     fixed schedule (an append every CLIENTS/rate seconds; a client more
     than a second behind its schedule drops the backlog instead of
     bursting).
  5. Meanwhile, one after another: MIGRATE TENANT 'x' TO 'other store' WITH
     (max_bulk_copy_rate = 0); wait for DUAL_WRITE; keep the tenant in
     DUAL_WRITE for DW_HOLD seconds (the window of the dual-write latency
     figure); then CUTOVER once SHOW MIGRATION says ready, retried while the
     console answers 55000 "not ready"; a CUTOVER answered success = false
     (rolled back) is counted and tried again. Tenants alternate a->b and
     b->a. Two tenants, one on each store, are never migrated: the
     reference of the dual-write comparison (the one on the migrating
     tenant's source store, over the same window).
  6. Figures: per cutover, the runner's pause_ms and the pause as clients
     saw it (the longest append of that tenant that overlapped the CUTOVER
     command, start to end, client-side); p50/p99/max over all cutovers;
     rollbacks; refusals; client errors. Append latency p50/p99 of the
     tenant in DUAL_WRITE vs the reference tenant over the same windows.
     The log lines "cutover complete in N ms (drained A, fenced B, swept C,
     flipped D ms after the hold)" of pgshift, split into steps. A row
     check: for every tenant, rows on its final store = seeded + acknowledged
     appends.

Writes result.json and prints the Markdown body of the report on stdout;
`driver.py --report result.json` prints it again from a finished run.
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import pickle
import random
import re
import statistics
import sys
import time
import uuid

import psycopg

PROBE = ("SELECT COALESCE(MAX(version),0) FROM events "
         "WHERE aggregate_id = $1 AND aggregate_type = $2")
INSERT = ("INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, "
          "actor_id, version, timestamp, payload) VALUES ($1, $2, 'Bench', 'Appended', $3, "
          "'bench', $4, now(), $5) RETURNING global_position")

TARGET_P99_MS = 50.0
TARGET_MAX_MS = 100.0
TARGET_DW_RATIO = 1.2


def tenant_uuid(i):
    return "5c000000-0000-4000-8000-%012x" % i


def agg_uuid(c, t):
    return "a%07x-0000-4000-8000-%012x" % (c, t)


def now():
    return time.monotonic()


def log(msg):
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def pct(xs, p):
    """Nearest-rank percentile of xs (p in 0..100); None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def fmt(x, nd=1):
    return "-" if x is None else ("%.*f" % (nd, x))


# ---- worker processes ------------------------------------------------------------


async def _client(a, c, tenants, shared, recs):
    """One client connection: appends until shared['stop'] is set."""
    import asyncpg

    conn = None
    probe = ins = None
    last_iv = None
    next_t = now()
    rnd = random.Random(c * 7919 + 17)
    warm = 0
    while not shared["stop"].value:
        if conn is None:
            try:
                conn = await asyncpg.connect(host="127.0.0.1", port=a.port, user=a.user,
                                             password=a.password, database=a.db,
                                             statement_cache_size=0, timeout=30)
                probe = await conn.prepare(PROBE)
                ins = await conn.prepare(INSERT)
            except Exception as e:  # noqa: BLE001 - counted, then retried
                recs.append((-1, now(), now(), "connect: %s" % type(e).__name__))
                conn = None
                await asyncio.sleep(0.2)
                continue
        iv = shared["interval"].value
        if iv > 0:
            if iv != last_iv:
                # a new rate: start at a random phase of the interval
                last_iv = iv
                next_t = now() + rnd.random() * iv
            t = now()
            if next_t > t:
                await asyncio.sleep(next_t - t)
            elif t - next_t > 1.0:
                next_t = t
            next_t += iv
        else:
            last_iv = None
        if warm < len(tenants):
            ti = warm  # warm-up: every aggregate of this client once, in turn
            warm += 1
        else:
            ti = rnd.randrange(len(tenants))
            h = shared["hot_share"].value
            if h > 0 and shared["hot"][0] >= 0:
                x = rnd.random()
                if x < h:
                    ti = shared["hot"][0] if x < h / 2 else shared["hot"][1]
        agg = uuid.UUID(agg_uuid(c, ti))
        s = now()
        code = "ok"
        try:
            async with conn.transaction():
                v = await probe.fetchval(agg, "Bench")
                await ins.fetchval(uuid.uuid4(), agg, uuid.UUID(tenants[ti]), v + 1,
                                   '{"c": %d}' % c)
        except asyncpg.PostgresError as e:
            code = getattr(e, "sqlstate", None) or type(e).__name__
        except Exception as e:  # noqa: BLE001 - the connection broke
            code = "conn: %s" % type(e).__name__
            try:
                conn.terminate()
            except Exception:  # noqa: BLE001
                pass
            conn = None
        e_t = now()
        recs.append((ti, s, e_t, code))
        shared["count"][c] += 1
    if conn is not None:
        try:
            await asyncio.wait_for(conn.close(), 5)
        except Exception:  # noqa: BLE001
            conn.terminate()


def _worker(a, clients, tenants, shared, path):
    recs = []

    async def main():
        await asyncio.gather(*[_client(a, c, tenants, shared, recs) for c in clients])

    try:
        asyncio.run(main())
    finally:
        with open(path, "wb") as f:
            pickle.dump(recs, f, protocol=pickle.HIGHEST_PROTOCOL)


# ---- admin console -----------------------------------------------------------------


class Admin:
    def __init__(self, a):
        self.dsn = ("host=127.0.0.1 port=%d dbname=pgshift user=%s password=%s "
                    "connect_timeout=10 sslmode=disable" % (a.admin_port, a.user, a.password))
        self.conn = None

    def rows(self, sql):
        for attempt in range(3):
            try:
                if self.conn is None or self.conn.closed:
                    # the console speaks only the simple protocol: never let
                    # psycopg prepare a repeated command
                    self.conn = psycopg.connect(self.dsn, autocommit=True,
                                                prepare_threshold=None)
                cur = self.conn.execute(sql)
                if not cur.description:
                    return []
                names = [d.name for d in cur.description]
                return [dict(zip(names, r)) for r in cur.fetchall()]
            except psycopg.OperationalError as e:
                # 55000 (a refused CUTOVER) is an OperationalError too: only a
                # broken connection is retried, never an answered command
                if e.sqlstate is not None:
                    raise
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.2)
        return []

    def status(self, mid):
        r = self.rows("SHOW MIGRATION %d" % mid)
        return r[0] if r else {}


def holds_since(adm, seq):
    """SHOW HOLDS rows after hold number seq: one per statement pgshift held
    at a cutover, with the time it held it (read -> sent on) in held_ms."""
    return [{"seq": int(r["seq"]), "tenant": r["tenant"], "held_ms": float(r["held_ms"]),
             "outcome": r["outcome"], "to_store": r["to_store"]}
            for r in adm.rows("SHOW HOLDS") if int(r["seq"]) > seq]


def truthy(v):
    return str(v).lower() in ("true", "t", "on", "1")


def migrate_one(adm, a, tenant, ti, src, dst, dw_hold):
    """One migration to the end; returns its record."""
    m = {"tenant": ti, "src": src, "dst": dst, "attempts": [], "refusals": 0,
         "t_migrate": now()}
    r = adm.rows("MIGRATE TENANT '%s' TO '%s' WITH (max_bulk_copy_rate = 0)" % (tenant, dst))
    mid = int(r[0]["migration_id"])
    m["id"] = mid
    deadline = now() + 120
    while True:
        st = adm.status(mid)
        if st.get("phase") == "DUAL_WRITE":
            break
        if st.get("phase") in ("FAILED", "ABORTED", "COMPLETED") or now() > deadline:
            m["error"] = "phase %s before DUAL_WRITE: %r" % (st.get("phase"), st)
            return m
        time.sleep(0.02)
    m["t_dw"] = now()
    time.sleep(dw_hold)
    deadline = now() + 120
    while True:
        st = adm.status(mid)
        if st.get("phase") == "CUTOVER" and now() < deadline:
            time.sleep(0.05)  # an attempt still running or rolling back
            continue
        if st.get("phase") != "DUAL_WRITE":
            m["error"] = "phase %s (status %r, last_error %r, last_cutover %r)" % (
                st.get("phase"), st.get("status"), st.get("last_error"), st.get("last_cutover"))
            m["final_phase"] = st.get("phase")
            return m
        if not truthy(st.get("cutover_ready")):
            if now() > deadline:
                m["error"] = "never ready: %r" % st.get("cutover_not_ready_reason")
                return m
            time.sleep(0.02)
            continue
        t0 = now()
        try:
            rows = adm.rows("CUTOVER %d" % mid)
        except psycopg.Error as e:
            if e.sqlstate == "55000":
                m["refusals"] += 1
                m.setdefault("refusal_reasons", []).append(str(e).strip()[:200])
                if now() > deadline:
                    m["error"] = "CUTOVER refused for 120 s"
                    return m
                continue
            m["error"] = "CUTOVER: %s %s" % (e.sqlstate, e)
            return m
        t1 = now()
        row = rows[0] if rows else {}
        att = {"t0": t0, "t1": t1, "success": truthy(row.get("success")),
               "pause_ms": float(row["pause_ms"]) if row.get("pause_ms") is not None else None,
               "events_synced": row.get("events_synced"), "error": row.get("error"),
               "lag_events": st.get("lag_events"),
               "predicted_pause_ms": st.get("predicted_pause_ms")}
        m["attempts"].append(att)
        if att["success"]:
            break
        if len(m["attempts"]) >= 10:
            m["error"] = "10 cutover attempts rolled back"
            return m
    m["t_end"] = now()
    st = adm.status(mid)
    m["final_phase"] = st.get("phase")
    return m


# ---- analysis ----------------------------------------------------------------------

STEP_RE = re.compile(r"migration (\d+): cutover complete in (\d+) ms \(drained (\d+), fenced "
                     r"(\d+), swept (\d+), flipped (\d+) ms after the hold\), (\d+) events")
ROLLBACK_RE = re.compile(r"migration (\d+): cutover attempt (\d+) rolled back after (\d+) ms: "
                         r"(.*)$")


def parse_log(path):
    steps, rollbacks = {}, []
    try:
        with open(path, errors="replace") as f:
            for ln in f:
                mo = STEP_RE.search(ln)
                if mo:
                    v = [int(x) for x in mo.groups()]
                    steps[v[0]] = {"total": v[1], "drained": v[2], "fenced": v[3],
                                   "swept": v[4], "flipped": v[5], "events": v[6]}
                mo = ROLLBACK_RE.search(ln)
                if mo:
                    rollbacks.append({"id": int(mo.group(1)), "attempt": int(mo.group(2)),
                                      "ms": int(mo.group(3)), "why": mo.group(4).strip()})
    except OSError:
        pass
    return steps, rollbacks


def store_dsn(a, store):
    return ("host=127.0.0.1 port=%d dbname=%s user=%s password=%s"
            % (a.stores[store], a.db, a.user, a.password))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--admin-port", type=int, required=True)
    ap.add_argument("--store", action="append", default=[], help="name=port (a first)")
    ap.add_argument("--db", default="bench")
    ap.add_argument("--user", default="bench")
    ap.add_argument("--password", default="bench-secret")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--tenants", type=int, default=30)
    ap.add_argument("--migrations", type=int, default=24)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--max-seconds", type=float, default=15)
    ap.add_argument("--load-fraction", type=float, default=0.5)
    ap.add_argument("--load-tps", type=float, default=0,
                    help="fixed load in appends/s instead of load-fraction x max")
    ap.add_argument("--dw-hold", type=float, default=4)
    ap.add_argument("--hot-share", type=float, default=0.25)
    ap.add_argument("--settle", type=float, default=3)
    ap.add_argument("--pgshift-log", default="")
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    a.stores = {}
    for s in a.store:
        k, v = s.split("=")
        a.stores[k] = int(v)
    names = list(a.stores)
    sa, sb = names[0], names[1]
    T = a.tenants
    half = T // 2
    tenants = [tenant_uuid(i) for i in range(T)]
    home = {i: (sa if i < half else sb) for i in range(T)}
    ref = {sa: half - 1, sb: T - 1}  # never migrated
    movers_a = [i for i in range(half) if i != ref[sa]]
    movers_b = [i for i in range(half, T) if i != ref[sb]]
    plan = []
    for k in range(max(len(movers_a), len(movers_b))):
        if k < len(movers_a):
            plan.append(movers_a[k])
        if k < len(movers_b):
            plan.append(movers_b[k])
    plan = plan[:a.migrations]
    if len(plan) < a.migrations:
        log("only %d tenants can move (tenants=%d)" % (len(plan), T))

    adm = Admin(a)
    loads = []

    def sample_load():
        with open("/proc/loadavg") as f:
            loads.append((now(), float(f.read().split()[0])))

    # -- 1. routes and history ------------------------------------------------------
    for i in range(half, T):
        adm.rows("ROUTE TENANT '%s' TO '%s'" % (tenants[i], sb))
    for st in (sa, sb):
        ts = [tenants[i] for i in range(T) if home[i] == st]
        with psycopg.connect(store_dsn(a, st), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, "
                "tenant_id, actor_id, version, timestamp, payload) "
                "SELECT gen_random_uuid(), ('a' || lpad(to_hex(c), 7, '0') || '-0000-4000-8000-' "
                "  || substr(t::text, 25))::uuid, 'Bench', 'History', t, 'seed', v, now(), "
                "  jsonb_build_object('v', v) "
                "FROM unnest(%s::uuid[]) t, generate_series(0, %s - 1) c, "
                "     generate_series(1, %s) v ORDER BY v, c",
                (ts, a.clients, a.history))
            conn.execute("VACUUM ANALYZE events")
    # wait until pgshift's routes show the b tenants
    for _ in range(100):
        rt = {r.get("tenant"): r.get("store") for r in adm.rows("SHOW ROUTES")}
        if all(rt.get(tenants[i]) == sb for i in range(half, T)):
            break
        time.sleep(0.1)
    seeded = a.clients * a.history
    log("%d tenants (%d on %s, %d on %s), %d events seeded per tenant"
        % (T, half, sa, T - half, sb, seeded))

    # -- 2. clients -----------------------------------------------------------------
    shared = {"stop": mp.Value("b", 0, lock=False), "interval": mp.Value("d", 0.0, lock=False),
              "count": mp.Array("q", a.clients, lock=False),
              "hot": mp.Array("i", [-1, -1], lock=False),
              "hot_share": mp.Value("d", a.hot_share, lock=False)}
    procs = []
    paths = []
    for p in range(a.procs):
        cl = list(range(p, a.clients, a.procs))
        path = os.path.join(a.workdir, "recs-%d.pickle" % p)
        paths.append(path)
        pr = mp.Process(target=_worker, args=(a, cl, tenants, shared, path), daemon=True)
        pr.start()
        procs.append(pr)

    def count():
        return sum(shared["count"][:])

    # -- 3. max TPS -------------------------------------------------------------------
    # every client connected and appended, then a short warm-up
    t_w = now()
    while min(shared["count"][:]) < T:
        if now() - t_w > 120:
            log("some clients never appended: %r" % list(shared["count"][:]))
            break
        time.sleep(0.1)
    log("all %d clients warmed up (an append to each of their %d aggregates) after %.1f s"
        % (a.clients, T, now() - t_w))
    time.sleep(2)
    sample_load()
    c0, t0 = count(), now()
    time.sleep(a.max_seconds)
    c1, t1 = count(), now()
    sample_load()
    max_tps = (c1 - c0) / (t1 - t0)
    win_max = (t0, t1)
    # A fixed load (--load-tps) makes runs of different builds comparable:
    # the measured maximum moves with the machine by up to a third.
    target_tps = a.load_tps if a.load_tps > 0 else max_tps * a.load_fraction
    shared["interval"].value = a.clients / target_tps
    log("max %.0f appends/s with %d clients; load at %.0f/s (%.1f ms between appends of a "
        "client)%s" % (max_tps, a.clients, target_tps, 1000 * a.clients / target_tps,
                       ", fixed by --load-tps" if a.load_tps > 0 else ""))
    time.sleep(a.settle)
    t_load0 = now()
    c_load0 = count()

    # -- 4. migrations ---------------------------------------------------------------
    migs = []
    hold_seq = 0
    for n, ti in enumerate(plan):
        src = home[ti]
        dst = sb if src == sa else sa
        sample_load()
        shared["hot"][1] = ref[src]
        shared["hot"][0] = ti
        m = migrate_one(adm, a, tenants[ti], ti, src, dst, a.dw_hold)
        shared["hot"][0] = -1
        time.sleep(0.3)  # held statements end once this process has seen the flip
        m["holds"] = holds_since(adm, hold_seq)
        hold_seq = max([hold_seq] + [h["seq"] for h in m["holds"]])
        migs.append(m)
        last = m["attempts"][-1] if m["attempts"] else {}
        log("%2d/%d tenant %d %s->%s: %s, pause_ms %s, %d refusals, %d attempts%s"
            % (n + 1, len(plan), ti, src, dst, m.get("final_phase", "?"),
               last.get("pause_ms"), m["refusals"], len(m["attempts"]),
               (", ERROR " + m["error"]) if "error" in m else ""))
        if "error" in m and m.get("final_phase") not in ("COMPLETED", "ABORTED", "FAILED"):
            # stuck (e.g. in CUTOVER): ABORT it, so that its tenant is no
            # longer held, and go on with the next tenant
            try:
                ab = adm.rows("ABORT MIGRATION %d 'bench/cutover: stuck'" % m["id"])
                m["aborted"] = ab[0].get("phase") if ab else "?"
            except psycopg.Error as e:
                m["aborted"] = "ABORT failed: %s" % str(e).strip()[:200]
            st = adm.status(m["id"])
            m["final_phase"] = st.get("phase")
            log("migration %d: ABORT -> %s, phase now %s" % (m["id"], m["aborted"],
                                                              m["final_phase"]))
    time.sleep(1)
    t_load1 = now()
    c_load1 = count()
    sample_load()
    shared["stop"].value = 1
    for pr in procs:
        pr.join(60)
    recs = []
    for path in paths:
        with open(path, "rb") as f:
            recs.extend(pickle.load(f))
    load_tps = (c_load1 - c_load0) / (t_load1 - t_load0)

    # -- 5. row check ------------------------------------------------------------------
    final = dict(home)
    for m in migs:
        if m.get("final_phase") == "COMPLETED":
            final[m["tenant"]] = m["dst"]
    acked = [0] * T
    for ti, s, e, code in recs:
        if ti >= 0 and code == "ok":
            acked[ti] += 1
    rows = {}
    for st in (sa, sb):
        with psycopg.connect(store_dsn(a, st), autocommit=True) as conn:
            for t, n in conn.execute("SELECT tenant_id::text, count(*) FROM events "
                                     "GROUP BY 1").fetchall():
                rows[(st, t)] = n
    mismatch = []
    for i in range(T):
        have = rows.get((final[i], tenants[i]), 0)
        want = seeded + acked[i]
        if have != want:
            mismatch.append((i, final[i], have, want))

    # -- 6. figures ---------------------------------------------------------------------
    by_t = [[] for _ in range(T)]
    errors = {}
    for ti, s, e, code in recs:
        if ti >= 0:
            by_t[ti].append((s, e, code))
        if code != "ok":
            key = code
            errors[key] = errors.get(key, 0) + 1
    steps, log_rollbacks = parse_log(a.pgshift_log)
    cut = []
    dw_lat, ref_lat = [], []
    for m in migs:
        for k, att in enumerate(m["attempts"]):
            ops = [(e - s) * 1000 for s, e, _ in by_t[m["tenant"]] if s < att["t1"] and e > att["t0"]]
            rops = [(e - s) * 1000 for s, e, _ in by_t[ref[m["src"]]]
                    if s < att["t1"] and e > att["t0"]]
            cut.append({"id": m["id"], "tenant": m["tenant"], "src": m["src"], "dst": m["dst"],
                        "attempt": k + 1, "success": att["success"],
                        "pause_ms": att["pause_ms"], "events_synced": att["events_synced"],
                        "error": att["error"], "cmd_ms": (att["t1"] - att["t0"]) * 1000,
                        "client_pause_ms": max(ops) if ops else None, "n_ops": len(ops),
                        "ref_max_ms": max(rops) if rops else None,
                        "lag_events": att["lag_events"],
                        "predicted_pause_ms": att["predicted_pause_ms"],
                        "holds": ([h["held_ms"] for h in m["holds"] if h["tenant"] == tenants[m["tenant"]]]
                                  if k == len(m["attempts"]) - 1 else []),
                        "steps": steps.get(m["id"]) if att["success"] else None})
        if "t_dw" in m and m["attempts"]:
            w0, w1 = m["t_dw"], m["attempts"][0]["t0"]
            dw_lat += [(e - s) * 1000 for s, e, c in by_t[m["tenant"]]
                       if w0 <= s and e <= w1 and c == "ok"]
            ref_lat += [(e - s) * 1000 for s, e, c in by_t[ref[m["src"]]]
                        if w0 <= s and e <= w1 and c == "ok"]
    all_lat = [(e - s) * 1000 for ti, s, e, c in recs
               if ti >= 0 and c == "ok" and t_load0 <= s <= t_load1]
    ok_cuts = [c for c in cut if c["success"]]
    cp = [c["client_pause_ms"] for c in ok_cuts if c["client_pause_ms"] is not None]
    rp = [c["pause_ms"] for c in ok_cuts if c["pause_ms"] is not None]
    rollbacks = [c for c in cut if not c["success"]]
    own = {tenants[m["tenant"]] for m in migs}
    all_holds = [h for m in migs for h in m["holds"]]
    held = [h["held_ms"] for h in all_holds if h["tenant"] in own]
    foreign = [h for m in migs for h in m["holds"] if h["tenant"] != tenants[m["tenant"]]]
    res = {
        "clients": a.clients, "procs": a.procs, "tenants": T, "history": a.history,
        "max_tps": max_tps, "max_window_s": win_max[1] - win_max[0],
        "fixed_load": a.load_tps > 0, "load_fraction": a.load_fraction,
        "target_tps": target_tps, "load_tps": load_tps,
        "load_window_s": t_load1 - t_load0,
        "migrations_planned": len(plan), "migrations": len(migs),
        "completed": sum(1 for m in migs if m.get("final_phase") == "COMPLETED"),
        "cutovers": cut,
        # a rollback whose CUTOVER got no answer shows only in the log
        "rollbacks": max(len(rollbacks), len({(x["id"], x["attempt"]) for x in log_rollbacks})),
        "log_rollbacks": log_rollbacks,
        "refusals": sum(m["refusals"] for m in migs),
        "refusal_reasons": sorted({r for m in migs for r in m.get("refusal_reasons", [])})[:10],
        "migration_errors": [(m["id"], m["tenant"], m["error"], m.get("aborted"),
                              m.get("final_phase")) for m in migs if "error" in m],
        "client_pause": {"p50": pct(cp, 50), "p99": pct(cp, 99), "max": max(cp) if cp else None,
                         "n": len(cp)},
        "held": {"p50": pct(held, 50), "p99": pct(held, 99), "max": max(held) if held else None,
                 "n": len(held), "expired": sum(1 for h in all_holds if h["outcome"] == "expired"),
                 "other_tenants": len(foreign),
                 "to_source": sum(1 for h in all_holds if h["outcome"] == "released"
                                  and h["to_store"] is not None
                                  and h["to_store"] not in (m["dst"] for m in migs
                                                            if tenants[m["tenant"]] == h["tenant"]))},
        "runner_pause": {"p50": pct(rp, 50), "p99": pct(rp, 99), "max": max(rp) if rp else None,
                         "n": len(rp)},
        "dw": {"n": len(dw_lat), "p50": pct(dw_lat, 50), "p99": pct(dw_lat, 99)},
        "ref": {"n": len(ref_lat), "p50": pct(ref_lat, 50), "p99": pct(ref_lat, 99)},
        "all": {"n": len(all_lat), "p50": pct(all_lat, 50), "p99": pct(all_lat, 99),
                "max": max(all_lat) if all_lat else None},
        "errors": errors, "appends": len(recs), "rows_mismatch": mismatch,
        "loadavg": [x[1] for x in loads],
        "dw_hold_s": a.dw_hold,
    }
    with open(os.path.join(a.workdir, "result.json"), "w") as f:
        json.dump(res, f, indent=1)
    report(res)
    return 0


def report(r):
    cpz, rpz = r["client_pause"], r["runner_pause"]
    dw, ref = r["dw"], r["ref"]
    ratio = dw["p50"] / ref["p50"] if dw["p50"] and ref["p50"] else None
    p = print
    p("## Load")
    p()
    p("| | value |")
    p("| --- | ---: |")
    p("| max append TPS, %d clients, unthrottled (%.0f s) | %.0f |"
      % (r["clients"], r["max_window_s"], r["max_tps"]))
    p("| target load (%s) | %.0f appends/s |"
      % ("fixed: LOAD_TPS" if r["fixed_load"] else "%g x max" % r["load_fraction"],
         r["target_tps"]))
    p("| load achieved during the migrations (%.0f s) | %.0f appends/s |"
      % (r["load_window_s"], r["load_tps"]))
    p("| append latency during the migrations, all tenants, p50 / p99 / max | %s / %s / %s ms |"
      % (fmt(r["all"]["p50"]), fmt(r["all"]["p99"]), fmt(r["all"]["max"])))
    p("| appends recorded (whole run) | %d |" % r["appends"])
    p("| client errors | %s |" % (", ".join("%s: %d" % kv for kv in sorted(r["errors"].items()))
                                  or "none"))
    p("| rows check (every tenant: rows on its final store = seeded + acknowledged) | %s |"
      % ("ok, %d tenants" % r["tenants"] if not r["rows_mismatch"]
         else "MISMATCH %r" % r["rows_mismatch"]))
    p()
    p("## Cutovers")
    p()
    p("%d migrations planned, %d run, %d COMPLETED; %d CUTOVER attempts, %d rolled back; %d "
      "CUTOVER commands refused 55000 (not ready) and retried."
      % (r["migrations_planned"], r["migrations"], r["completed"], len(r["cutovers"]),
         r["rollbacks"], r["refusals"]))
    if r["migration_errors"]:
        p()
        p("Migration errors: %r" % r["migration_errors"])
    p()
    nz = sum(1 for c in r["cutovers"] if c["success"] and c["client_pause_ms"] is None)
    if nz:
        p("%d successful cutover(s) had no append of the tenant in flight during the CUTOVER "
          "command: no client saw a pause there; they are left out of the client-side figures."
          % nz)
        p()
    hz = r["held"]
    p("| pause (ms) | n | p50 | p99 | max | target |")
    p("| --- | ---: | ---: | ---: | ---: | --- |")
    p("| **each held statement, as pgshift held it** (SHOW HOLDS: read from the client -> sent "
      "on) | %d | %s | %s | %s | p99 < %.0f, max < %.0f |"
      % (hz["n"], fmt(hz["p50"]), fmt(hz["p99"]), fmt(hz["max"]), TARGET_P99_MS, TARGET_MAX_MS))
    p("| upper bound: longest append of the tenant overlapping the CUTOVER command (its own "
      "latency included) | %d | %s | %s | %s | |" % (cpz["n"], fmt(cpz["p50"]), fmt(cpz["p99"]),
                                                    fmt(cpz["max"])))
    p("| runner's pause_ms (CUTOVER answer) | %d | %s | %s | %s | |"
      % (rpz["n"], fmt(rpz["p50"]), fmt(rpz["p99"]), fmt(rpz["max"])))
    p()
    p("Held statements of tenants other than the one at cutover: %d; held past max_hold_ms "
      "(refused 55000): %d; released back to the source (a rolled-back attempt): %d."
      % (hz["other_tenants"], hz["expired"], hz["to_source"]))
    if r["rollbacks"]:
        va = [c["client_pause_ms"] for c in r["cutovers"] if c["client_pause_ms"] is not None]
        vr = [c["pause_ms"] for c in r["cutovers"] if c["pause_ms"] is not None]
        p("| as clients saw it, every attempt (rolled-back ones too) | %d | %s | %s | %s | |"
          % (len(va), fmt(pct(va, 50)), fmt(pct(va, 99)), fmt(max(va) if va else None)))
        p("| runner's pause_ms, every answered attempt | %d | %s | %s | %s | |"
          % (len(vr), fmt(pct(vr, 50)), fmt(pct(vr, 99)), fmt(max(vr) if vr else None)))
    p()
    p("Per cutover attempt (steps from pgshift's log, ms after the hold began: drained = every "
      "process holds and has drained, fenced = advisory lock + fence row on the source, swept = "
      "final round done, flipped = route flip committed; ref max = the longest append of the "
      "never-migrated tenant on the same source store over the same CUTOVER command):")
    p()
    p("| mig | tenant | from->to | ok | pause_ms | client max | appends | held | "
      "held max | ref max | CUTOVER cmd | lag | predicted | drained | fenced | swept | flipped "
      "| swept events | error |")
    p("| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
      "| ---: | ---: | ---: | ---: | ---: | --- |")
    for c in r["cutovers"]:
        s = c["steps"] or {}
        p("| %s | %d | %s->%s | %s | %s | %s | %d | %s | %s | %s | %.0f | %s | %s | %s | %s | %s "
          "| %s | %s | %s |" % (c["id"], c["tenant"], c["src"], c["dst"],
                      "yes" if c["success"] else "NO",
                      fmt(c["pause_ms"], 0), fmt(c["client_pause_ms"]), c["n_ops"],
                      len(c["holds"]) if c["success"] else "-",
                      fmt(max(c["holds"])) if c["holds"] else "-",
                      fmt(c["ref_max_ms"]), c["cmd_ms"], c["lag_events"],
                      c["predicted_pause_ms"], s.get("drained", "-"), s.get("fenced", "-"),
                      s.get("swept", "-"), s.get("flipped", "-"), c["events_synced"],
                      c["error"] or ""))
    st = [c["steps"] for c in r["cutovers"] if c["steps"]]
    if st:
        parts = [("hold + drain (every process holds the tenant, its open transactions end)",
                  [x["drained"] for x in st]),
                 ("fence (advisory lock + fence row on the source)",
                  [x["fenced"] - x["drained"] for x in st]),
                 ("final sweep (the exact last dual-write round)",
                  [x["swept"] - x["fenced"] for x in st]),
                 ("target sequence bump + route flip committed in the control store (= the "
                  "release; pause_ms ends here)",
                  [max(0, x["total"] - x["swept"]) for x in st])]
        total = sum(sum(v) for _, v in parts) or 1
        p()
        p("Where the pause goes (pgshift's log, %d completed cutovers; ms per step; the "
          "bookkeeping after the release - cutover_result update, unlock - is left out):"
          % len(st))
        p()
        p("| step | p50 | max | share of the summed time |")
        p("| --- | ---: | ---: | ---: |")
        for name, v in parts:
            p("| %s | %s | %s | %.0f%% |" % (name, fmt(pct(v, 50), 0), fmt(max(v), 0),
                                            100.0 * sum(v) / total))
    refm = [c["ref_max_ms"] for c in r["cutovers"] if c["success"] and c["ref_max_ms"]]
    if refm:
        p()
        p("Noise floor: the longest append of the never-migrated tenant of the same source store "
          "during the same CUTOVER commands: p50 %s, max %s ms (%d cutovers) - what an append "
          "takes on this machine at that moment without any hold."
          % (fmt(pct(refm, 50)), fmt(max(refm)), len(refm)))
    if r["log_rollbacks"]:
        first = {}
        for x in r["log_rollbacks"]:
            k = (x["id"], x["attempt"])
            if k not in first:
                first[k] = [x, 0]
            else:
                first[k][1] += 1
        p()
        p("Rollbacks in pgshift's log (first line of each attempt; later lines for the same "
          "attempt counted):")
        p()
        for (mid, att), (x, more) in sorted(first.items()):
            p("- migration %d attempt %d: rolled back after %d ms: %s; then %d more \"rolled "
              "back\" line(s) for the same attempt" % (mid, att, x["ms"], x["why"], more))
    if r["refusal_reasons"]:
        p()
        p("Refusal messages (distinct, first 10): %s" % "; ".join(r["refusal_reasons"]))
    p()
    p("## Dual-write append latency")
    p()
    p("Appends that started and ended inside a migrating tenant's DUAL_WRITE window (from the "
      "first SHOW MIGRATION in DUAL_WRITE to its CUTOVER command, %.0f s each), vs the appends of "
      "the never-migrated tenant on the same source store inside the same windows."
      % r["dw_hold_s"])
    p()
    p("| tenant | appends | p50 ms | p99 ms |")
    p("| --- | ---: | ---: | ---: |")
    p("| in DUAL_WRITE | %d | %s | %s |" % (dw["n"], fmt(dw["p50"], 2), fmt(dw["p99"], 2)))
    p("| not migrating | %d | %s | %s |" % (ref["n"], fmt(ref["p50"], 2), fmt(ref["p99"], 2)))
    p("| ratio | | %s | %s |" % (fmt(ratio, 2),
                                 fmt(dw["p99"] / ref["p99"] if dw["p99"] and ref["p99"] else None,
                                     2)))
    p()
    p("## Verdict")
    p()
    checks = [
        ("pause p99 of the held statements < %.0f ms" % TARGET_P99_MS,
         hz["p99"] is not None and hz["p99"] < TARGET_P99_MS, fmt(hz["p99"]) + " ms"),
        ("pause max of the held statements < %.0f ms" % TARGET_MAX_MS,
         hz["max"] is not None and hz["max"] < TARGET_MAX_MS, fmt(hz["max"]) + " ms"),
        ("no statement of another tenant held", hz["other_tenants"] == 0,
         "%d" % hz["other_tenants"]),
        ("no rollback", r["rollbacks"] == 0, "%d" % r["rollbacks"]),
        (">= 20 cutovers", r["completed"] >= 20, "%d" % r["completed"]),
        ("dual-write p50 <= %.1fx not migrating" % TARGET_DW_RATIO,
         ratio is not None and ratio <= TARGET_DW_RATIO, fmt(ratio, 2) + "x"),
        ("no client error, rows check", not r["errors"] and not r["rows_mismatch"],
         "%d errors, %d mismatches" % (sum(r["errors"].values()), len(r["rows_mismatch"]))),
    ]
    p("| target | measured | met |")
    p("| --- | ---: | --- |")
    for name, ok, val in checks:
        p("| %s | %s | %s |" % (name, val, "yes" if ok else "**no**"))
    p("| (not a target) the client-side upper bound, p99 / max | %s / %s ms | |"
      % (fmt(cpz["p99"]), fmt(cpz["max"])))
    la = r["loadavg"]
    p()
    p("Load average (1 min) sampled during the run: min %.1f, mean %.1f, max %.1f (%d samples)."
      % (min(la), statistics.mean(la), max(la), len(la)) if la else "")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        # re-render the report of a finished run from its result.json
        with open(sys.argv[2]) as f:
            report(json.load(f))
        sys.exit(0)
    sys.exit(main())
