"""A transaction bound tentatively to the default store by its tenantless
first statement moves to the tenant's store in the middle of an extended
batch (issue #3, found by the cutover tests).

asyncpg's statement cache prepares each statement with Parse, Describe,
Flush (answered at once) and runs it with Bind, Execute, Sync. On a fresh
connection with no session tenant, the first transaction's version probe of a
new aggregate carries no tenant, so the transaction is bound tentatively to
the default store; the INSERT's Parse and Describe then go there too, and
only its Bind names the tenant, whose store is another one. Everything the
default store got in that batch was answered, so pgshift ends that batch
quietly, rolls the default store back, replays the BEGIN on the tenant's
store, prepares the INSERT there and runs the Bind there (it used to refuse:
0A000 "statement routes to store ... but this batch runs on store ...").
"""

import asyncio
import struct
import uuid

import asyncpg
import psycopg
import pytest

from harness import PASSWORDS, RawConn, parse_fields
from routing_util import (AGG_TYPE, DEFAULT_STORE, SQL, new_tenant, payload, pg_sql, pgshift_log,
                          routing)  # noqa: F401 (fixture)

pytestmark = [pytest.mark.proxy_only, pytest.mark.feature("routing")]

N_CONNS = 4


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def aconnect(ep):
    return await asyncpg.connect(host=ep.host, port=ep.port, user="app",
                                 password=PASSWORDS["app"], database=ep.dbname, ssl=False,
                                 timeout=10)


async def first_transaction(conn, tenant):
    """The cutover tests' first transaction on a fresh connection: probe a new
    aggregate, append its first event. Returns (probe, event_id, position)."""
    agg, eid = uuid.uuid4(), uuid.uuid4()
    async with conn.transaction():
        v = await conn.fetchval(pg_sql("probe"), agg, AGG_TYPE)
        rows = await conn.fetch(pg_sql("append"), eid, agg, AGG_TYPE, "Created",
                                uuid.UUID(tenant), "asyncpg", v + 1, payload(v=1))
    return v, str(eid), rows[0][0]


def test_asyncpg_first_transaction_moves_to_tenant_store(routing):
    env = routing
    tenant = new_tenant()
    env.route(tenant, "b")

    async def one():
        conn = await aconnect(env.ep)
        try:
            first = await first_transaction(conn, tenant)
            # A second one on the same connection: statements now cached
            # (Bind, Execute, Sync only), the transaction moves again.
            second = await first_transaction(conn, tenant)
            assert not conn.is_in_transaction()
            return first, second
        finally:
            await conn.close()

    async def main():
        out, errors = [], []
        for _ in range(N_CONNS):
            try:
                out.append(await one())
            except asyncpg.PostgresError as e:
                errors.append("%s %s" % (e.sqlstate, e))
        return out, errors

    results, errors = run(main())
    assert not errors, "first transactions failed: %r\n%s" % (errors, pgshift_log(env.ep))
    assert len(results) == N_CONNS
    eids = []
    for first, second in results:
        for v, eid, gp in (first, second):
            assert v == 0, "the probe of a new aggregate saw version %r" % v
            assert isinstance(gp, int) and gp > 0
            env.expect_only_on("b", "events", "event_id", eid, 1)
            eids.append(eid)
    assert len(set(eids)) == 2 * N_CONNS
    env.expect_only_on("b", "events", "tenant_id", tenant, 2 * N_CONNS)
    # The default store's tentative part was rolled back: no row there.
    assert env.count(DEFAULT_STORE, "events", "tenant_id", tenant) == 0


def test_asyncpg_concurrent_first_transactions(routing):
    """The same, on several connections at once."""
    env = routing
    tenant = new_tenant()
    env.route(tenant, "c")

    async def one():
        conn = await aconnect(env.ep)
        try:
            return await first_transaction(conn, tenant)
        finally:
            await conn.close()

    async def main():
        return await asyncio.gather(*[one() for _ in range(N_CONNS)])

    results = run(main())
    assert [r[0] for r in results] == [0] * N_CONNS
    for _v, eid, _gp in results:
        env.expect_only_on("c", "events", "event_id", eid, 1)
    env.expect_only_on("c", "events", "tenant_id", tenant, N_CONNS)


def test_asyncpg_bound_firmly_still_refused(routing):
    """A transaction bound firmly (a tenant write on b) does not move: the
    INSERT for a tenant on c is refused 0A000 and nothing lands."""
    env = routing
    tb, tc = new_tenant(), new_tenant()
    env.route(tb, "b")
    env.route(tc, "c")
    eid_b, eid_c = uuid.uuid4(), uuid.uuid4()

    async def main():
        conn = await aconnect(env.ep)
        try:
            with pytest.raises(asyncpg.PostgresError) as ei:
                async with conn.transaction():
                    await conn.execute(pg_sql("outbox"), eid_b, uuid.uuid4(), AGG_TYPE, "Ev",
                                       uuid.UUID(tb), payload())
                    await conn.fetch(pg_sql("append"), eid_c, uuid.uuid4(), AGG_TYPE, "Ev",
                                     uuid.UUID(tc), "asyncpg", 1, payload())
            assert ei.value.sqlstate == "0A000"
            assert not conn.is_in_transaction()
            # The connection is still usable.
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

    run(main())
    assert sum(env.counts("event_outbox", "event_id", str(eid_b)).values()) == 0
    assert sum(env.counts("events", "event_id", str(eid_c)).values()) == 0


@pytest.mark.parametrize("prepare", [False, True], ids=["unprepared", "prepared"])
def test_psycopg_extended_first_transaction(routing, prepare):
    """psycopg, extended protocol (server-side prepared with prepare=True:
    Parse+Sync first, then Bind/Describe/Execute/Sync), the same first
    transaction on fresh connections."""
    env = routing
    tenant = new_tenant()
    env.route(tenant, "b")
    eids = []
    for _ in range(N_CONNS):
        with psycopg.connect(env.ep.conninfo(user="app")) as conn:
            agg, eid = str(uuid.uuid4()), str(uuid.uuid4())
            with conn.transaction():
                v = conn.execute(SQL["probe"], (agg, AGG_TYPE), prepare=prepare).fetchone()[0]
                gp = conn.execute(SQL["append"], (eid, agg, AGG_TYPE, "Created", tenant,
                                                  "psycopg", v + 1, payload(v=1)),
                                  prepare=prepare).fetchone()[0]
            assert v == 0 and gp > 0
            eids.append(eid)
    for eid in eids:
        env.expect_only_on("b", "events", "event_id", eid, 1)
    env.expect_only_on("b", "events", "tenant_id", tenant, N_CONNS)


def _msg(tag, body):
    return tag + struct.pack("!I", len(body) + 4) + body


def _parse(name, sql):
    return _msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def _describe(name):
    return _msg(b"D", b"S" + name.encode() + b"\0")


def _bind_execute(name, params):
    body = b"\0" + name.encode() + b"\0" + struct.pack("!HH", 0, len(params))
    for v in params:
        v = str(v).encode()
        body += struct.pack("!i", len(v)) + v
    body += struct.pack("!H", 0)
    return _msg(b"B", body) + _msg(b"E", b"\0" + struct.pack("!I", 0))


FLUSH = _msg(b"H", b"")
SYNC = _msg(b"S", b"")


def _read_until(raw, last):
    """Messages up to and including the first with tag `last`: [(tag, body)],
    asynchronous ones left out."""
    seen = []
    while True:
        tag, body = raw.recv_msg()
        if tag in (b"S", b"N"):
            continue  # ParameterStatus of a store's new session, notices
        seen.append((tag, body))
        if tag == last:
            return seen


def _errors(seen):
    return [parse_fields(b) for t, b in seen if t == b"E"]


@pytest.mark.parametrize("flush", [True, False], ids=["answered", "still-owed"])
def test_raw_batch_moves_only_once_answered(routing, flush):
    """The asyncpg sequence by hand. With a Flush, the INSERT's Parse and
    Describe are answered by the default store before its Bind arrives: the
    tentatively bound transaction moves to b and commits there. Without it
    the default store still owes those answers when the Bind arrives: the
    batch cannot move and the Bind is refused 0A000 (the transaction fails,
    nothing lands)."""
    env = routing
    tenant = new_tenant()
    env.route(tenant, "b")
    agg, eid = str(uuid.uuid4()), str(uuid.uuid4())
    raw = RawConn(env.ep.host, env.ep.port)
    try:
        raw.startup("app", env.ep.dbname, PASSWORDS["app"])
        rows, err = raw.query("BEGIN")
        assert err is None, err
        raw.send(_parse("probe", pg_sql("probe")) + _describe("probe") + FLUSH)
        seen = _read_until(raw, b"T")
        assert [t for t, _ in seen] == [b"1", b"t", b"T"], seen
        raw.send(_bind_execute("probe", [agg, AGG_TYPE]) + SYNC)
        seen = _read_until(raw, b"Z")
        assert not _errors(seen), seen
        data = [t for t, _ in seen]
        assert data == [b"2", b"D", b"C", b"Z"] and seen[-1][1] == b"T", seen
        assert seen[1][1][6:] == b"0", seen  # the probe saw version 0
        args = [eid, agg, AGG_TYPE, "Created", tenant, "raw", 1, payload(v=1)]
        raw.send(_parse("append", pg_sql("append")) + _describe("append") +
                 (FLUSH if flush else b""))
        if flush:
            seen = _read_until(raw, b"T")
            assert [t for t, _ in seen] == [b"1", b"t", b"T"], seen
            raw.send(_bind_execute("append", args) + SYNC)
            seen = _read_until(raw, b"Z")
            assert not _errors(seen), seen
            assert [t for t, _ in seen] == [b"2", b"D", b"C", b"Z"], seen
            assert seen[-1][1] == b"T", seen
            rows, err = raw.query("COMMIT")
            assert err is None, err
        else:
            raw.send(_bind_execute("append", args) + SYNC)
            seen = _read_until(raw, b"Z")
            errs = _errors(seen)
            assert len(errs) == 1 and errs[0]["C"] == "0A000", seen
            assert "send a Sync between them" in errs[0]["M"], errs
            assert seen[-1][1] == b"E", seen  # the transaction failed
            rows, err = raw.query("ROLLBACK")
            assert err is None, err
        rows, err = raw.query("SELECT 1")
        assert rows == [["1"]] and err is None, (rows, err)
    finally:
        raw.close()
    if flush:
        env.expect_only_on("b", "events", "event_id", eid, 1)
    else:
        assert sum(env.counts("events", "event_id", eid).values()) == 0
