"""Transaction pooling (pool_mode = transaction): clients share a store's
server connections, borrowing one per transaction.

What is checked, against a real PostgreSQL 15 store of this file's own
(clusters.get("pool"), so that nothing else holds backends on it):
  - pool_size caps pgshift's backends on the store while many clients work
  - plain session SETs follow their client and never leak to another; SHOW
    right after BEGIN answers with its row (checked in both pool modes)
  - protocol-level prepared statements (psycopg, asyncpg, pgbench -M prepared)
    keep working whichever server a client borrows
  - LISTEN, CREATE TEMP TABLE, SQL PREPARE, WITH HOLD cursors and session
    advisory locks pin the session to its server, outside pool_size
  - a client that finds no free server waits, and after pool_wait_timeout_ms
    gets FATAL 53300; without a timeout it is served once one comes free
  - server_idle_timeout_ms closes idle pooled servers
  - cancel requests reach the server the client is using
  - a client that leaves mid-transaction does not commit nor pass its
    transaction on; a pooled backend that dies while idle is replaced

Backends are counted on the store itself (pg_stat_activity, as the superuser
over the unix socket), never through pgshift's admin console.
"""

import asyncio
import os
import re
import subprocess
import threading
import time

import asyncpg
import psycopg
import psycopg.errors
import pytest

from harness import PASSWORDS, PG_BIN, RawConn, fetch_metrics, parse_fields

pytestmark = [pytest.mark.proxy_only, pytest.mark.feature("transaction-pool")]

PGBENCH = os.path.join(PG_BIN, "pgbench")

# pgshift's pooled backends on the store: pgshift logs in to the store as
# `app`; its own service connections (application_name pgshift-control,
# pgshift-admin) are not pooled and left out, and so is our checking
# connection (the superuser).
POOLED_WHERE = ("usename = 'app' AND backend_type = 'client backend' "
                "AND application_name NOT LIKE 'pgshift-%' AND pid <> pg_backend_pid()")
COUNT_SQL = "SELECT count(*) FROM pg_stat_activity WHERE " + POOLED_WHERE


# --------------------------------------------------------------------------
# helpers


@pytest.fixture
def store(clusters):
    """This file's store, with the scratch tables emptied."""
    c = clusters.get("pool")
    c.psql("""
        CREATE TABLE IF NOT EXISTS pool_scratch (worker int NOT NULL, i int NOT NULL,
                                                 tag text NOT NULL DEFAULT '');
        TRUNCATE pool_scratch;
        ALTER TABLE pool_scratch OWNER TO app;
        CREATE SCHEMA IF NOT EXISTS pool_schema AUTHORIZATION app;
        CREATE TABLE IF NOT EXISTS pool_schema.pool_marker (v text);
        TRUNCATE pool_schema.pool_marker;
        INSERT INTO pool_schema.pool_marker VALUES ('found via search_path');
        ALTER TABLE pool_schema.pool_marker OWNER TO app;
    """, dbname=c.dbname)
    # Backends of an earlier test's pgshift may still be on their way out.
    b = Backends(c)
    try:
        ok, n, _ = b.wait_for(lambda k: k == 0, 10)
        assert ok, "%d app backends still on the store before the test" % n
    finally:
        b.close()
    return c


def superuser(cluster):
    """A superuser connection straight to the store (unix socket)."""
    return psycopg.connect(host=cluster.sockdir, port=cluster.port, user="postgres",
                           dbname=cluster.dbname, autocommit=True)


class Backends:
    """Counts pgshift's backends on a store."""

    def __init__(self, cluster):
        self.conn = superuser(cluster)
        self.lock = threading.Lock()

    def count(self):
        with self.lock:
            return self.conn.execute(COUNT_SQL).fetchone()[0]

    def pids(self):
        with self.lock:
            return {r[0] for r in self.conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE " + POOLED_WHERE)}

    def wait_for(self, pred, timeout):
        """Poll count() until pred(count) holds; returns (ok, last count, seconds)."""
        t0 = time.monotonic()
        n = self.count()
        while not pred(n) and time.monotonic() - t0 < timeout:
            time.sleep(0.1)
            n = self.count()
        return pred(n), n, time.monotonic() - t0

    def close(self):
        self.conn.close()


class Sampler(threading.Thread):
    """Samples the backend count every few ms until stop()."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.backends = Backends(cluster)
        self.samples = []
        self.halt = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.halt.is_set():
                self.samples.append(self.backends.count())
                time.sleep(0.01)
        except Exception as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self):
        self.halt.set()
        self.join(10)
        self.backends.close()
        assert self.error is None, "sampler failed: %r" % self.error
        assert self.samples, "sampler took no samples"
        return max(self.samples)


def start_pool(pgshift_factory, cluster, **settings):
    """A dedicated pgshift in transaction mode in front of `cluster`."""
    s = {"pool_mode": "transaction"}
    s.update({k: str(v) for k, v in settings.items()})
    return pgshift_factory(stores={"pool": cluster}, settings=s)


def connect(ep, autocommit=True, **kw):
    return psycopg.connect(ep.conninfo(), autocommit=autocommit, **kw)


def run_threads(targets, timeout=60):
    """Run each callable in its own thread; return their results in order,
    re-raising the first exception one of them raised."""
    results = [None] * len(targets)
    errors = [None] * len(targets)

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors[i] = e

    threads = [threading.Thread(target=wrap, args=(i, fn), daemon=True)
               for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    stuck = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not stuck, "threads %s still running after %ds" % (stuck, timeout)
    for i, e in enumerate(errors):
        if e is not None:
            raise AssertionError("thread %d failed: %r" % (i, e)) from e
    return results


def log_tail(ep, n=4000):
    return ep.pgshift.stderr()[-n:] if ep.pgshift else ""


# --------------------------------------------------------------------------
# 1. sharing


def test_pool_size_caps_backends_while_clients_share(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=2)
    n_workers, n_tx = 8, 30
    conns = [connect(ep) for _ in range(n_workers)]
    all_in = threading.Barrier(n_workers, timeout=20)
    spans = [None] * n_workers
    sampler = Sampler(store)
    sampler.start()

    def worker(w):
        conn = conns[w]
        all_in.wait()  # every client is connected and about to work
        t0 = time.monotonic()
        for i in range(n_tx):
            if i % 2 == 0:
                conn.execute("INSERT INTO pool_scratch (worker, i, tag) VALUES (%s, %s, 'auto')",
                             (w, i))
                assert conn.execute("SELECT count(*) FROM pool_scratch WHERE worker = %s",
                                    (w,)).fetchone()[0] > 0
            else:
                with conn.transaction():
                    conn.execute("INSERT INTO pool_scratch (worker, i, tag) "
                                 "VALUES (%s, %s, 'tx')", (w, i))
                    conn.execute("INSERT INTO pool_scratch (worker, i, tag) "
                                 "VALUES (%s, %s, 'tx2')", (w, i))
                    # Both inserts are visible inside the transaction: same backend.
                    got = conn.execute("SELECT count(*) FROM pool_scratch WHERE worker = %s "
                                       "AND i = %s", (w, i)).fetchone()[0]
                    assert got == 2, (w, i, got)
        spans[w] = (t0, time.monotonic())

    try:
        run_threads([lambda w=w: worker(w) for w in range(n_workers)], timeout=60)
        peak = sampler.stop()
    finally:
        for c in conns:
            c.close()
    # Every row is there.
    rows = store.psql("SELECT worker, count(*), count(DISTINCT i) FROM pool_scratch "
                      "GROUP BY worker ORDER BY worker", dbname=store.dbname).split()
    assert rows == ["%d|45|30" % w for w in range(n_workers)], rows
    # They worked at the same time: the last to start started before the first ended.
    assert max(s[0] for s in spans) < min(s[1] for s in spans), spans
    assert 1 <= peak <= 2, "saw %d pgshift backends on the store with pool_size=2 " \
                           "(samples: %s)" % (peak, sorted(set(sampler.samples)))


# --------------------------------------------------------------------------
# 2. settings follow their client


def test_session_settings_follow_the_client_and_do_not_leak(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1)
    with psycopg.connect(store.conninfo(), autocommit=True) as direct:
        default_ds = direct.execute("SHOW DateStyle").fetchone()[0]
        default_sp = direct.execute("SHOW search_path").fetchone()[0]
    assert default_ds != "German, DMY"
    # prepare_threshold=None: every statement here goes as a simple query.
    with connect(ep, prepare_threshold=None) as a, connect(ep, prepare_threshold=None) as b:
        a.execute("SET DateStyle = 'German'")
        a.execute("SET search_path = pool_schema, public")
        pids = set()
        for i in range(20):
            if i % 2:
                # (current_setting, not SHOW: see test_show_inside_transaction)
                with a.transaction():
                    ds = a.execute("SELECT current_setting('DateStyle')").fetchone()[0]
                    sp = a.execute("SELECT current_setting('search_path')").fetchone()[0]
                    marker = a.execute("SELECT v FROM pool_marker").fetchone()[0]
                    day = a.execute("SELECT DATE '2024-03-07'::text").fetchone()[0]
                    pids.add(a.execute("SELECT pg_backend_pid()").fetchone()[0])
            else:
                ds = a.execute("SHOW DateStyle").fetchone()[0]
                sp = a.execute("SHOW search_path").fetchone()[0]
                marker = a.execute("SELECT v FROM pool_marker").fetchone()[0]
                day = a.execute("SELECT DATE '2024-03-07'::text").fetchone()[0]
                pids.add(a.execute("SELECT pg_backend_pid()").fetchone()[0])
            assert (ds, sp, marker, day) == ("German, DMY", "pool_schema, public",
                                             "found via search_path", "07.03.2024"), i
            # B in between, on the same single pooled server.
            with b.transaction():
                bds = b.execute("SELECT current_setting('DateStyle')").fetchone()[0]
                bsp = b.execute("SELECT current_setting('search_path')").fetchone()[0]
                bday = b.execute("SELECT DATE '2024-03-07'::text").fetchone()[0]
                bmarker = b.execute("SELECT to_regclass('pool_marker') IS NULL").fetchone()[0]
                pids.add(b.execute("SELECT pg_backend_pid()").fetchone()[0])
            assert (bds, bsp, bday, bmarker) == (default_ds, default_sp, "2024-03-07", True), i
            assert b.execute("SHOW DateStyle").fetchone()[0] == default_ds, i
        # pool_size=1: A and B really took turns on one backend.
        assert len(pids) == 1, pids
        # A's later SET replaces its earlier one, and RESET works too.
        a.execute("SET DateStyle = 'SQL, DMY'")
        b.execute("SELECT 1")
        assert a.execute("SHOW DateStyle").fetchone()[0] == "SQL, DMY"
        a.execute("RESET search_path")
        b.execute("SELECT 1")
        assert a.execute("SHOW search_path").fetchone()[0] == default_sp
        assert b.execute("SHOW DateStyle").fetchone()[0] == default_ds


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_show_inside_transaction(store, pgshift_factory, mode):
    """SHOW as the first statement after BEGIN answers with its row. (Not
    pool-specific: checked in both pool modes.)"""
    ep = start_pool(pgshift_factory, store, pool_mode=mode, pool_size=1)
    raw = RawConn(ep.host, ep.port)
    try:
        raw.startup("app", ep.dbname, PASSWORDS["app"])
        assert raw.query("BEGIN") == ([], None)
        rows, err = raw.query("SHOW DateStyle")
        assert err is None and rows == [["ISO, MDY"]], (rows, err)
        assert raw.query("SHOW search_path") == ([['"$user", public']], None)
        assert raw.query("COMMIT") == ([], None)
    finally:
        raw.close()


# --------------------------------------------------------------------------
# 3. prepared statements on whichever server


async def aconnect(ep):
    return await asyncpg.connect(host=ep.host, port=ep.port, user="app",
                                 password=PASSWORDS["app"], database=ep.dbname, ssl=False,
                                 timeout=10)


async def asyncpg_workload(ep, n_conns, n_rounds):
    conns = [await aconnect(ep) for _ in range(n_conns)]
    try:
        async def one(k, conn):
            shared = await conn.prepare("SELECT $1::int + 1000")
            own = await conn.prepare("SELECT $1::text || '-asyncpg-%d'" % k)
            for r in range(n_rounds):
                assert await shared.fetchval(r) == r + 1000
                assert await own.fetchval(str(r)) == "%d-asyncpg-%d" % (r, k)
                # and the statement cache of fetchval itself
                assert await conn.fetchval("SELECT $1::int * %d" % (k + 2), r) == r * (k + 2)
                async with conn.transaction():
                    assert await shared.fetchval(r + 1) == r + 1001
                    assert await conn.fetchval("SELECT count(*) FROM pool_scratch "
                                               "WHERE worker = $1", -1 - k) == 0
                await asyncio.sleep(0)
            return k
        return await asyncio.gather(*(one(k, c) for k, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close()


def psycopg_prepared_worker(conn, k, n_rounds, start=None):
    """Named prepared statements (prepare_threshold=0) on one connection:
    the same text as every other worker, a text of its own, a transaction.
    Returns the backend pids it ran on."""
    if start is not None:
        start.wait()
    pids = set()
    for r in range(n_rounds):
        # The same text on every connection (each names it its own way) ...
        assert conn.execute("SELECT %s::int + 1000", (r,)).fetchone()[0] == r + 1000
        # ... and texts of this connection only (psycopg names them _pg3_N,
        # so other connections use the same names for other statements).
        assert conn.execute("SELECT %%s::text || '-psy-%d'" % k,
                            (str(r),)).fetchone()[0] == "%d-psy-%d" % (r, k)
        with conn.transaction():
            conn.execute("INSERT INTO pool_scratch (worker, i, tag) VALUES (%s, %s, 'p')",
                         (k, r))
            got = conn.execute("SELECT count(*) FROM pool_scratch WHERE worker = %s",
                               (k,)).fetchone()[0]
            assert got == r + 1, (k, r, got)
            pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
    return pids


def test_prepared_statements_follow_the_client(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=2)
    n_rounds = 40
    conns = [connect(ep, prepare_threshold=0) for _ in range(6)]
    try:
        # Phase 1: 6 psycopg connections share 2 servers.
        start = threading.Barrier(6, timeout=20)
        results = run_threads([lambda k=k: psycopg_prepared_worker(conns[k], k, n_rounds, start)
                               for k in range(6)], timeout=60)
        all_pids = set().union(*results)
        assert len(all_pids) <= 2, "pool_size=2 but clients used backends %s" % all_pids
        # The connections did move between servers: some client used both.
        assert any(len(p) == 2 for p in results), results
        # Phase 2: the same psycopg connections (their statements already
        # prepared somewhere) and 4 asyncpg connections at the same time.
        # asyncpg logs in with other startup parameters, so the two kinds
        # of clients do not share servers but compete for pool_size.
        store.psql("TRUNCATE pool_scratch", dbname=store.dbname)
        start = threading.Barrier(7, timeout=20)
        sampler = Sampler(store)
        sampler.start()

        def apg():
            start.wait()
            return asyncio.run(asyncio.wait_for(asyncpg_workload(ep, 4, n_rounds), 60))

        results = run_threads([lambda k=k: psycopg_prepared_worker(conns[k], k, n_rounds, start)
                               for k in range(6)] + [apg], timeout=80)
        peak = sampler.stop()
    finally:
        for c in conns:
            c.close()
    assert results[-1] == [0, 1, 2, 3]
    assert peak <= 2, "pool_size=2 but saw %d pgshift backends" % peak
    rows = store.psql("SELECT worker, count(*) FROM pool_scratch GROUP BY worker "
                      "ORDER BY worker", dbname=store.dbname).split()
    assert rows == ["%d|%d" % (k, n_rounds) for k in range(6)], rows


def test_pgbench_prepared_through_pool(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=2)
    env = ep.env()
    init = subprocess.run([PGBENCH, "-i", "-q", "-s", "1", "-I", "dtgvp"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr + log_tail(ep)
    sampler = Sampler(store)
    sampler.start()
    p = subprocess.run([PGBENCH, "-n", "-M", "prepared", "-c", "8", "-j", "2", "-t", "200"],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=120)
    peak = sampler.stop()
    out = p.stdout + p.stderr
    assert p.returncode == 0, out + log_tail(ep)
    assert "query mode: prepared" in p.stdout
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", p.stdout)
    assert processed and processed.groups() == ("1600", "1600"), out
    failed = re.search(r"number of failed transactions: (\d+)", p.stdout)
    assert failed and int(failed.group(1)) == 0, out
    assert peak <= 2, "pgbench's 8 clients used %d backends with pool_size=2" % peak
    with psycopg.connect(store.conninfo(), autocommit=True) as direct:
        assert direct.execute("SELECT count(*) FROM pgbench_history").fetchone()[0] == 1600


# --------------------------------------------------------------------------
# 4. pinning


def test_listen_pins_and_others_keep_going(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1, pool_wait_timeout_ms=5000)
    with connect(ep) as a, connect(ep) as b, connect(ep) as c:
        got = []
        a.add_notify_handler(got.append)
        a.execute("LISTEN pool_channel")
        a_pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]

        def ten(conn):
            pids = set()
            for i in range(10):
                assert conn.execute("SELECT %s::int", (i,)).fetchone()[0] == i
                pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            return pids

        pb, pc = run_threads([lambda: ten(b), lambda: ten(c)], timeout=30)
        # B and C shared the one pooled server; A's pinned one is not it.
        assert len(pb | pc) == 1 and a_pid not in pb | pc, (a_pid, pb, pc)
        b.execute("NOTIFY pool_channel, 'x'")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
            a.execute("SELECT 1")  # lets psycopg read what arrived
        assert [(n.channel, n.payload) for n in got] == [("pool_channel", "x")]
        assert a.execute("SELECT pg_backend_pid()").fetchone()[0] == a_pid


def test_temp_table_pins_its_session(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1, pool_wait_timeout_ms=5000)
    with connect(ep) as d, connect(ep) as b, connect(ep) as c:
        d.execute("CREATE TEMP TABLE pool_tmp (v int)")
        d.execute("INSERT INTO pool_tmp VALUES (42)")
        d_pid = d.execute("SELECT pg_backend_pid()").fetchone()[0]

        def txs(conn, w):
            for i in range(5):
                with conn.transaction():
                    conn.execute("INSERT INTO pool_scratch (worker, i) VALUES (%s, %s)", (w, i))
                    assert conn.execute("SELECT to_regclass('pool_tmp') IS NULL").fetchone()[0]
                    assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != d_pid

        run_threads([lambda: txs(b, 1), lambda: txs(c, 2)], timeout=30)
        assert d.execute("SELECT v FROM pool_tmp").fetchone()[0] == 42
        with d.transaction():
            d.execute("INSERT INTO pool_tmp VALUES (43)")
        assert d.execute("SELECT sum(v) FROM pool_tmp").fetchone()[0] == 85
        assert d.execute("SELECT pg_backend_pid()").fetchone()[0] == d_pid
    assert store.psql("SELECT count(*) FROM pool_scratch", dbname=store.dbname) == "10"


# (statement that pins, check on the pinned session, check on another session)
PINNERS = {
    "sql_prepare": ("PREPARE pool_p(int) AS SELECT $1 * 7",
                    "EXECUTE pool_p(6)", "42",
                    "SELECT count(*) FROM pg_prepared_statements WHERE name = 'pool_p'", "0"),
    "with_hold_cursor": ("DECLARE pool_cur CURSOR WITH HOLD FOR "
                         "SELECT g FROM generate_series(1, 100) g",
                         "FETCH 1 FROM pool_cur", None,
                         "SELECT count(*) FROM pg_cursors WHERE name = 'pool_cur'", "0"),
    "advisory_lock": ("SELECT pg_advisory_lock(4242)",
                      "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                      "AND objid = 4242 AND pid = pg_backend_pid()", "1",
                      "SELECT pg_try_advisory_lock(4242)", "False"),
}


@pytest.mark.parametrize("kind", sorted(PINNERS))
def test_pinning_statements_keep_their_server(store, pgshift_factory, kind):
    pin_sql, own_sql, own_want, other_sql, other_want = PINNERS[kind]
    ep = start_pool(pgshift_factory, store, pool_size=1, pool_wait_timeout_ms=5000)
    with connect(ep, prepare_threshold=None) as a, connect(ep) as b, connect(ep) as c:
        a.execute(pin_sql)
        a_pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        fetched = []

        def others(conn):
            seen = []
            for _ in range(10):
                seen.append(str(conn.execute(other_sql).fetchone()[0]))
                assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != a_pid
            return seen

        for _ in range(3):
            sb, sc = run_threads([lambda: others(b), lambda: others(c)], timeout=30)
            assert set(sb) | set(sc) == {other_want}, (sb, sc)
            fetched.append(str(a.execute(own_sql).fetchone()[0]))
            assert a.execute("SELECT pg_backend_pid()").fetchone()[0] == a_pid
        if own_want is None:  # the cursor goes on where it was
            assert fetched == ["1", "2", "3"], fetched
        else:
            assert fetched == [own_want] * 3, fetched


# --------------------------------------------------------------------------
# 5. waiting for a server


def test_wait_timeout_is_fatal_53300(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1, pool_wait_timeout_ms=1500)
    b = RawConn(ep.host, ep.port, timeout=15)
    try:
        with connect(ep, autocommit=False) as a:
            assert a.execute("SELECT 1").fetchone()[0] == 1  # BEGIN; SELECT 1: holds the server
            b.startup("app", ep.dbname, PASSWORDS["app"])  # logging in needs no server
            t0 = time.monotonic()
            b.send_msg(b"Q", b"SELECT 'b got a server'\0")
            msgs = []
            while True:
                try:
                    tag, body = b.recv_msg()
                except EOFError:
                    break
                msgs.append((tag, body))
                if tag == b"E":
                    break
            waited = time.monotonic() - t0
            assert msgs and msgs[-1][0] == b"E", "B got %r instead of an error" % msgs
            err = parse_fields(msgs[-1][1])
            assert err.get("C") == "53300", err
            assert err.get("V", err.get("S")) == "FATAL", err
            assert not any(t == b"D" for t, _ in msgs), msgs
            assert 1.0 <= waited <= 4.0, "B waited %.2fs for the 1.5s timeout" % waited
            assert b.closed_by_peer(5), "B's connection stayed open after FATAL 53300"
            # A's transaction is untouched and commits.
            a.execute("INSERT INTO pool_scratch (worker, i, tag) VALUES (1, 1, 'a')")
            a.commit()
    finally:
        b.close()
    assert store.psql("SELECT tag FROM pool_scratch", dbname=store.dbname) == "a"


def test_idle_first_client_does_not_hold_a_server(store, pgshift_factory):
    """The very first client's login opens a server (for the store's
    parameters); a client that logged in and sent nothing holds none."""
    ep = start_pool(pgshift_factory, store, pool_size=1, pool_wait_timeout_ms=1500)
    first = RawConn(ep.host, ep.port)
    try:
        first.startup("app", ep.dbname, PASSWORDS["app"])
        time.sleep(0.2)
        with connect(ep) as a:
            assert a.execute("SELECT 'a served'").fetchone()[0] == "a served"
        assert first.query("SELECT 'first served'") == ([["first served"]], None)
    finally:
        first.close()


def test_waiting_client_is_served_when_server_frees(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1)
    with connect(ep, autocommit=False) as a, connect(ep) as b:
        a_pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]  # in a transaction now
        out = {}

        def query_b():
            t0 = time.monotonic()
            out["row"] = b.execute("SELECT 'b', pg_backend_pid()").fetchone()
            out["done"] = time.monotonic()
            out["waited"] = out["done"] - t0

        t = threading.Thread(target=query_b, daemon=True)
        t.start()
        time.sleep(0.5)
        assert "row" not in out, "B was served while A held the only server: %r" % out
        a.execute("INSERT INTO pool_scratch (worker, i, tag) VALUES (1, 1, 'a')")
        commit_at = time.monotonic()
        a.commit()
        t.join(10)
        assert not t.is_alive(), "B still waiting 10s after A committed"
        assert out["row"] == ("b", a_pid), out
        assert out["done"] > commit_at and out["waited"] >= 0.4, out


def pool_status(ep):
    """SHOW POOLS of the pool store as a dict, and /metrics as {sample: value}."""
    admin = "host=%s port=%d dbname=pgshift user=admin password=%s" % (
        ep.host, ep.pgshift.admin_port, PASSWORDS["admin"])
    with psycopg.connect(admin, autocommit=True) as conn:
        cur = conn.execute("SHOW POOLS")
        names = [d.name for d in cur.description]
        pools = {r[0]: dict(zip(names, r)) for r in cur.fetchall()}
    return pools["pool"], fetch_metrics(ep.pgshift.http_port)


def test_pool_counts_in_show_pools_and_metrics(store, pgshift_factory):
    """A waiting client, a lent and an idle server show where operators look."""
    ep = start_pool(pgshift_factory, store, pool_size=1, pool_wait_timeout_ms=0)
    with connect(ep, autocommit=False) as a, connect(ep) as b:
        a.execute("SELECT 1")  # A holds the only server in its transaction
        t = threading.Thread(target=lambda: b.execute("SELECT 2"), daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while True:
            pool, m = pool_status(ep)
            if int(pool["cl_waiting"]) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert (pool["pool_mode"], pool["pool_size"]) == ("transaction", "1"), pool
        assert int(pool["cl_waiting"]) == 1 and int(pool["sv_active"]) == 1, pool
        assert int(pool["sv_idle"]) == 0 and int(pool["sv_pooled"]) == 1, pool
        assert m['pgshift_pool_waiting_clients{store="pool"}'] == 1, m
        assert m['pgshift_pool_waits_total{store="pool"}'] >= 1, m
        a.commit()
        t.join(10)
        assert not t.is_alive(), "B still waiting after A committed"
    pool, m = pool_status(ep)
    assert int(pool["cl_waiting"]) == 0 and int(pool["sv_idle"]) == 1, pool
    assert m['pgshift_pool_idle_servers{store="pool"}'] == 1, m
    assert m['pgshift_pool_waiting_clients{store="pool"}'] == 0, m
    assert m['pgshift_store_server_connections{store="pool"}'] == 1, m
    assert m['pgshift_pool_wait_timeouts_total{store="pool"}'] == 0, m


# --------------------------------------------------------------------------
# 6. idle servers are closed


def test_server_idle_timeout_closes_pooled_servers(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, server_idle_timeout_ms=1000)
    backends = Backends(store)
    try:
        conns = [connect(ep, autocommit=False) for _ in range(3)]
        for c in conns:  # three open transactions: three servers
            c.execute("SELECT 1")
        assert backends.count() == 3
        for c in conns:
            c.commit()
            c.close()
        ok, n, secs = backends.wait_for(lambda k: k == 0, 6)
        assert ok, "still %d pgshift backends %.1fs after the clients left" % (n, secs)
        assert secs <= 5.0, secs
        with connect(ep) as c:
            assert c.execute("SELECT 'again'").fetchone()[0] == "again"
            assert backends.count() == 1
    finally:
        backends.close()


def test_idle_servers_stay_before_the_timeout(store, pgshift_factory):
    """The reverse: with the default idle timeout a returned server is kept."""
    ep = start_pool(pgshift_factory, store)
    backends = Backends(store)
    try:
        with connect(ep) as c:
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        time.sleep(2.5)
        assert backends.pids() == {pid}
        with connect(ep) as c:  # and the next client reuses it
            assert c.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
    finally:
        backends.close()


# --------------------------------------------------------------------------
# 7. cancel


def test_cancel_reaches_the_borrowed_server(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=2)
    with connect(ep) as conn, connect(ep) as other:
        out = {}

        def sleeper():
            t0 = time.monotonic()
            try:
                conn.execute("SELECT pg_sleep(30)")
                out["conn"] = "completed"
            except Exception as e:  # noqa: BLE001 - asserted below
                out["conn"] = e
            out["elapsed"] = time.monotonic() - t0

        def bystander():
            out["other"] = other.execute("SELECT pg_sleep(1.5), 'other done'").fetchone()[1]

        ts = [threading.Thread(target=sleeper, daemon=True),
              threading.Thread(target=bystander, daemon=True)]
        for t in ts:
            t.start()
        time.sleep(0.7)
        conn.cancel()
        for t in ts:
            t.join(10)
        assert not any(t.is_alive() for t in ts), out
        assert isinstance(out["conn"], psycopg.errors.QueryCanceled), out
        assert out["elapsed"] < 5, out
        assert out["other"] == "other done", out  # the cancel hit only conn's server
        assert conn.execute("SELECT 1").fetchone()[0] == 1
        # A cancel while idle (no server borrowed) cancels nobody.
        t = threading.Thread(target=bystander, daemon=True)
        t.start()
        time.sleep(0.3)
        conn.cancel()
        t.join(10)
        assert out["other"] == "other done"
        assert conn.execute("SELECT 2").fetchone()[0] == 2


# --------------------------------------------------------------------------
# 8. a client that leaves in the middle of a transaction


@pytest.mark.parametrize("how", ["idle_in_transaction", "query_running"])
def test_client_gone_mid_transaction(store, pgshift_factory, how):
    ep = start_pool(pgshift_factory, store, pool_size=1, pool_wait_timeout_ms=15000)
    raw = RawConn(ep.host, ep.port)
    raw.startup("app", ep.dbname, PASSWORDS["app"])
    assert raw.query("BEGIN")[1] is None
    assert raw.query("INSERT INTO pool_scratch (worker, i, tag) VALUES (9, 9, 'ghost')")[1] \
        is None
    if how == "query_running":
        raw.send_msg(b"Q", b"SELECT pg_sleep(3)\0")
        time.sleep(0.3)
    raw.close()
    t0 = time.monotonic()
    for k in range(3):
        with connect(ep) as c:
            assert c.execute("SELECT count(*) FROM pool_scratch WHERE tag = 'ghost'") \
                .fetchone()[0] == 0
            assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            for i in range(5):
                with c.transaction():
                    c.execute("INSERT INTO pool_scratch (worker, i, tag) VALUES (%s, %s, 'ok')",
                              (k, i))
            assert c.execute("SELECT count(*) FROM pool_scratch WHERE tag = 'ghost'") \
                .fetchone()[0] == 0
    assert time.monotonic() - t0 < 12
    assert store.psql("SELECT tag, count(*) FROM pool_scratch GROUP BY tag ORDER BY tag",
                      dbname=store.dbname).split() == ["ok|15"]
    # Nothing of pgshift's is left idle in a transaction on the store.
    with superuser(store) as su:
        n = su.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                       "AND state LIKE 'idle in transaction%'").fetchone()[0]
    assert n == 0


# --------------------------------------------------------------------------
# 9. a pooled backend that dies while idle


def wait_gone(su, pid):
    assert su.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    deadline = time.monotonic() + 5
    while su.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                     (pid,)).fetchone()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)


def test_pooled_backend_killed_while_idle_same_client(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1)
    with connect(ep, prepare_threshold=0) as a, connect(ep) as b, superuser(store) as su:
        # prepare=False: a simple query (a SET sent as a named prepared
        # statement would pin the session instead).
        a.execute("SET DateStyle = 'German'", prepare=False)
        assert a.execute("SELECT %s::int + 1", (1,)).fetchone()[0] == 2
        pid1 = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        # A is idle and its server back in the pool: B (pool_size=1) gets it.
        assert b.execute("SELECT pg_backend_pid()").fetchone()[0] == pid1
        wait_gone(su, pid1)
        # A's next queries run on a new backend, with its setting and statement.
        pid2 = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert pid2 != pid1
        assert a.execute("SELECT %s::int + 1", (41,)).fetchone()[0] == 42
        assert a.execute("SHOW DateStyle").fetchone()[0] == "German, DMY"


def test_pooled_backend_killed_while_idle_next_client(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1)
    with superuser(store) as su:
        with connect(ep) as a:
            a.execute("SET DateStyle = 'German'")
            pid1 = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        wait_gone(su, pid1)
        with connect(ep) as b:
            assert b.execute("SELECT 'fresh', pg_backend_pid()").fetchone()[0] == "fresh"
            assert b.execute("SHOW DateStyle").fetchone()[0] != "German, DMY"
