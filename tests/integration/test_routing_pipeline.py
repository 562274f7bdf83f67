"""Pipelining across tenants on different stores: psycopg pipelines with a
Sync per batch (writes, append transactions, reads), and a raw-protocol
pipeline whose answers must come back in request order."""

import struct

import psycopg
import pytest

from harness import PASSWORDS, RawConn, parse_fields
from routing_util import (AGG_TYPE, SQL, new_id, payload, pg_sql, place_tenants,
                          routing)  # noqa: F401 (fixture)

pytestmark = [pytest.mark.proxy_only, pytest.mark.feature("routing")]


def test_psycopg_pipeline_writes_and_reads_across_stores(routing):
    env = routing
    placed = place_tenants(env)
    rounds = 4
    eids = {t: [] for t, _ in placed}
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        with conn.pipeline() as p:
            for _ in range(rounds):
                for tenant, _home in placed:
                    eid = new_id()
                    eids[tenant].append(eid)
                    conn.execute(SQL["outbox"], (eid, new_id(), AGG_TYPE, "Ev", tenant,
                                                 payload()))
                    p.sync()
            # Reads of each tenant, queued behind the writes.
            curs = {}
            for tenant, _home in placed:
                curs[tenant] = conn.execute(
                    "SELECT event_id::text, tenant_id::text FROM event_outbox WHERE tenant_id = %s "
                    "ORDER BY id", (tenant,))
                p.sync()
            got = {t: c.fetchall() for t, c in curs.items()}
    for tenant, home in placed:
        assert [r[0] for r in got[tenant]] == eids[tenant]
        assert {r[1] for r in got[tenant]} == {tenant}
        env.expect_only_on(home, "event_outbox", "tenant_id", tenant, rounds)


def _pipelined_appends(conn, work):
    """Queue append transactions (BEGIN, probe, INSERT ... RETURNING, outbox,
    COMMIT) in one pipeline; work = [(tenant, agg, version)]. Returns
    {(agg, version): (probe result, global_position)}."""
    out = {}
    with conn.pipeline():
        pending = []
        for tenant, agg, v in work:
            with conn.transaction():
                probe = conn.execute(SQL["probe"], (agg, AGG_TYPE))
                eid = new_id()
                app = conn.execute(SQL["append"], (eid, agg, AGG_TYPE, "Ev", tenant, "p", v,
                                                   payload()))
                conn.execute(SQL["outbox"], (eid, agg, AGG_TYPE, "Ev", tenant, payload()))
            pending.append(((agg, v), probe, app))
        for k, probe, app in pending:
            out[k] = (probe.fetchone()[0], app.fetchone()[0])
    return out


def test_psycopg_pipeline_of_append_transactions_existing_aggregates(routing):
    """Without a session tenant: aggregates that already have an event
    (written through pgshift, so their tenant is known) get pipelined append
    transactions, interleaved over the three stores."""
    env = routing
    placed = place_tenants(env)
    aggs = {t: new_id() for t, _ in placed}
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        for tenant, _home in placed:
            conn.execute(SQL["append"], (new_id(), aggs[tenant], AGG_TYPE, "Ev", tenant, "p", 1,
                                         payload()))
        work = [(t, aggs[t], v) for v in (2, 3) for t, _ in placed]
        res = _pipelined_appends(conn, work)
        for tenant, _home in placed:
            a = aggs[tenant]
            assert res[(a, 2)][0] == 1 and res[(a, 3)][0] == 2, res
            assert res[(a, 2)][1] < res[(a, 3)][1]
            rows = conn.execute(SQL["stream"], (aggs[tenant], AGG_TYPE)).fetchall()
            assert [r[0] for r in rows] == [1, 2, 3] and {r[2] for r in rows} == {tenant}
    for tenant, home in placed:
        env.expect_only_on(home, "events", "aggregate_id", aggs[tenant], 3)
        env.expect_only_on(home, "event_outbox", "aggregate_id", aggs[tenant], 2)


def test_psycopg_pipeline_of_append_transactions_session_tenant(routing):
    """With a session tenant (startup option), new aggregates: one pipelined
    connection per tenant, all open at once."""
    env = routing
    placed = place_tenants(env)
    conns = [psycopg.connect(env.ep.conninfo(options="-c pgshift.tenant=%s" % t), autocommit=True)
             for t, _ in placed]
    try:
        for conn, (tenant, home) in zip(conns, placed):
            aggs = [new_id(), new_id()]
            res = _pipelined_appends(conn, [(tenant, aggs[0], 1), (tenant, aggs[1], 1)])
            assert [res[(a, 1)][0] for a in aggs] == [0, 0], res
            for agg in aggs:
                env.expect_only_on(home, "events", "aggregate_id", agg, 1)
                env.expect_only_on(home, "event_outbox", "aggregate_id", agg, 1)
    finally:
        for c in conns:
            c.close()


def _msg(tag, body):
    return tag + struct.pack("!I", len(body) + 4) + body


def _named_parse(name, sql):
    return _msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def _bind_execute(name, params):
    body = b"\0" + name.encode() + b"\0" + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        v = p.encode()
        body += struct.pack("!i", len(v)) + v
    body += struct.pack("!H", 0)
    return _msg(b"B", body) + _msg(b"E", b"\0" + struct.pack("!I", 0))


SYNC = b"S\0\0\0\x04"


def test_raw_pipeline_named_statement_across_stores(routing):
    """One named statement parsed once (batch 1, no tenant), then Bind/Execute
    for tenants on a, b, c, each in its own batch, all sent in one write;
    then a read per tenant. Every batch gets its answers, in order."""
    env = routing
    placed = place_tenants(env)
    eids = {t: new_id() for t, _ in placed}
    data = _named_parse("ins", pg_sql("outbox")) + _msg(b"D", b"Sins\0") + SYNC
    for tenant, _home in placed:
        data += _bind_execute("ins", [eids[tenant], new_id(), AGG_TYPE, "Ev", tenant, "{}"]) + SYNC
    data += _named_parse("sel", "SELECT event_id::text FROM event_outbox WHERE tenant_id = $1")
    data += SYNC
    for tenant, _home in placed:
        data += _bind_execute("sel", [tenant]) + SYNC
    raw = RawConn(env.ep.host, env.ep.port)
    try:
        raw.startup("app", env.ep.dbname, PASSWORDS["app"])
        raw.send(data)
        batches, cur = [], []
        while len(batches) < 2 + 2 * len(placed):
            tag, body = raw.recv_msg()
            if tag == b"E":
                raise AssertionError("error in pipeline: %r (batches so far %r)"
                                     % (parse_fields(body), batches))
            if tag == b"D":
                (n,) = struct.unpack("!H", body[:2])
                (ln,) = struct.unpack("!i", body[2:6])
                cur.append(body[6:6 + ln].decode())
            elif tag == b"C":
                cur.append(body.rstrip(b"\0").decode())
            elif tag in (b"1", b"2", b"t", b"T", b"n"):
                cur.append(tag.decode())
            elif tag == b"Z":
                batches.append(cur)
                cur = []
        rows, err = raw.query("SELECT 1")
        assert rows == [["1"]] and err is None
    finally:
        raw.close()
    assert batches[0] == ["1", "t", "n"], batches[0]
    for i in range(len(placed)):
        assert batches[1 + i] == ["2", "INSERT 0 1"], batches
    assert batches[1 + len(placed)] == ["1"]
    for i, (tenant, _home) in enumerate(placed):
        assert batches[2 + len(placed) + i] == ["2", eids[tenant], "SELECT 1"], batches
    for tenant, home in placed:
        env.expect_only_on(home, "event_outbox", "event_id", eids[tenant], 1)
