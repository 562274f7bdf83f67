"""Helpers for the tenant-routing integration tests (issue #3, item 7).

Three PostgreSQL 15 stores (a, b, c; `a` is the default store and the
control store) behind one or two pgshift processes. Tenants are fresh UUIDs
in every test, so tests sharing the clusters never see each other's rows.

Public pieces:
  routing / routing2   pytest fixtures: a RouteEnv with one pgshift (routing)
                       or two pgshift processes on the same control store
                       (routing2); import them into the test module
  RouteEnv             stores, endpoint(s), admin console, direct store access
  SQL                  the event-store statement shapes of DESIGN.md, with
                       psycopg placeholders (%s); pg_sql() turns them into $n
  Plan                 what a workload wrote for one tenant, to check stores
"""

import json
import os
import subprocess
import time
import uuid

import psycopg
import pytest

from harness import PASSWORDS, PG_BIN

STORE_NAMES = ("a", "b", "c")
DEFAULT_STORE = "a"

# The event-store statement shapes (DESIGN.md "The event store it serves").
SQL = {
    "probe": "SELECT COALESCE(MAX(version),0) FROM events "
             "WHERE aggregate_id=%s AND aggregate_type=%s",
    "append": "INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, "
              "actor_id, version, timestamp, payload) "
              "VALUES (%s, %s, %s, %s, %s, %s, %s, now(), %s) RETURNING global_position",
    "outbox": "INSERT INTO event_outbox (event_id, aggregate_id, aggregate_type, event_type, "
              "tenant_id, payload) VALUES (%s, %s, %s, %s, %s, %s)",
    "stream": "SELECT version, event_id::text, tenant_id::text, event_type FROM events "
              "WHERE aggregate_id=%s AND aggregate_type=%s ORDER BY version",
    "feed": "SELECT global_position, event_id::text, tenant_id::text FROM events "
            "WHERE tenant_id = %s AND global_position > %s ORDER BY global_position LIMIT 1000",
    "snapshot_upsert": "INSERT INTO snapshots (aggregate_id, aggregate_type, tenant_id, version, "
                       "state) VALUES (%s, %s, %s, %s, %s) "
                       "ON CONFLICT (aggregate_id, aggregate_type) DO UPDATE SET "
                       "version = EXCLUDED.version, state = EXCLUDED.state",
    "snapshot_read": "SELECT version, tenant_id::text FROM snapshots "
                     "WHERE aggregate_id=%s AND aggregate_type=%s",
    "checkpoint": "INSERT INTO projection_checkpoints (projection_name, last_event_id, "
                  "event_type, global_position, events_processed) VALUES (%s, %s, %s, %s, 1) "
                  "ON CONFLICT (projection_name) DO UPDATE SET "
                  "last_event_id = EXCLUDED.last_event_id, "
                  "global_position = EXCLUDED.global_position, "
                  "events_processed = projection_checkpoints.events_processed + 1, "
                  "updated_at = now()",
}

AGG_TYPE = "Order"


def pg_sql(name):
    """SQL[name] with $1..$n placeholders (asyncpg, node pg)."""
    parts = SQL[name].split("%s")
    out = parts[0]
    for i, p in enumerate(parts[1:], 1):
        out += "$%d" % i + p
    return out


def lit(v):
    """A SQL literal for psql scripts."""
    if v is None:
        return "NULL"
    if isinstance(v, int):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def literal_sql(name, *args):
    """SQL[name] with its parameters written as literals (simple protocol)."""
    parts = SQL[name].split("%s")
    assert len(parts) == len(args) + 1, (name, args)
    out = parts[0]
    for a, p in zip(args, parts[1:]):
        out += lit(a) + p
    return out


def new_tenant():
    return str(uuid.uuid4())


def new_id():
    return str(uuid.uuid4())


class RouteEnv:
    """Stores a, b, c and the pgshift process(es) in front of them."""

    def __init__(self, stores, endpoints):
        self.stores = stores  # name -> harness.Cluster
        self.endpoints = endpoints  # list of harness.Endpoint
        self.ep = endpoints[0]

    # -- admin console -----------------------------------------------------
    def admin_conninfo(self, ep=None):
        ep = ep or self.ep
        return ("host=%s port=%d dbname=pgshift user=admin password=%s connect_timeout=10 "
                "sslmode=disable" % (ep.host, ep.pgshift.admin_port, PASSWORDS["admin"]))

    def admin(self, sql, ep=None):
        """Rows of one admin command (psycopg, autocommit)."""
        with psycopg.connect(self.admin_conninfo(ep), autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def admin_error(self, sql, ep=None):
        """The error of an admin command that must fail: (sqlstate, message)."""
        with psycopg.connect(self.admin_conninfo(ep), autocommit=True) as conn:
            try:
                conn.execute(sql)
            except psycopg.Error as e:
                return e.sqlstate, str(e)
            raise AssertionError("admin command %r did not fail" % sql)

    def admin_psql(self, sql, ep=None):
        """One admin command through psql (simple protocol): rows split on '|'."""
        ep = ep or self.ep
        env = dict(os.environ)
        env.update({"PGPASSWORD": PASSWORDS["admin"], "PGCONNECT_TIMEOUT": "10",
                    "PGSSLMODE": "disable"})
        p = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-A", "-t", "-F", "|", "-v",
                            "ON_ERROR_STOP=1", "-h", ep.host, "-p", str(ep.pgshift.admin_port),
                            "-U", "admin", "-d", "pgshift", "-c", sql], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        return p.returncode, [ln.split("|") for ln in p.stdout.splitlines() if ln], p.stderr

    def route(self, tenant, store, ep=None):
        """ROUTE TENANT through the admin console (psql); checks the answer."""
        rc, rows, err = self.admin_psql("ROUTE TENANT %s TO %s" % (lit(tenant), lit(store)), ep)
        assert rc == 0, "ROUTE TENANT %s TO %s failed: %s" % (tenant, store, err)
        assert rows and rows[0][0] == tenant and rows[0][1] == store, rows
        return rows[0]

    def routes(self, ep=None):
        """SHOW ROUTES as {tenant: store}."""
        return {r[0]: r[1] for r in self.admin("SHOW ROUTES", ep)}

    def wait_route(self, tenant, store, ep, timeout=1.0):
        """Poll SHOW ROUTES on `ep` until tenant -> store; seconds it took."""
        t0 = time.monotonic()
        while True:
            if self.routes(ep).get(tenant) == store:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError("route %s -> %s not seen on %s within %.1fs: %r"
                                     % (tenant, store, ep, timeout, self.routes(ep)))
            time.sleep(0.02)

    # -- direct store access -----------------------------------------------
    def direct(self, store):
        """Autocommit psycopg connection straight to a store (not through pgshift)."""
        return psycopg.connect(self.stores[store].conninfo(), autocommit=True)

    def count(self, store, table, column, value):
        with self.direct(store) as conn:
            return conn.execute("SELECT count(*) FROM %s WHERE %s = %%s" % (table, column),
                                (value,)).fetchone()[0]

    def counts(self, table, column, value):
        """{store: rows with column = value} over every store."""
        return {s: self.count(s, table, column, value) for s in self.stores}

    def expect_only_on(self, home, table, column, value, n):
        """Exactly n rows with column = value on store `home`, none elsewhere."""
        want = {s: (n if s == home else 0) for s in self.stores}
        got = self.counts(table, column, value)
        assert got == want, "%s.%s = %s: rows per store %r, expected %r" % (
            table, column, value, got, want)

    def tenant_everywhere(self, tenant):
        """{store: {table: rows of tenant}} over the tenant tables."""
        return {s: {t: self.count(s, t, "tenant_id", tenant)
                    for t in ("events", "event_outbox", "snapshots")} for s in self.stores}

    def psql(self, script, options=None, ep=None, user="app"):
        """Run a psql script through pgshift (simple protocol, literals).
        Returns (rc, stdout, stderr); errors do not stop the script."""
        ep = ep or self.ep
        env = ep.env(user=user)
        if options:
            env["PGOPTIONS"] = options
        p = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t", "-F", "|",
                            "-v", "VERBOSITY=verbose", "-f", "-"], input=script, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr


def _stores(clusters):
    return {n: clusters.get("rt_" + n) for n in STORE_NAMES}


@pytest.fixture
def routing(clusters, pgshift_factory):
    """RouteEnv: stores a, b, c behind one pgshift (default and control store a)."""
    stores = _stores(clusters)
    ep = pgshift_factory(stores=stores, settings={"default_store": DEFAULT_STORE,
                                                  "log_level": "info"})
    return RouteEnv(stores, [ep])


@pytest.fixture
def routing2(clusters, pgshift_factory):
    """RouteEnv with two pgshift processes on the same stores and control store."""
    stores = _stores(clusters)
    eps = [pgshift_factory(stores=stores, settings={"default_store": DEFAULT_STORE,
                                                    "log_level": "info"})
           for _ in range(2)]
    return RouteEnv(stores, eps)


N_EVENTS = 3


def place_tenants(env):
    """Three fresh tenants: one unrouted (default store), one on b, one on c.
    Returns [(tenant, home store)]."""
    ta, tb, tc = new_tenant(), new_tenant(), new_tenant()
    env.route(tb, "b")
    env.route(tc, "c")
    return [(ta, DEFAULT_STORE), (tb, "b"), (tc, "c")]


def check_tenant_rows(env, tenant, home, events=N_EVENTS, outbox=N_EVENTS, snapshots=1,
                      checkpoint=None):
    """Every row of tenant on its home store, none elsewhere."""
    env.expect_only_on(home, "events", "tenant_id", tenant, events)
    env.expect_only_on(home, "event_outbox", "tenant_id", tenant, outbox)
    env.expect_only_on(home, "snapshots", "tenant_id", tenant, snapshots)
    if checkpoint is not None:
        env.expect_only_on(home, "projection_checkpoints", "projection_name", checkpoint, 1)


def pgshift_log(ep, tail=4000):
    """The tail of pgshift's stderr, for failure messages."""
    return ep.pgshift.stderr()[-tail:] if ep.pgshift else ""


def payload(**kw):
    return json.dumps(kw)
