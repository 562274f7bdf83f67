"""Helpers for the migration integration tests (issue #4, item 6).

Two PostgreSQL 15 stores, `src` (the default store and the control store)
and `dst`, shared by name for the session (clusters.get), behind a dedicated
pgshift per test. Tenants are fresh UUIDs in every test; every test ends by
aborting its migration, which empties the target again, so the next test
finds `dst` without tenant rows (preserved positions need an empty target).

Public pieces:
  mig_env        pytest fixture: a MigEnv (start_pgshift() starts pgshift)
  MigEnv         admin console, migration status, direct store access,
                 data loading, row digests, an appending application
  Appender       a thread appending events through pgshift
"""

import json
import os
import threading
import time
import uuid

import psycopg
import pytest

from harness import PASSWORDS, fetch_metrics, free_port

TENANT_TABLES = ("events", "event_outbox", "snapshots")


class DeadStore:
    """A [stores] entry nobody listens on (a target that is unreachable)."""

    def __init__(self):
        self.port = free_port()
        self.dbname = "eventstore"

    def conninfo(self, user="app", **kw):
        return ("host=127.0.0.1 port=%d dbname=eventstore user=%s password=x "
                "connect_timeout=2" % (self.port, user))


class Appender(threading.Thread):
    """Appends events for `tenants` through pgshift until stopped; counts
    what was acknowledged per tenant and keeps the errors."""

    def __init__(self, ep, tenants, conns=2):
        super().__init__(daemon=True)
        self.ep = ep
        self.tenants = list(tenants)
        self.conns = conns
        self.stop_flag = threading.Event()
        self.acked = {t: 0 for t in self.tenants}
        self.errors = []
        self.lock = threading.Lock()

    def _work(self, k):
        try:
            with psycopg.connect(self.ep.conninfo(), autocommit=True) as conn:
                i = 0
                while not self.stop_flag.is_set():
                    t = self.tenants[(i + k) % len(self.tenants)]
                    agg = str(uuid.uuid4())
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO events (event_id, aggregate_id, aggregate_type, "
                            "event_type, tenant_id, actor_id, version, timestamp, payload) "
                            "VALUES (%s, %s, 'Order', 'Created', %s, 'app', 1, now(), %s)",
                            (str(uuid.uuid4()), agg, t, json.dumps({"i": i})))
                    with self.lock:
                        self.acked[t] += 1
                    i += 1
        except Exception as e:  # noqa: BLE001 - recorded and asserted by the test
            self.errors.append(repr(e))

    def run(self):
        workers = [threading.Thread(target=self._work, args=(k,), daemon=True)
                   for k in range(self.conns)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def stop(self):
        self.stop_flag.set()
        self.join(timeout=30)


class MigEnv:
    def __init__(self, stores, factory):
        self.stores = stores  # name -> Cluster (or DeadStore)
        self.factory = factory
        self.ep = None

    # -- pgshift -----------------------------------------------------------
    def start_pgshift(self, migration=None, stores=None):
        sections = {"migration": migration} if migration else None
        self.ep = self.factory(stores=stores or self.stores,
                               settings={"default_store": "src", "log_level": "info"},
                               sections=sections)
        return self.ep

    def kill9(self):
        """kill -9 pgshift, as a crash."""
        p = self.ep.pgshift
        p.proc.kill()
        p.proc.wait(10)

    def restart(self):
        """Start the same pgshift process again (after kill9)."""
        p = self.ep.pgshift
        for f in (p._stderr_f, p._stdout_f):
            if f:
                f.close()
        p.start()
        return self.ep

    # -- admin console -----------------------------------------------------
    def admin_conninfo(self):
        return ("host=%s port=%d dbname=pgshift user=admin password=%s connect_timeout=10 "
                "sslmode=disable" % (self.ep.host, self.ep.pgshift.admin_port,
                                     PASSWORDS["admin"]))

    def admin(self, sql):
        """Rows of one admin command, as dicts."""
        with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
            cur = conn.execute(sql)
            if not cur.description:
                return []
            names = [d.name for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def metrics(self):
        """The /metrics page of the HTTP port, as {sample name with labels: value}."""
        return fetch_metrics(self.ep.pgshift.http_port)

    def admin_error(self, sql):
        """(sqlstate, message) of an admin command that must fail."""
        with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
            try:
                conn.execute(sql)
            except psycopg.Error as e:
                return e.sqlstate, str(e)
        raise AssertionError("admin command %r did not fail" % sql)

    def migrate(self, tenant, store="dst", **with_):
        sql = "MIGRATE TENANT '%s' TO '%s'" % (tenant, store)
        if with_:
            sql += " WITH (%s)" % ", ".join("%s = %s" % kv for kv in with_.items())
        rows = self.admin(sql)
        assert len(rows) == 1 and rows[0]["phase"] == "PENDING", rows
        return int(rows[0]["migration_id"])

    def status(self, mid):
        rows = self.admin("SHOW MIGRATION %d" % mid)
        assert len(rows) == 1, rows
        return rows[0]

    def wait(self, mid, pred, timeout=60, what="condition"):
        t0 = time.monotonic()
        while True:
            st = self.status(mid)
            if pred(st):
                return st
            if time.monotonic() - t0 > timeout:
                raise AssertionError("migration %d: %s not reached in %ds; status %r\n%s"
                                     % (mid, what, timeout, st, self.log()))
            time.sleep(0.1)

    def wait_copied(self, mid, timeout=60):
        """The copy is complete and handed over: the migration is in DUAL_WRITE."""
        return self.wait(mid, lambda s: s["copy_complete"] == "true" and s["phase"] != "BULK_COPY",
                         timeout, "copy complete")

    def abort(self, mid, reason=None):
        sql = "ABORT MIGRATION %d" % mid + (" '%s'" % reason if reason else "")
        rows = self.admin(sql)
        assert rows and rows[0]["phase"] == "ABORTED", rows
        return rows[0]

    def audit(self, mid):
        return [r["event_type"] for r in self.admin("SHOW AUDIT %d" % mid)]

    def log(self, tail=4000):
        return self.ep.pgshift.stderr()[-tail:] if self.ep and self.ep.pgshift else ""

    # -- direct store access -----------------------------------------------
    def direct(self, store):
        return psycopg.connect(self.stores[store].conninfo(), autocommit=True)

    def value(self, store, sql, params=None):
        with self.direct(store) as conn:
            return conn.execute(sql, params).fetchone()[0]

    def load_tenant(self, tenant, n_events, others=(), per_other=0, aggregate_size=10):
        """n_events for tenant (interleaved with per_other events of each
        other tenant, so positions have gaps), an outbox row every 10th event
        and a snapshot per aggregate, straight into src."""
        k = 1 + len(others)
        total = n_events + per_other * len(others)
        with self.direct("src") as conn:
            conn.execute(
                """
                INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type,
                    tenant_id, actor_id, version, timestamp, payload)
                SELECT gen_random_uuid(), agg, 'Order', 'Event' || (g %% 5), tn,
                       'actor-' || (g %% 7),
                       row_number() OVER (PARTITION BY agg ORDER BY g),
                       now() - make_interval(secs => g),
                       jsonb_build_object('g', g, 'pad', repeat('p', g %% 40))
                FROM (SELECT g, tn, md5(tn::text || (g / %(agg)s::int)::text)::uuid AS agg
                      FROM (SELECT g, CASE WHEN g %% %(k)s::int = 0 OR g > %(k)s::int * %(per)s::int
                                           THEN %(t)s::uuid
                                           ELSE (%(others)s::uuid[])[g %% %(k)s::int] END AS tn
                            FROM generate_series(1, %(total)s::int) g) a) b
                ORDER BY g
                """, {"agg": aggregate_size * k, "k": k, "t": tenant,
                      "per": per_other, "others": list(others) or [tenant],
                      "total": total})
            conn.execute(
                "INSERT INTO event_outbox (event_id, aggregate_id, aggregate_type, event_type, "
                "tenant_id, payload) SELECT event_id, aggregate_id, aggregate_type, event_type, "
                "tenant_id, payload FROM events WHERE tenant_id = %s AND global_position %% 10 = 0",
                (tenant,))
            conn.execute(
                "INSERT INTO snapshots (aggregate_id, aggregate_type, tenant_id, version, state) "
                "SELECT aggregate_id, 'Order', tenant_id, max(version), '{}' FROM events "
                "WHERE tenant_id = %s GROUP BY aggregate_id, tenant_id", (tenant,))

    def digest(self, store, table, tenant):
        """(rows, md5 of every column of every row of tenant in table)."""
        order = {"events": "global_position", "event_outbox": "id",
                 "snapshots": "aggregate_id, aggregate_type"}[table]
        return self.value(store,
                          "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY %s), "
                          "'')) FROM %s t WHERE tenant_id = %%s" % (order, table), (tenant,))

    def digest_row(self, store, table, tenant):
        with self.direct(store) as conn:
            order = {"events": "global_position", "event_outbox": "id",
                     "snapshots": "aggregate_id, aggregate_type"}[table]
            return conn.execute(
                "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY %s), '')) "
                "FROM %s t WHERE tenant_id = %%s" % (order, table), (tenant,)).fetchone()

    def tenant_rows(self, store, tenant):
        return {t: self.digest_row(store, t, tenant) for t in TENANT_TABLES}

    def other_rows(self, store, tenant):
        """Rows of the tenant tables that are NOT tenant's (NULL tenants included)."""
        return {t: self.value(store, "SELECT count(*) FROM %s WHERE tenant_id IS DISTINCT FROM %%s"
                              % t, (tenant,)) for t in TENANT_TABLES}

    def assert_target_clean(self):
        for t in TENANT_TABLES:
            n = self.value("dst", "SELECT count(*) FROM %s" % t)
            assert n == 0, "dst.%s holds %d rows before the test" % (t, n)


    def leftovers(self):
        """What a test left behind: migrations not in a final phase (aborted
        here, while its pgshift still runs) and target rows (deleted). Returns
        a description, or "" when the test cleaned up after itself."""
        found = []
        if self.ep and self.ep.pgshift and self.ep.pgshift.alive():
            try:
                for r in self.admin("SHOW MIGRATIONS"):
                    if r["phase"] not in ("COMPLETED", "ABORTED", "FAILED"):
                        found.append("migration %s in %s" % (r["id"], r["phase"]))
                        self.admin("ABORT MIGRATION %s 'left by a test'" % r["id"])
            except Exception as e:  # a test that broke pgshift: the rows below still go
                found.append("admin console: %s" % e)
        if self.value("src", "SELECT to_regclass('pgshift.migrations') IS NOT NULL"):
            with self.direct("src") as conn:
                conn.execute("UPDATE pgshift.migrations SET phase = 'ABORTED', aborted_at = now() "
                             "WHERE phase NOT IN ('COMPLETED', 'ABORTED', 'FAILED')")
        for t in TENANT_TABLES:
            n = self.value("dst", "SELECT count(*) FROM %s" % t)
            if n:
                found.append("dst.%s: %d rows" % (t, n))
                with self.direct("dst") as conn:
                    conn.execute("TRUNCATE %s" % t)
        return ", ".join(found)


@pytest.fixture
def mig_env(request, clusters, pgshift_factory):
    """A MigEnv on the session's src and dst. After the test, whatever it left
    (a live migration, target rows) is cleaned away so the next test starts
    clean; a test that passed but left something fails its teardown."""
    stores = {"src": clusters.get("mig_src"), "dst": clusters.get("mig_dst")}
    env = MigEnv(stores, pgshift_factory)
    env.assert_target_clean()
    yield env
    left = env.leftovers()
    rep = getattr(request.node, "rep_call", None)
    if left and rep is not None and rep.passed:
        pytest.fail("the test left behind: " + left)


def new_tenant():
    return str(uuid.uuid4())
