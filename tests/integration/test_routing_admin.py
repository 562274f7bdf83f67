"""Placing tenants on stores through the admin console (ROUTE TENANT, SHOW
ROUTES, SHOW TENANTS), its refusals, and a route change made through one
pgshift process reaching a second one on the same control store."""

import time

import psycopg
import pytest

from routing_util import (AGG_TYPE, DEFAULT_STORE, SQL, lit, new_id, new_tenant, payload,
                          routing, routing2)  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.proxy_only, pytest.mark.feature("routing")]


def where_routed(conn, tenant):
    """Port of the store that answers a read carrying `tenant` (nothing written)."""
    return conn.execute("SELECT inet_server_port(), count(*) FROM events WHERE tenant_id = %s",
                        (tenant,)).fetchone()[0]


def write_event(conn, tenant):
    agg = new_id()
    with conn.transaction():
        conn.execute(SQL["append"], (new_id(), agg, AGG_TYPE, "Created", tenant, "tester", 1,
                                     payload(n=1)))
    return agg


def test_route_tenant_places_tenants_and_unrouted_tenant_uses_default(routing):
    tb, tc, ta = new_tenant(), new_tenant(), new_tenant()
    routing.route(tb, "b")
    routing.route(tc, "c")
    routes = routing.routes()
    assert routes.get(tb) == "b" and routes.get(tc) == "c"
    assert ta not in routes
    # SHOW ROUTES through psql too, with the state column.
    rc, rows, err = routing.admin_psql("SHOW ROUTES")
    assert rc == 0, err
    assert [tb, "b", "normal"] in [r[:3] for r in rows], rows
    ports = {n: c.port for n, c in routing.stores.items()}
    with psycopg.connect(routing.ep.conninfo(), autocommit=True) as conn:
        assert where_routed(conn, tb) == ports["b"]
        assert where_routed(conn, tc) == ports["c"]
        assert where_routed(conn, ta) == ports[DEFAULT_STORE]
        aggs = {t: write_event(conn, t) for t in (ta, tb, tc)}
    for t, home in ((ta, DEFAULT_STORE), (tb, "b"), (tc, "c")):
        routing.expect_only_on(home, "events", "tenant_id", t, 1)
        routing.expect_only_on(home, "events", "aggregate_id", aggs[t], 1)
    # SHOW TENANTS names the routed tenants with their store.
    tenants = {r[0]: r for r in routing.admin("SHOW TENANTS")}
    assert tenants[tb][1] == "b" and tenants[tc][1] == "c", tenants


def test_route_tenant_moves_a_tenant_without_rows(routing):
    t = new_tenant()
    routing.route(t, "b")
    routing.route(t, "c")  # still no rows: it may be placed again
    assert routing.routes()[t] == "c"
    with psycopg.connect(routing.ep.conninfo(), autocommit=True) as conn:
        deadline = time.monotonic() + 2
        while where_routed(conn, t) != routing.stores["c"].port:
            assert time.monotonic() < deadline, "pgshift still routes %s elsewhere" % t
            time.sleep(0.02)
        agg = write_event(conn, t)
    routing.expect_only_on("c", "events", "aggregate_id", agg, 1)


def test_route_tenant_refuses_a_tenant_with_rows(routing):
    # Rows on the default store (tenant never routed), written through pgshift.
    t1 = new_tenant()
    with psycopg.connect(routing.ep.conninfo(), autocommit=True) as conn:
        write_event(conn, t1)
    code, msg = routing.admin_error("ROUTE TENANT %s TO 'b'" % lit(t1))
    assert code == "55000", msg
    assert t1 not in routing.routes()
    # Rows on its routed store.
    t2 = new_tenant()
    routing.route(t2, "b")
    with psycopg.connect(routing.ep.conninfo(), autocommit=True) as conn:
        conn.execute("SET pgshift.tenant = %s" % lit(t2))
        conn.execute(SQL["outbox"], (new_id(), new_id(), AGG_TYPE, "Created", t2, payload()))
    routing.expect_only_on("b", "event_outbox", "tenant_id", t2, 1)
    code, msg = routing.admin_error("ROUTE TENANT %s TO 'c'" % lit(t2))
    assert code == "55000", msg
    assert routing.routes()[t2] == "b"
    # Rows already on the target store (put there behind pgshift's back).
    t3 = new_tenant()
    with routing.direct("c") as d:
        d.execute(SQL["snapshot_upsert"], (new_id(), AGG_TYPE, t3, 1, payload()))
    code, msg = routing.admin_error("ROUTE TENANT %s TO 'c'" % lit(t3))
    assert code == "55000", msg
    assert t3 not in routing.routes()
    # psql sees the same error.
    rc, _, err = routing.admin_psql("ROUTE TENANT %s TO 'b'" % lit(t1))
    assert rc != 0 and "has rows" in err, err


def test_route_tenant_refuses_an_unknown_store(routing):
    t = new_tenant()
    code, msg = routing.admin_error("ROUTE TENANT %s TO 'nowhere'" % lit(t))
    assert code == "42704", msg
    assert t not in routing.routes()
    # The console keeps working on the same connection.
    with psycopg.connect(routing.admin_conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("ROUTE TENANT %s TO 'nowhere'" % lit(t))
        assert ei.value.sqlstate == "42704"
        row = conn.execute("ROUTE TENANT %s TO 'b'" % lit(t)).fetchone()
        assert row[0] == t and row[1] == "b"


def test_route_change_reaches_a_second_pgshift(routing2):
    env = routing2
    p1, p2 = env.endpoints
    t = new_tenant()
    ports = {n: c.port for n, c in env.stores.items()}
    # A session of process 2 opened before the change.
    with psycopg.connect(p2.conninfo(), autocommit=True) as old:
        assert where_routed(old, t) == ports[DEFAULT_STORE]
        env.route(t, "b", ep=p1)
        took = env.wait_route(t, "b", p2, timeout=1.0)
        assert took <= 1.0
        assert where_routed(old, t) == ports["b"]
        agg_old = write_event(old, t)
        with psycopg.connect(p2.conninfo(), autocommit=True) as new:
            agg_new = write_event(new, t)
    env.expect_only_on("b", "events", "aggregate_id", agg_old, 1)
    env.expect_only_on("b", "events", "aggregate_id", agg_new, 1)
    env.expect_only_on("b", "events", "tenant_id", t, 2)

    # A tenant placed twice (b, then c) before it has rows: process 2 follows.
    t2 = new_tenant()
    env.route(t2, "b", ep=p1)
    env.wait_route(t2, "b", p2)
    env.route(t2, "c", ep=p1)
    env.wait_route(t2, "c", p2, timeout=1.0)
    with psycopg.connect(p2.conninfo()) as conn:
        # Append without a session tenant: the version probe carries only the key.
        agg = new_id()
        with conn.transaction():
            v = conn.execute(SQL["probe"], (agg, AGG_TYPE)).fetchone()[0]
            assert v == 0
            conn.execute(SQL["append"], (new_id(), agg, AGG_TYPE, "Created", t2, "tester", v + 1,
                                         payload()))
    env.expect_only_on("c", "events", "tenant_id", t2, 1)
    # And the other way round: a change through process 2 reaches process 1.
    t3 = new_tenant()
    env.route(t3, "c", ep=p2)
    env.wait_route(t3, "c", p1, timeout=1.0)
    with psycopg.connect(p1.conninfo(), autocommit=True) as conn:
        write_event(conn, t3)
    env.expect_only_on("c", "events", "tenant_id", t3, 1)
