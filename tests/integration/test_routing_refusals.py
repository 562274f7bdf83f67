"""The routing refusals of issue #3 item 5, each with its SQLSTATE:
  0A000  a statement in a transaction bound to another store
  0A000  a multi-row INSERT whose tenants live on different stores
  42501  a statement tenant that contradicts the session tenant
  0A000  statements of one extended-protocol batch (between Syncs) routing to
         different stores
  0A000  a read whose tenants (tenant_id = a OR tenant_id = b, IN lists) live
         on different stores
in the simple and the extended protocol and inside a pipeline. After each:
nothing of the refused statement is on any store (checked directly) and the
connection keeps working (the next transaction commits on the right store)."""

import asyncio
import struct
import uuid

import asyncpg
import psycopg
import pytest

from harness import PASSWORDS, RawConn, parse_fields
from routing_util import (AGG_TYPE, SQL, lit, literal_sql, new_id, new_tenant, payload,
                          pg_sql, routing)  # noqa: F401 (fixture)

pytestmark = [pytest.mark.proxy_only, pytest.mark.feature("routing")]

PROTOCOLS = ["extended", "simple"]


@pytest.fixture
def placed(routing):
    """tb, tb2 on store b; tc on store c."""
    t = {"tb": new_tenant(), "tb2": new_tenant(), "tc": new_tenant()}
    routing.route(t["tb"], "b")
    routing.route(t["tb2"], "b")
    routing.route(t["tc"], "c")
    return t


def cursor(conn, proto):
    return psycopg.ClientCursor(conn) if proto == "simple" else conn.cursor()


def outbox_row(tenant, eid=None):
    return (eid or new_id(), new_id(), AGG_TYPE, "Ev", tenant, payload())


def nowhere(env, table, column, value):
    got = env.counts(table, column, value)
    assert sum(got.values()) == 0, "%s.%s = %s reached a store: %r" % (table, column, value, got)


def still_works(env, conn, proto, tenant, home):
    """A full append transaction for tenant on conn commits on its home store."""
    cur = cursor(conn, proto)
    agg, eid = new_id(), new_id()
    with conn.transaction():
        cur.execute(SQL["probe"], (agg, AGG_TYPE))
        v = cur.fetchone()[0]
        cur.execute(SQL["append"], (eid, agg, AGG_TYPE, "Ev", tenant, "t", v + 1, payload()))
        assert cur.fetchone()[0] > 0
    env.expect_only_on(home, "events", "event_id", eid, 1)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_cross_store_statement_in_transaction(routing, placed, proto):
    env = routing
    tb, tc = placed["tb"], placed["tc"]
    first, refused, read_refused = new_id(), new_id(), new_id()
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        cur = cursor(conn, proto)
        with pytest.raises(psycopg.errors.FeatureNotSupported) as ei:
            with conn.transaction():
                cur.execute(SQL["outbox"], outbox_row(tb, first))  # binds to b
                cur.execute(SQL["outbox"], outbox_row(tc, refused))  # c: refused
        assert ei.value.sqlstate == "0A000"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # A read of the other store's tenant inside a bound transaction, too.
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            with conn.transaction():
                cur.execute(SQL["outbox"], outbox_row(tc, read_refused))  # binds to c
                cur.execute(SQL["feed"], (tb, 0))
        still_works(env, conn, proto, tb, "b")
        still_works(env, conn, proto, tc, "c")
    nowhere(env, "event_outbox", "event_id", refused)
    # The transaction failed as a whole: its first statement was rolled back.
    nowhere(env, "event_outbox", "event_id", first)
    nowhere(env, "event_outbox", "event_id", read_refused)


def test_cross_store_statement_in_transaction_psql(routing, placed):
    env = routing
    tb, tc = placed["tb"], placed["tc"]
    first, refused, after = new_id(), new_id(), new_id()
    script = "\n".join([
        "BEGIN;",
        literal_sql("outbox", *outbox_row(tb, first)) + ";",
        literal_sql("outbox", *outbox_row(tc, refused)) + ";",
        "COMMIT;",
        literal_sql("outbox", *outbox_row(tc, after)) + ";",
        "\\echo @@done",
    ]) + "\n"
    rc, out, err = env.psql(script)
    assert "@@done" in out, err
    errors = [ln for ln in err.splitlines() if "ERROR:" in ln]
    assert len(errors) == 1 and "0A000" in errors[0], err
    nowhere(env, "event_outbox", "event_id", refused)
    nowhere(env, "event_outbox", "event_id", first)
    env.expect_only_on("c", "event_outbox", "event_id", after, 1)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_or_of_tenants(routing, placed, proto):
    """A read whose WHERE is an OR of tenants: on one store it runs there and
    returns every tenant's rows; across stores it is refused (0A000); an OR
    with a branch that names no tenant names none and goes to the default
    store."""
    env = routing
    tb, tb2, tc = placed["tb"], placed["tb2"], placed["tc"]
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        cur = cursor(conn, proto)
        for t in (tb, tb2, tc):
            still_works(env, conn, proto, t, "c" if t == tc else "b")
        cur.execute("SELECT count(DISTINCT tenant_id) FROM events WHERE tenant_id = %s "
                    "OR (tenant_id = %s AND version >= 1)", (tb, tb2))
        assert cur.fetchone()[0] == 2
        with pytest.raises(psycopg.errors.FeatureNotSupported) as ei:
            cur.execute("SELECT count(*) FROM events WHERE tenant_id = %s OR tenant_id = %s",
                        (tb, tc))
        assert ei.value.sqlstate == "0A000" and "different stores" in str(ei.value)
        cur.execute("SELECT count(*) FROM events WHERE tenant_id = %s OR version = -1", (tc,))
        assert cur.fetchone()[0] == 0  # the default store (a) holds none of tc's rows
        still_works(env, conn, proto, tc, "c")


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_multi_row_insert_across_stores(routing, placed, proto):
    env = routing
    tb, tb2, tc = placed["tb"], placed["tb2"], placed["tc"]
    agg = new_id()
    e1, e2 = new_id(), new_id()
    sql = ("INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, "
           "version, timestamp, payload) VALUES (%s, %s, %s, 'Ev', %s, 1, now(), '{}'), "
           "(%s, %s, %s, 'Ev', %s, 1, now(), '{}')")
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        cur = cursor(conn, proto)
        with pytest.raises(psycopg.errors.FeatureNotSupported) as ei:
            cur.execute(sql, (e1, agg, AGG_TYPE, tb, e2, new_id(), AGG_TYPE, tc))
        assert ei.value.sqlstate == "0A000"
        nowhere(env, "events", "event_id", e1)
        nowhere(env, "events", "event_id", e2)
        # Inside a transaction: refused the same way, the transaction fails.
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            with conn.transaction():
                cur.execute(sql, (e1, agg, AGG_TYPE, tb, e2, new_id(), AGG_TYPE, tc))
        nowhere(env, "events", "event_id", e1)
        # Two tenants that share a store: accepted.
        cur.execute(sql, (e1, agg, AGG_TYPE, tb, e2, new_id(), AGG_TYPE, tb2))
        still_works(env, conn, proto, tc, "c")
    env.expect_only_on("b", "events", "event_id", e1, 1)
    env.expect_only_on("b", "events", "event_id", e2, 1)


def test_multi_row_insert_across_stores_psql(routing, placed):
    env = routing
    tb, tc = placed["tb"], placed["tc"]
    e1, e2, after = new_id(), new_id(), new_id()
    script = ("INSERT INTO event_outbox (event_id, aggregate_id, aggregate_type, event_type, "
              "tenant_id, payload) VALUES (%s, %s, 'Order', 'Ev', %s, '{}'), "
              "(%s, %s, 'Order', 'Ev', %s, '{}');\n" % (lit(e1), lit(new_id()), lit(tb), lit(e2),
                                                       lit(new_id()), lit(tc))
              + literal_sql("outbox", *outbox_row(tb, after)) + ";\n\\echo @@done\n")
    rc, out, err = env.psql(script)
    assert "@@done" in out, err
    errors = [ln for ln in err.splitlines() if "ERROR:" in ln]
    assert len(errors) == 1 and "0A000" in errors[0], err
    nowhere(env, "event_outbox", "event_id", e1)
    nowhere(env, "event_outbox", "event_id", e2)
    env.expect_only_on("b", "event_outbox", "event_id", after, 1)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_statement_tenant_contradicts_session_tenant(routing, placed, proto):
    env = routing
    tb, tb2, tc = placed["tb"], placed["tb2"], placed["tc"]
    refused = [new_id() for _ in range(3)]
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        conn.execute("SET pgshift.tenant = %s" % lit(tb))
        cur = cursor(conn, proto)
        # Another store's tenant, and another tenant of the same store.
        for other, eid in ((tc, refused[0]), (tb2, refused[1])):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
                cur.execute(SQL["outbox"], outbox_row(other, eid))
            assert ei.value.sqlstate == "42501", ei.value
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(SQL["feed"], (tb2, 0))
        # Inside a transaction bound to the session tenant's store.
        ok = new_id()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.transaction():
                cur.execute(SQL["outbox"], outbox_row(tb, ok))
                cur.execute(SQL["outbox"], outbox_row(tb2, refused[2]))
        still_works(env, conn, proto, tb, "b")
    for eid in refused + [ok]:
        nowhere(env, "event_outbox", "event_id", eid)
    nowhere(env, "event_outbox", "tenant_id", tb2)
    nowhere(env, "event_outbox", "tenant_id", tc)


def test_statement_tenant_contradicts_startup_tenant_psql(routing, placed):
    env = routing
    tb, tc = placed["tb"], placed["tc"]
    refused, after = new_id(), new_id()
    script = (literal_sql("outbox", *outbox_row(tc, refused)) + ";\n"
              + literal_sql("outbox", *outbox_row(tb, after)) + ";\n\\echo @@done\n")
    rc, out, err = env.psql(script, options="-c pgshift.tenant=%s" % tb)
    assert "@@done" in out, err
    errors = [ln for ln in err.splitlines() if "ERROR:" in ln]
    assert len(errors) == 1 and "42501" in errors[0], err
    nowhere(env, "event_outbox", "event_id", refused)
    env.expect_only_on("b", "event_outbox", "event_id", after, 1)


# -- one extended batch across stores ---------------------------------------


def _parse_bind_execute(sql, params):
    """Unnamed Parse + Bind (text parameters) + Execute, as bytes."""
    def msg(tag, body):
        return tag + struct.pack("!I", len(body) + 4) + body
    out = msg(b"P", b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))
    body = b"\0\0" + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        v = p.encode()
        body += struct.pack("!i", len(v)) + v
    body += struct.pack("!H", 0)
    out += msg(b"B", body)
    out += msg(b"E", b"\0" + struct.pack("!I", 0))
    return out


def test_extended_batch_across_stores_raw(routing, placed):
    """Parse/Bind/Execute for b, then for c, then one Sync: refused 0A000;
    the batch is one implicit transaction, so nothing of it stays."""
    env = routing
    tb, tc = placed["tb"], placed["tc"]
    e1, e2, after = new_id(), new_id(), new_id()
    raw = RawConn(env.ep.host, env.ep.port)
    try:
        raw.startup("app", env.ep.dbname, PASSWORDS["app"])
        sql = pg_sql("outbox")
        data = _parse_bind_execute(sql, list(outbox_row(tb, e1)))
        data += _parse_bind_execute(sql, list(outbox_row(tc, e2)))
        data += b"S\0\0\0\x04"
        raw.send(data)
        seen, err = [], None
        while True:
            tag, body = raw.recv_msg()
            seen.append(tag)
            if tag == b"E":
                err = parse_fields(body)
            if tag == b"Z":
                assert body == b"I", body
                break
        assert err is not None and err["C"] == "0A000", (seen, err)
        # Protocol state intact: the next query (simple) works.
        rows, qerr = raw.query(literal_sql("outbox", *outbox_row(tc, after)))
        assert qerr is None, qerr
        rows, qerr = raw.query("SELECT 1")
        assert rows == [["1"]] and qerr is None
    finally:
        raw.close()
    nowhere(env, "event_outbox", "event_id", e2)
    nowhere(env, "event_outbox", "event_id", e1)
    env.expect_only_on("c", "event_outbox", "event_id", after, 1)


def test_refusals_inside_a_pipeline(routing, placed):
    """psycopg pipeline: batches separated by Syncs; the batch that mixes
    stores and the one that contradicts the session are refused, the others
    land, and the pipeline and the connection go on."""
    env = routing
    tb, tb2, tc = placed["tb"], placed["tb2"], placed["tc"]
    ok1, ok2, ok3 = new_id(), new_id(), new_id()
    mixed_b, mixed_c = new_id(), new_id()
    multi1, multi2 = new_id(), new_id()
    errors = []
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        with conn.pipeline() as p:
            conn.execute(SQL["outbox"], outbox_row(tb, ok1))
            p.sync()
            try:
                conn.execute(SQL["outbox"], outbox_row(tb, mixed_b))
                conn.execute(SQL["outbox"], outbox_row(tc, mixed_c))
                p.sync()
            except psycopg.Error as e:
                errors.append(e.sqlstate)
            conn.execute(SQL["outbox"], outbox_row(tc, ok2))
            p.sync()
            try:
                conn.execute("INSERT INTO event_outbox (event_id, aggregate_id, aggregate_type, "
                             "event_type, tenant_id, payload) VALUES (%s, %s, 'O', 'E', %s, '{}'), "
                             "(%s, %s, 'O', 'E', %s, '{}')",
                             (multi1, new_id(), tb2, multi2, new_id(), tc))
                p.sync()
            except psycopg.Error as e:
                errors.append(e.sqlstate)
            conn.execute(SQL["outbox"], outbox_row(tb2, ok3))
            p.sync()
        assert errors == ["0A000", "0A000"]
        # With a session tenant: a contradicting statement inside a pipeline.
        conn.execute("SET pgshift.tenant = %s" % lit(tb))
        bad, good = new_id(), new_id()
        with conn.pipeline() as p:
            try:
                conn.execute(SQL["outbox"], outbox_row(tb2, bad))
                p.sync()
            except psycopg.Error as e:
                errors.append(e.sqlstate)
            conn.execute(SQL["outbox"], outbox_row(tb, good))
            p.sync()
        assert errors[2:] == ["42501"]
        conn.execute("RESET pgshift.tenant")
        still_works(env, conn, "extended", tc, "c")
    env.expect_only_on("b", "event_outbox", "event_id", ok1, 1)
    env.expect_only_on("c", "event_outbox", "event_id", ok2, 1)
    env.expect_only_on("b", "event_outbox", "event_id", ok3, 1)
    env.expect_only_on("b", "event_outbox", "event_id", good, 1)
    for eid in (mixed_b, mixed_c, multi1, multi2, bad):
        nowhere(env, "event_outbox", "event_id", eid)


def test_asyncpg_executemany_across_stores(routing, placed):
    """asyncpg executemany sends every Bind/Execute before one Sync: rows of
    tenants on b and c in one call are refused, none of them lands."""
    env = routing
    tb, tc = placed["tb"], placed["tc"]
    ids = [uuid.uuid4() for _ in range(4)]

    async def main():
        conn = await asyncpg.connect(host=env.ep.host, port=env.ep.port, user="app",
                                     password=PASSWORDS["app"], database=env.ep.dbname,
                                     ssl=False, timeout=10)
        try:
            stmt = await conn.prepare(pg_sql("outbox"))
            # A Sync on the default store ends the batch of prepare()'s
            # Parse/Describe/Flush (the case where a tenant's Bind follows
            # them directly has its own test:
            # test_routing_drivers.py::test_asyncpg_one_off_queries).
            assert await conn.fetchval("SELECT 1") == 1
            await stmt.fetch(uuid.uuid4(), uuid.uuid4(), AGG_TYPE, "Ev", uuid.UUID(tb), "{}")
            rows = [(ids[i], uuid.uuid4(), AGG_TYPE, "Ev", uuid.UUID(t), "{}")
                    for i, t in enumerate((tb, tc, tb, tc))]
            with pytest.raises(asyncpg.PostgresError) as ei:
                await stmt.executemany(rows)
            code = ei.value.sqlstate
            # The connection goes on.
            n = await conn.fetchval("SELECT 41 + 1")
            await stmt.fetch(uuid.uuid4(), uuid.uuid4(), AGG_TYPE, "Ev", uuid.UUID(tc), "{}")
            return code, n
        finally:
            await conn.close()

    code, n = asyncio.run(asyncio.wait_for(main(), 60))
    assert (code, n) == ("0A000", 42)
    for i in ids:
        nowhere(env, "event_outbox", "event_id", str(i))
    env.expect_only_on("b", "event_outbox", "tenant_id", tb, 1)
    env.expect_only_on("c", "event_outbox", "tenant_id", tc, 1)
