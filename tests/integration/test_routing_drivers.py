"""The event-store workload across stores through asyncpg (prepared
statements: Parse and Describe before any Bind, the same statement reused for
tenants on different stores) and node `pg` (node/routing.js), and the
session tenant taken from a `user.tenant` user name."""

import asyncio
import json
import os
import shutil
import subprocess
import uuid

import asyncpg
import psycopg
import pytest

from harness import PASSWORDS
from routing_util import (AGG_TYPE, DEFAULT_STORE, N_EVENTS, SQL, RouteEnv, check_tenant_rows,
                          new_id, new_tenant, payload, pg_sql, pgshift_log, place_tenants,
                          routing)  # noqa: F401 (fixture)

pytestmark = [pytest.mark.proxy_only, pytest.mark.feature("routing")]

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def aconnect(ep, **kw):
    return await asyncpg.connect(host=ep.host, port=ep.port, user="app",
                                 password=PASSWORDS["app"], database=ep.dbname, ssl=False,
                                 timeout=10, **kw)


class Stmts:
    """The workload's statements, prepared once on a connection."""

    @classmethod
    async def prepare(cls, conn):
        self = cls()
        for name in SQL:
            setattr(self, name, await conn.prepare(pg_sql(name)))
        return self


async def asyncpg_tenant(conn, st, tenant):
    """The workload for one tenant with prepared statements `st`."""
    t = uuid.UUID(tenant)
    agg = uuid.uuid4()
    written = []
    for v in range(1, N_EVENTS + 1):
        eid = uuid.uuid4()
        async with conn.transaction():
            assert await st.probe.fetchval(agg, AGG_TYPE) == v - 1
            gp = await st.append.fetchval(eid, agg, AGG_TYPE, "Ev%d" % v, t, "asyncpg", v,
                                          payload(v=v))
            await st.outbox.fetch(eid, agg, AGG_TYPE, "Ev%d" % v, t, payload(v=v))
        written.append((v, str(eid), gp))
    dup = uuid.uuid4()
    with pytest.raises(asyncpg.UniqueViolationError) as ei:
        async with conn.transaction():
            assert await st.probe.fetchval(agg, AGG_TYPE) == N_EVENTS
            await st.outbox.fetch(dup, agg, AGG_TYPE, "Dup", t, payload())
            await st.append.fetchval(dup, agg, AGG_TYPE, "Dup", t, "asyncpg", N_EVENTS, payload())
    assert ei.value.sqlstate == "23505"
    assert not conn.is_in_transaction()
    rows = await st.stream.fetch(agg, AGG_TYPE)
    assert [(r[0], r[1]) for r in rows] == [(w[0], w[1]) for w in written]
    assert {r[2] for r in rows} == {tenant}
    await st.snapshot_upsert.fetch(agg, AGG_TYPE, t, 2, payload())
    await st.snapshot_upsert.fetch(agg, AGG_TYPE, t, 3, payload())
    assert [tuple(r) for r in await st.snapshot_read.fetch(agg, AGG_TYPE)] == [(3, tenant)]
    proj = "asyncpg-" + tenant
    async with conn.transaction():
        feed = await st.feed.fetch(t, written[0][2] - 1)
        assert [r[1] for r in feed] == [w[1] for w in written]
        assert {r[2] for r in feed} == {tenant}
        await st.checkpoint.fetch(proj, uuid.UUID(feed[-1][1]), "Ev3", feed[-1][0])
    return {"agg": str(agg), "dup": str(dup), "proj": proj}


def test_asyncpg_prepared_statements_reused_across_stores(routing):
    env = routing
    placed = place_tenants(env)

    async def main():
        conn = await aconnect(env.ep)
        try:
            # Prepared before any tenant is known: Parse + Describe, no Bind.
            st = await Stmts.prepare(conn)
            assert [p.name for p in st.append.get_parameters()][:2] == ["uuid", "uuid"]
            out = {}
            # Twice round the three stores with the same statements.
            for _ in range(2):
                for tenant, _home in placed:
                    out.setdefault(tenant, []).append(await asyncpg_tenant(conn, st, tenant))
            return out
        finally:
            await conn.close()

    results = run(main())
    for tenant, home in placed:
        check_tenant_rows(env, tenant, home, events=2 * N_EVENTS, outbox=2 * N_EVENTS,
                          snapshots=2)
        for r in results[tenant]:
            env.expect_only_on(home, "projection_checkpoints", "projection_name", r["proj"], 1)
            assert sum(env.counts("events", "event_id", r["dup"]).values()) == 0
            assert sum(env.counts("event_outbox", "event_id", r["dup"]).values()) == 0


def test_asyncpg_one_off_queries(routing):
    """conn.fetchval/execute with arguments on a fresh connection (nothing
    prepared yet): asyncpg sends Parse, Describe, Flush, then Bind, Execute,
    Sync, one batch whose Parse/Describe carry no tenant and whose Bind
    does (issue #3 item 6). Tenants on b and c first, then the default one."""
    env = routing
    placed = place_tenants(env)[::-1]

    async def one(tenant):
        conn = await aconnect(env.ep)
        try:
            t = uuid.UUID(tenant)
            eid = uuid.uuid4()
            await conn.execute(pg_sql("outbox"), eid, uuid.uuid4(), AGG_TYPE, "Ev", t, payload())
            n = await conn.fetchval("SELECT count(*) FROM event_outbox WHERE tenant_id = $1", t)
            # The same texts again: asyncpg now only sends Bind, Execute, Sync.
            await conn.execute(pg_sql("outbox"), uuid.uuid4(), uuid.uuid4(), AGG_TYPE, "Ev", t,
                               payload())
            n2 = await conn.fetchval("SELECT count(*) FROM event_outbox WHERE tenant_id = $1", t)
            return str(eid), n, n2
        finally:
            await conn.close()

    async def main():
        out, errors = {}, {}
        for tenant, home in placed:
            try:
                out[tenant] = await one(tenant)
            except asyncpg.PostgresError as e:
                errors[home] = "%s %s" % (e.sqlstate, e)
        return out, errors

    results, errors = run(main())
    assert not errors, "one-off asyncpg queries refused (store: error): %r" % errors
    for tenant, home in placed:
        eid, n, n2 = results[tenant]
        assert (n, n2) == (1, 2)
        env.expect_only_on(home, "event_outbox", "event_id", eid, 1)
        env.expect_only_on(home, "event_outbox", "tenant_id", tenant, 2)


@pytest.mark.parametrize("first_use", ["plain", "after-simple-query", "in-transaction"])
def test_asyncpg_prepare_then_first_use_on_another_store(routing, first_use):
    """conn.prepare() (Parse, Describe, Flush: no Sync, answered by the
    default store) and then the statement's first Bind for a tenant on store
    b: directly, after a simple Query, or inside a transaction."""
    env = routing
    tb = new_tenant()
    env.route(tb, "b")
    eid = uuid.uuid4()

    async def main():
        conn = await aconnect(env.ep)
        try:
            stmt = await conn.prepare(pg_sql("outbox"))
            args = (eid, uuid.uuid4(), AGG_TYPE, "Ev", uuid.UUID(tb), payload())
            if first_use == "after-simple-query":
                await conn.execute("SELECT 1")
            if first_use == "in-transaction":
                async with conn.transaction():
                    await stmt.fetch(*args)
            else:
                await stmt.fetch(*args)
        finally:
            await conn.close()

    run(main())
    env.expect_only_on("b", "event_outbox", "event_id", str(eid), 1)


def test_asyncpg_session_tenant_from_startup(routing):
    """pgshift.tenant as a startup parameter (asyncpg server_settings), one
    connection per tenant; the tenantless checkpoint follows the session."""
    env = routing
    placed = place_tenants(env)

    async def main():
        out = {}
        for tenant, _home in placed:
            conn = await aconnect(env.ep, server_settings={"pgshift.tenant": tenant})
            try:
                st = await Stmts.prepare(conn)
                out[tenant] = await asyncpg_tenant(conn, st, tenant)
                ck = "asyncpg-session-" + tenant
                await st.checkpoint.fetch(ck, uuid.uuid4(), "Ev", 1)
                out[tenant]["ck"] = ck
            finally:
                await conn.close()
        return out

    results = run(main())
    for tenant, home in placed:
        check_tenant_rows(env, tenant, home, checkpoint=results[tenant]["proj"])
        env.expect_only_on(home, "projection_checkpoints", "projection_name",
                           results[tenant]["ck"], 1)


def test_asyncpg_executemany_on_one_store(routing):
    """executemany (one batch) of outbox rows of tenants that share a store."""
    env = routing
    t1, t2 = new_tenant(), new_tenant()
    env.route(t1, "c")
    env.route(t2, "c")

    async def main():
        conn = await aconnect(env.ep)
        try:
            rows = [(uuid.uuid4(), uuid.uuid4(), AGG_TYPE, "Ev", uuid.UUID(t), payload(i=i))
                    for i in range(10) for t in (t1, t2)]
            await conn.executemany(pg_sql("outbox"), rows)
            return await conn.fetchval("SELECT count(*) FROM event_outbox WHERE tenant_id = $1",
                                       uuid.UUID(t1))
        finally:
            await conn.close()

    assert run(main()) == 10
    env.expect_only_on("c", "event_outbox", "tenant_id", t1, 10)
    env.expect_only_on("c", "event_outbox", "tenant_id", t2, 10)


# -- node pg ----------------------------------------------------------------


def node(ep, script, plan, timeout=60):
    exe = shutil.which("node") or shutil.which("nodejs")
    assert exe, "node is not installed (scripts/install-deps.sh)"
    env = ep.env()
    env["ROUTING_PLAN"] = json.dumps(plan)
    p = subprocess.run([exe, os.path.join(NODE_DIR, script)], cwd=NODE_DIR, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    assert p.returncode == 0, "%s failed:\n%s%s\npgshift:\n%s" % (script, p.stdout, p.stderr,
                                                                   pgshift_log(ep))
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("session", ["none", "set", "options"])
def test_node_pg_workload(routing, session):
    env = routing
    placed = place_tenants(env)
    tenants = [{"tenant": t, "agg": new_id(), "eids": [new_id() for _ in range(N_EVENTS)],
                "dup": new_id(), "proj": "node-" + t} for t, _ in placed]
    sql = {name: pg_sql(name) for name in SQL}
    out = node(env.ep, "routing.js", {"session": session, "sql": sql, "tenants": tenants})
    for spec, (tenant, home) in zip(tenants, placed):
        r = out[tenant]
        assert r["probes"] == list(range(N_EVENTS)), r
        assert r["positions"] == sorted(r["positions"])
        assert r["conflictProbe"] == N_EVENTS
        assert r["conflict"] == "23505", r
        assert r["stream"] == [[v, e, tenant] for v, e in enumerate(spec["eids"], 1)]
        assert r["snapshot"] == [[N_EVENTS, tenant]]
        assert [f[1] for f in r["feed"]] == spec["eids"]
        assert {f[2] for f in r["feed"]} == {tenant}
        assert [f[0] for f in r["feed"]] == r["positions"]
        check_tenant_rows(env, tenant, home, checkpoint=spec["proj"])
        assert sum(env.counts("event_outbox", "event_id", spec["dup"]).values()) == 0


# -- user.tenant --------------------------------------------------------------


def test_session_tenant_from_user_name(clusters, pgshift_factory):
    stores = {n: clusters.get("rt_" + n) for n in ("a", "b", "c")}
    ep = pgshift_factory(stores=stores, settings={"default_store": DEFAULT_STORE,
                                                  "tenant_from_user": "true"})
    env = RouteEnv(stores, [ep])
    placed = place_tenants(env)
    for tenant, home in placed:
        with psycopg.connect(ep.conninfo(user="app", password=PASSWORDS["app"]).replace(
                "user=app", "user=app.%s" % tenant), autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "app"
            agg = new_id()
            with conn.transaction():
                v = conn.execute(SQL["probe"], (agg, AGG_TYPE)).fetchone()[0]
                conn.execute(SQL["outbox"], (new_id(), agg, AGG_TYPE, "Ev", tenant, payload()))
                conn.execute(SQL["append"], (new_id(), agg, AGG_TYPE, "Ev", tenant, "u", v + 1,
                                             payload()))
            # A checkpoint carries no tenant: the user name's tenant decides.
            ck = "user-" + tenant
            conn.execute(SQL["checkpoint"], (ck, new_id(), "Ev", 1))
            # A statement for another tenant contradicts the session tenant.
            other = placed[(placed.index((tenant, home)) + 1) % 3][0]
            with pytest.raises(psycopg.Error) as ei:
                conn.execute(SQL["outbox"], (new_id(), agg, AGG_TYPE, "Ev", other, payload()))
            assert ei.value.sqlstate == "42501"
        env.expect_only_on(home, "events", "tenant_id", tenant, 1)
        env.expect_only_on(home, "event_outbox", "tenant_id", tenant, 1)
        env.expect_only_on(home, "projection_checkpoints", "projection_name", ck, 1)
    for tenant, home in placed:
        env.expect_only_on(home, "event_outbox", "tenant_id", tenant, 1)
