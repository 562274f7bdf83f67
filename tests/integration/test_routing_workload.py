"""The event-store workload of DESIGN.md through pgshift, for tenants placed
on three stores (a = default, unrouted; b and c placed with ROUTE TENANT):
append with optimistic concurrency (version probe, then INSERT ... RETURNING
global_position, with an outbox row in the same transaction), a version
conflict (23505, transaction rolled back), stream read, global feed read,
snapshot upsert and read, checkpoint upsert. Through psycopg (extended
protocol, and simple protocol with ClientCursor) and psql (literals), with
and without a session tenant. Afterwards every store is read directly."""

import psycopg
import pytest

from routing_util import (AGG_TYPE, DEFAULT_STORE, N_EVENTS, SQL, check_tenant_rows, lit,
                          literal_sql, new_id, payload, pgshift_log, place_tenants,
                          routing)  # noqa: F401 (fixture)

pytestmark = [pytest.mark.proxy_only, pytest.mark.feature("routing")]

# -- psycopg -------------------------------------------------------------


def psycopg_workload(conn, tenant, simple):
    """The workload for one tenant on `conn` (autocommit; transactions are
    explicit). simple=True uses a ClientCursor (literals, simple protocol).
    Returns what the reads saw."""
    cur = psycopg.ClientCursor(conn) if simple else conn.cursor()
    agg = new_id()
    written = []
    for v in range(1, N_EVENTS + 1):
        eid = new_id()
        with conn.transaction():
            cur.execute(SQL["probe"], (agg, AGG_TYPE))
            assert cur.fetchone()[0] == v - 1
            cur.execute(SQL["append"], (eid, agg, AGG_TYPE, "Ev%d" % v, tenant, "actor", v,
                                        payload(v=v)))
            gp = cur.fetchone()[0]
            cur.execute(SQL["outbox"], (eid, agg, AGG_TYPE, "Ev%d" % v, tenant, payload(v=v)))
        written.append((v, eid, gp))
    assert [w[2] for w in written] == sorted(w[2] for w in written)

    # Version conflict: a writer that read version 2 appends version 3 again.
    dup = new_id()
    with pytest.raises(psycopg.errors.UniqueViolation) as ei:
        with conn.transaction():
            cur.execute(SQL["probe"], (agg, AGG_TYPE))
            assert cur.fetchone()[0] == N_EVENTS
            cur.execute(SQL["outbox"], (dup, agg, AGG_TYPE, "Dup", tenant, payload()))
            cur.execute(SQL["append"], (dup, agg, AGG_TYPE, "Dup", tenant, "actor", N_EVENTS,
                                        payload()))
    assert ei.value.sqlstate == "23505"
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    # Stream read.
    cur.execute(SQL["stream"], (agg, AGG_TYPE))
    stream = cur.fetchall()
    assert [(r[0], r[1]) for r in stream] == [(w[0], w[1]) for w in written], stream
    assert {r[2] for r in stream} == {tenant}

    # Snapshot upsert (insert, then update) and read.
    cur.execute(SQL["snapshot_upsert"], (agg, AGG_TYPE, tenant, 2, payload(v=2)))
    cur.execute(SQL["snapshot_upsert"], (agg, AGG_TYPE, tenant, 3, payload(v=3)))
    cur.execute(SQL["snapshot_read"], (agg, AGG_TYPE))
    assert cur.fetchall() == [(3, tenant)]

    # A projection: global feed read, then its checkpoint, in one transaction.
    proj = "proj-" + tenant
    with conn.transaction():
        cur.execute(SQL["feed"], (tenant, 0))
        feed = cur.fetchall()
        assert [r[1] for r in feed] == [w[1] for w in written], feed
        assert {r[2] for r in feed} == {tenant}
        assert [r[0] for r in feed] == sorted(r[0] for r in feed)
        cur.execute(SQL["checkpoint"], (proj, feed[-1][1], "Ev3", feed[-1][0]))
        cur.execute(SQL["checkpoint"], (proj, feed[-1][1], "Ev3", feed[-1][0]))
    # The next transaction on the same connection works.
    with conn.transaction():
        cur.execute(SQL["probe"], (agg, AGG_TYPE))
        assert cur.fetchone()[0] == N_EVENTS
    return {"agg": agg, "written": written, "dup": dup, "proj": proj}


@pytest.mark.parametrize("simple", [False, True], ids=["extended", "simple"])
@pytest.mark.parametrize("session", [False, True], ids=["no-session-tenant", "session-tenant"])
def test_psycopg_workload(routing, simple, session):
    env = routing
    placed = place_tenants(env)
    results = {}
    # One connection goes through all tenants, so it uses all three stores.
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        for tenant, home in placed:
            if session:
                conn.execute("SET pgshift.tenant = %s" % lit(tenant))
            results[tenant] = psycopg_workload(conn, tenant, simple)
    for tenant, home in placed:
        r = results[tenant]
        check_tenant_rows(env, tenant, home, checkpoint=r["proj"])
        env.expect_only_on(home, "events", "aggregate_id", r["agg"], N_EVENTS)
        # Nothing of the conflicting transaction stayed anywhere.
        for table in ("events", "event_outbox"):
            assert sum(env.counts(table, "event_id", r["dup"]).values()) == 0
        with env.direct(home) as d:
            assert d.execute("SELECT version FROM snapshots WHERE aggregate_id = %s",
                             (r["agg"],)).fetchone()[0] == 3
            assert d.execute("SELECT events_processed FROM projection_checkpoints "
                             "WHERE projection_name = %s", (r["proj"],)).fetchone()[0] == 2


def test_psycopg_existing_aggregates_from_a_fresh_session(routing):
    """Aggregates written earlier (learned by pgshift) are found again by a new
    session without a session tenant: probe, stream read, snapshot read."""
    env = routing
    placed = place_tenants(env)
    aggs = {}
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        for tenant, _ in placed:
            aggs[tenant] = psycopg_workload(conn, tenant, False)["agg"]
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        for tenant, home in placed:
            agg = aggs[tenant]
            with conn.transaction():
                v = conn.execute(SQL["probe"], (agg, AGG_TYPE)).fetchone()[0]
                assert v == N_EVENTS
                conn.execute(SQL["append"], (new_id(), agg, AGG_TYPE, "Ev4", tenant, "actor",
                                             v + 1, payload()))
            rows = conn.execute(SQL["stream"], (agg, AGG_TYPE)).fetchall()
            assert [r[0] for r in rows] == list(range(1, N_EVENTS + 2))
            assert conn.execute(SQL["snapshot_read"], (agg, AGG_TYPE)).fetchall() == [(3, tenant)]
            env.expect_only_on(home, "events", "aggregate_id", agg, N_EVENTS + 1)


@pytest.mark.parametrize("simple", [False, True], ids=["extended", "simple"])
def test_aggregates_written_behind_pgshifts_back_are_looked_up(routing, simple):
    """Rows put on a store directly (pgshift never saw them): the version
    probe, stream and snapshot reads without any tenant still reach the
    tenant's store, and the append continues the stream there."""
    env = routing
    placed = place_tenants(env)
    aggs = {}
    for tenant, home in placed:
        agg = new_id()
        aggs[tenant] = agg
        with env.direct(home) as d:
            for v in (1, 2):
                d.execute(SQL["append"], (new_id(), agg, AGG_TYPE, "Old", tenant, "direct", v,
                                          payload()))
            d.execute(SQL["snapshot_upsert"], (agg, AGG_TYPE, tenant, 2, payload()))
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn) if simple else conn.cursor()
        for tenant, home in placed:
            agg = aggs[tenant]
            cur.execute(SQL["snapshot_read"], (agg, AGG_TYPE))
            assert cur.fetchall() == [(2, tenant)], "snapshot of %s (home %s)" % (agg, home)
            with conn.transaction():
                cur.execute(SQL["probe"], (agg, AGG_TYPE))
                v = cur.fetchone()[0]
                assert v == 2, "version probe of %s answered by the wrong store (home %s)" % (
                    agg, home)
                cur.execute(SQL["append"], (new_id(), agg, AGG_TYPE, "New", tenant, "pgshift",
                                            v + 1, payload()))
            cur.execute(SQL["stream"], (agg, AGG_TYPE))
            assert [r[0] for r in cur.fetchall()] == [1, 2, 3]
    for tenant, home in placed:
        env.expect_only_on(home, "events", "aggregate_id", aggs[tenant], 3)


def test_checkpoint_without_any_tenant_goes_to_the_default_store(routing):
    env = routing
    proj = "global-" + new_id()
    with psycopg.connect(env.ep.conninfo(), autocommit=True) as conn:
        conn.execute(SQL["checkpoint"], (proj, new_id(), "Ev", 42))
        conn.execute(SQL["checkpoint"], (proj, new_id(), "Ev", 43))
    env.expect_only_on(DEFAULT_STORE, "projection_checkpoints", "projection_name", proj, 1)


# -- psql (simple protocol, literals) ---------------------------------------


def psql_script(tenant, agg, eids, dup, proj):
    """The workload for one tenant as a psql script; \\echo markers split the
    output into sections."""
    out = []
    for v, eid in enumerate(eids, 1):
        out += ["BEGIN;", "\\echo @@probe%d" % v, literal_sql("probe", agg, AGG_TYPE) + ";",
                "\\echo @@append%d" % v,
                literal_sql("append", eid, agg, AGG_TYPE, "Ev%d" % v, tenant, "psql", v,
                            payload(v=v)) + ";",
                literal_sql("outbox", eid, agg, AGG_TYPE, "Ev%d" % v, tenant, payload(v=v)) + ";",
                "COMMIT;"]
    out += ["BEGIN;", "\\echo @@conflict-probe", literal_sql("probe", agg, AGG_TYPE) + ";",
            literal_sql("outbox", dup, agg, AGG_TYPE, "Dup", tenant, payload()) + ";",
            literal_sql("append", dup, agg, AGG_TYPE, "Dup", tenant, "psql", len(eids),
                        payload()) + ";",
            "COMMIT;",
            "\\echo @@after-conflict", literal_sql("probe", agg, AGG_TYPE) + ";",
            "\\echo @@stream", literal_sql("stream", agg, AGG_TYPE) + ";",
            literal_sql("snapshot_upsert", agg, AGG_TYPE, tenant, 1, payload()) + ";",
            literal_sql("snapshot_upsert", agg, AGG_TYPE, tenant, len(eids), payload()) + ";",
            "\\echo @@snapshot", literal_sql("snapshot_read", agg, AGG_TYPE) + ";",
            "BEGIN;", "\\echo @@feed", literal_sql("feed", tenant, 0) + ";",
            literal_sql("checkpoint", proj, eids[-1], "Ev", 1) + ";", "COMMIT;",
            "\\echo @@end"]
    return "\n".join(out) + "\n"


def sections(stdout):
    cur, out = None, {}
    for line in stdout.splitlines():
        if line.startswith("@@"):
            cur = line[2:]
            out[cur] = []
        elif line and cur is not None:
            out[cur].append(line.split("|"))
    return out


@pytest.mark.parametrize("how", ["no-session-tenant", "set", "options"])
def test_psql_workload(routing, how):
    env = routing
    for tenant, home in place_tenants(env):
        agg, dup, proj = new_id(), new_id(), "psql-" + tenant
        eids = [new_id() for _ in range(N_EVENTS)]
        script = psql_script(tenant, agg, eids, dup, proj)
        options = None
        if how == "set":
            script = "SET pgshift.tenant = %s;\n" % lit(tenant) + script
        elif how == "options":
            options = "-c pgshift.tenant=%s" % tenant
        rc, out, err = env.psql(script, options=options)
        s = sections(out)
        assert "end" in s, "psql stopped early (rc %d):\n%s\n%s\n%s" % (rc, out, err,
                                                                      pgshift_log(env.ep))
        for v in range(1, N_EVENTS + 1):
            assert s["probe%d" % v] == [[str(v - 1)]], (v, s)
            assert len(s["append%d" % v]) == 1 and int(s["append%d" % v][0][0]) > 0
        assert s["conflict-probe"] == [[str(N_EVENTS)]]
        # The conflict is the only error, and it is the unique violation.
        errors = [ln for ln in err.splitlines() if "ERROR:" in ln]
        assert len(errors) == 1 and "23505" in errors[0], err
        assert s["after-conflict"] == [[str(N_EVENTS)]]
        assert s["stream"] == [[str(v), e, tenant, "Ev%d" % v] for v, e in enumerate(eids, 1)]
        assert s["snapshot"] == [[str(N_EVENTS), tenant]]
        assert [r[1] for r in s["feed"]] == eids and {r[2] for r in s["feed"]} == {tenant}
        check_tenant_rows(env, tenant, home, checkpoint=proj)
        assert sum(env.counts("event_outbox", "event_id", dup).values()) == 0
