"""psycopg 3 through pgshift: parameters, transactions, server-side cursors,
COPY both ways, pipeline mode, LISTEN/NOTIFY, cancel, TLS, authentication."""

import datetime
import decimal
import json
import select
import threading
import time
import uuid

import psycopg
import psycopg.errors
import pytest
from psycopg.types.json import Jsonb

import harness
from harness import PASSWORDS, ProtocolError, RawConn


def connect(endpoint, user="app", autocommit=False, **kw):
    return psycopg.connect(endpoint.conninfo(user=user, **kw), autocommit=autocommit)


def test_parameters_roundtrip(endpoint):
    values = [
        42, -(2**62), 3.5, decimal.Decimal("12345678901234567890.123"), "text ünïcode",
        "", None, True, b"\x00\x01\xffbytes", uuid.uuid4(),
        datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc),
        datetime.date(1999, 12, 31), [1, 2, 3],
    ]
    with connect(endpoint) as conn:
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            for v in values:
                got = cur.execute("SELECT %s", (v,)).fetchone()[0]
                assert got == v, (binary, v, got)
        row = conn.execute("SELECT %s::jsonb -> 'k', %s::int + %s::int",
                           (Jsonb({"k": [1, "x"]}), 40, 2)).fetchone()
        assert row == ([1, "x"], 42)
        assert conn.execute("SELECT %s::text[]", (["a", None, "c"],)).fetchone()[0] == \
            ["a", None, "c"]
        # Many parameters in one statement.
        params = list(range(1000))
        sql = "SELECT " + " + ".join(["%s::int"] * len(params))
        assert conn.execute(sql, params).fetchone()[0] == sum(params)


def test_event_store_append(endpoint):
    """The optimistic-concurrency append of DESIGN.md, with bind parameters."""
    agg, tenant = uuid.uuid4(), uuid.uuid4()
    with connect(endpoint) as conn:
        positions = []
        for _ in range(3):
            with conn.transaction():
                v = conn.execute("SELECT COALESCE(MAX(version), 0) FROM events "
                                 "WHERE aggregate_id = %s AND aggregate_type = %s",
                                 (agg, "Order")).fetchone()[0]
                pos = conn.execute(
                    "INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, "
                    "tenant_id, actor_id, version, timestamp, payload) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, now(), %s) RETURNING global_position",
                    (uuid.uuid4(), agg, "Order", "Placed", tenant, "u1", v + 1,
                     Jsonb({"n": v + 1}))).fetchone()[0]
                positions.append(pos)
        assert positions == sorted(positions)
        # A concurrent writer that read a stale version hits the unique key.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, "
                "tenant_id, version, timestamp, payload) VALUES (%s, %s, 'Order', 'Dup', %s, "
                "3, now(), '{}')", (uuid.uuid4(), agg, tenant))
        conn.rollback()
        rows = conn.execute("SELECT version, payload->>'n' FROM events WHERE aggregate_id = %s "
                            "ORDER BY global_position", (agg,)).fetchall()
        assert rows == [(1, "1"), (2, "2"), (3, "3")]


def test_transactions(endpoint):
    with connect(endpoint) as a, connect(endpoint, autocommit=True) as b:
        a.execute("CREATE TABLE IF NOT EXISTS tx_t (id int PRIMARY KEY, v text)")
        a.execute("TRUNCATE tx_t")
        a.commit()
        a.execute("INSERT INTO tx_t VALUES (1, 'one')")
        assert b.execute("SELECT count(*) FROM tx_t").fetchone()[0] == 0  # not yet visible
        a.commit()
        assert b.execute("SELECT v FROM tx_t WHERE id = 1").fetchone()[0] == "one"
        a.execute("INSERT INTO tx_t VALUES (2, 'two')")
        a.rollback()
        assert b.execute("SELECT count(*) FROM tx_t").fetchone()[0] == 1
        # An error aborts the transaction until rollback; a savepoint recovers.
        with pytest.raises(psycopg.errors.UniqueViolation):
            a.execute("INSERT INTO tx_t VALUES (1, 'again')")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            a.execute("SELECT 1")
        a.rollback()
        with a.transaction():
            a.execute("INSERT INTO tx_t VALUES (3, 'three')")
            try:
                with a.transaction():  # savepoint
                    a.execute("INSERT INTO tx_t VALUES (1, 'dup')")
            except psycopg.errors.UniqueViolation:
                pass
            a.execute("INSERT INTO tx_t VALUES (4, 'four')")
        assert b.execute("SELECT array_agg(id ORDER BY id) FROM tx_t").fetchone()[0] == [1, 3, 4]
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        a.execute("DROP TABLE tx_t")
        a.commit()


def test_server_side_cursor(endpoint):
    with connect(endpoint) as conn:
        with conn.cursor(name="big") as cur:
            cur.itersize = 333
            cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 10000) g ORDER BY g")
            first = cur.fetchmany(10)
            assert [r[0] for r in first] == list(range(1, 11))
            rest = list(cur)
            assert len(rest) == 9990 and rest[-1][0] == 10000
        # The cursor was a real portal on the server (DECLARE in a transaction).
        with conn.cursor(name="scroll", scrollable=True) as cur:
            cur.execute("SELECT g FROM generate_series(1, 100) g")
            cur.scroll(50, mode="absolute")
            assert cur.fetchone()[0] == 51
        conn.commit()


def test_copy_in_and_out(endpoint):
    n = 20000
    with connect(endpoint) as conn:
        conn.execute("CREATE TEMP TABLE cp (id int, name text, data jsonb, raw bytea)")
        with conn.cursor() as cur:
            with cur.copy("COPY cp (id, name, data, raw) FROM STDIN") as copy:
                for i in range(n):
                    copy.write_row((i, "name\t%d\n" % i, json.dumps({"i": i}), bytes([i % 256])))
            assert conn.execute("SELECT count(*), sum(id) FROM cp").fetchone() == \
                (n, n * (n - 1) // 2)
            with cur.copy("COPY (SELECT id, name FROM cp ORDER BY id) TO STDOUT") as copy:
                got = list(copy.rows())
            assert len(got) == n
            assert got[7] == ("7", "name\t7\n")
            # Binary COPY out and in.
            with cur.copy("COPY (SELECT id FROM cp WHERE id < 5 ORDER BY id) TO STDOUT "
                          "(FORMAT binary)") as copy:
                copy.set_types(["int4"])
                assert [r[0] for r in copy.rows()] == [0, 1, 2, 3, 4]
            # A COPY FROM that fails on the server (bad data) raises and the
            # connection stays usable after rollback.
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                with cur.copy("COPY cp (id) FROM STDIN") as copy:
                    copy.write(b"1\nnot-a-number\n")
        conn.rollback()
        assert conn.execute("SELECT 7").fetchone()[0] == 7


def test_pipeline_mode(endpoint):
    with connect(endpoint, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE pl (id int PRIMARY KEY)")
        with conn.pipeline() as p:
            curs = []
            for i in range(200):
                curs.append(conn.execute("INSERT INTO pl VALUES (%s) RETURNING id * 2", (i,)))
            p.sync()
            results = [c.fetchone()[0] for c in curs]
        assert results == [i * 2 for i in range(200)]
        assert conn.execute("SELECT count(*) FROM pl").fetchone()[0] == 200
        # An error inside a pipeline surfaces; the statements of that sync
        # block form one implicit transaction, so none of them stays; the
        # connection recovers.
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.pipeline():
                conn.execute("INSERT INTO pl VALUES (1000)")
                conn.execute("INSERT INTO pl VALUES (1)")
                conn.execute("INSERT INTO pl VALUES (1001)")
        assert conn.execute("SELECT count(*) FROM pl").fetchone()[0] == 200
        # Many statements in one go without waiting (deep pipeline).
        with conn.pipeline():
            cur = conn.cursor()
            cur.executemany("INSERT INTO pl VALUES (%s)", [(i,) for i in range(5000, 7000)])
        assert conn.execute("SELECT count(*) FROM pl").fetchone()[0] == 2200


def test_listen_notify(endpoint):
    with connect(endpoint, autocommit=True) as listener, \
            connect(endpoint, autocommit=True) as sender:
        got = []
        listener.add_notify_handler(got.append)
        listener.execute("LISTEN pgshift_test_channel")
        sender.execute("NOTIFY pgshift_test_channel, 'hello'")
        sender.execute("SELECT pg_notify('pgshift_test_channel', 'second')")
        # The notification must arrive while the listener is idle, without a
        # query of its own to carry it.
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            r, _, _ = select.select([listener.fileno()], [], [], 0.5)
            if r:
                listener.execute("SELECT 1")  # lets psycopg read what arrived
        assert [n.payload for n in got] == ["hello", "second"]
        assert got[0].channel == "pgshift_test_channel"
        # A notification in a transaction is delivered at commit only.
        got.clear()
        with sender.transaction():
            sender.execute("NOTIFY pgshift_test_channel, 'in-tx'")
            time.sleep(0.3)
            listener.execute("SELECT 1")
            assert got == []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
            listener.execute("SELECT 1")
        assert [n.payload for n in got] == ["in-tx"]


def test_cancel(endpoint):
    with connect(endpoint, autocommit=True) as conn, \
            connect(endpoint, autocommit=True) as other:
        result = {}

        def run():
            t0 = time.monotonic()
            try:
                conn.execute("SELECT pg_sleep(30)")
                result["outcome"] = "completed"
            except Exception as e:  # noqa: BLE001 - recorded and asserted below
                result["outcome"] = e
            result["elapsed"] = time.monotonic() - t0

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.7)
        conn.cancel()
        t.join(10)
        assert not t.is_alive(), "query still running 10s after cancel"
        assert isinstance(result["outcome"], psycopg.errors.QueryCanceled), result
        assert result["outcome"].sqlstate == "57014"
        assert result["elapsed"] < 5
        # Both sessions keep working, and the cancel hit only `conn`.
        assert conn.execute("SELECT 'after'").fetchone()[0] == "after"
        assert other.execute("SELECT 2").fetchone()[0] == 2


def test_cancel_does_not_hit_other_session(endpoint):
    """A cancel for one client never cancels another client's query."""
    with connect(endpoint, autocommit=True) as a, connect(endpoint, autocommit=True) as b:
        out = {}

        def run():
            try:
                out["v"] = b.execute("SELECT pg_sleep(1.5), 'b done'").fetchone()[1]
            except Exception as e:  # noqa: BLE001
                out["v"] = e

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.3)
        a.cancel()  # a is idle: nothing to cancel
        t.join(10)
        assert out["v"] == "b done"
        assert a.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.feature("client-tls")
def test_tls_require(endpoint, tls_cert):
    with psycopg.connect(endpoint.conninfo(sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 'over tls'").fetchone()[0] == "over tls"
        # Enough data to span many TLS records.
        n = conn.execute("SELECT sum(length(repeat('x', g))) FROM generate_series(1, 2000) g"
                         ).fetchone()[0]
        assert n == 2001000
        rows = conn.execute("SELECT repeat('y', 10000) FROM generate_series(1, 100)").fetchall()
        assert len(rows) == 100 and rows[0][0] == "y" * 10000
    with psycopg.connect(endpoint.conninfo(sslmode="verify-full", sslrootcert=tls_cert[0])) as c:
        assert c.pgconn.ssl_in_use
    # Without TLS still works when TLS is only allowed.
    with psycopg.connect(endpoint.conninfo(sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.proxy_only
@pytest.mark.feature("client-tls")
def test_tls_required_refuses_plain(pgshift_factory):
    ep = pgshift_factory(tls=True, settings={"client_tls_mode": "require"})
    with psycopg.connect(ep.conninfo(sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(ep.conninfo(sslmode="disable")).close()


def _auth_codes(seen):
    import struct
    return [struct.unpack("!I", body[:4])[0] for tag, body in seen if tag == b"R"]


def test_scram_login(endpoint):
    for user in ("scramuser", "app"):
        with connect(endpoint, user=user) as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
    # scramuser's stored secret is a SCRAM verifier: the exchange is SCRAM-SHA-256.
    raw = RawConn(endpoint.host, endpoint.port)
    try:
        seen = raw.startup("scramuser", endpoint.dbname, PASSWORDS["scramuser"])
        codes = _auth_codes(seen)
        assert codes[:4] == [10, 11, 12, 0], codes
        rows, err = raw.query("SELECT 40 + 2")
        assert err is None and rows == [["42"]]
    finally:
        raw.close()


@pytest.mark.feature("md5-auth")
def test_md5_login(pgshift_factory):
    ep = pgshift_factory(settings={"auth_type": "md5"})
    with connect(ep, user="md5user") as conn:
        assert conn.execute("SELECT 'md5 ok'").fetchone()[0] == "md5 ok"
    raw = RawConn(ep.host, ep.port)
    try:
        seen = raw.startup("md5user", ep.dbname, PASSWORDS["md5user"])
        assert _auth_codes(seen)[:2] == [5, 0]
    finally:
        raw.close()
    raw = RawConn(ep.host, ep.port)
    try:
        with pytest.raises(ProtocolError) as ei:
            raw.startup("md5user", ep.dbname, "wrong")
        assert ei.value.args[0]["C"] == "28P01"
    finally:
        raw.close()


@pytest.mark.parametrize("user", ["app", "scramuser", "md5user", "nosuchuser"])
def test_wrong_password_is_28P01_and_nothing_else(endpoint, user):
    raw = RawConn(endpoint.host, endpoint.port)
    try:
        with pytest.raises(ProtocolError) as ei:
            raw.startup(user, endpoint.dbname, "definitely-wrong")
        fields = ei.value.args[0]
        assert fields["C"] == "28P01", fields
        assert fields["S"] == "FATAL"
        # Nothing after the error: the connection just closes.
        assert raw.buf == b""
        assert raw.closed_by_peer(5)
    finally:
        raw.close()
    # And no session was created: psycopg reports the same.
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(endpoint.conninfo(user="app", password="definitely-wrong")).close()
    assert "password authentication failed" in str(ei.value)
    # Other clients are unaffected.
    with connect(endpoint) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_unknown_database_is_3D000(endpoint):
    raw = RawConn(endpoint.host, endpoint.port)
    try:
        with pytest.raises(ProtocolError) as ei:
            raw.startup("app", "no_such_database", PASSWORDS["app"])
        assert ei.value.args[0]["C"] == "3D000", ei.value.args[0]
        assert raw.closed_by_peer(5)
    finally:
        raw.close()
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(endpoint.conninfo(dbname="no_such_database")).close()
    assert "no_such_database" in str(ei.value)


def test_session_state_is_per_client(endpoint):
    """Session pooling: SET, temp tables and prepared statements belong to
    one client only."""
    with connect(endpoint, autocommit=True) as a, connect(endpoint, autocommit=True) as b:
        a.execute("SET application_name = 'client-a'")
        b.execute("SET application_name = 'client-b'")
        a.execute("CREATE TEMP TABLE only_a (x int)")
        a.execute("PREPARE pa AS SELECT 'a-' || $1::text")
        assert a.execute("SHOW application_name").fetchone()[0] == "client-a"
        assert b.execute("SHOW application_name").fetchone()[0] == "client-b"
        assert a.execute("EXECUTE pa('x')").fetchone()[0] == "a-x"
        with pytest.raises(psycopg.errors.UndefinedTable):
            b.execute("SELECT * FROM only_a")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            b.execute("EXECUTE pa('y')")
        assert a.info.backend_pid != b.info.backend_pid


def test_parameter_status_and_notices(endpoint):
    with connect(endpoint, autocommit=True) as conn:
        assert conn.info.parameter_status("server_encoding") == "UTF8"
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        assert conn.info.server_version >= 150000
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
        notices = []
        conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized,
                                                          d.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$")
        assert notices == [("NOTICE", "hello 42"), ("WARNING", "careful")]


def test_many_concurrent_clients(endpoint):
    """50 clients at once, each with its own work; results never mix."""
    errors, results = [], {}

    def worker(i):
        try:
            with connect(endpoint, autocommit=True) as c:
                for j in range(20):
                    v = c.execute("SELECT %s::int * 1000 + %s::int", (i, j)).fetchone()[0]
                    if v != i * 1000 + j:
                        errors.append((i, j, v))
                results[i] = True
        except Exception as e:  # noqa: BLE001
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 50


def test_raw_scram_client_matches_harness():
    """Self-check of the raw client's SCRAM math against RFC 7677's example."""
    s = harness._Scram("pencil")
    s.nonce = "rOprNGfwEbeRWgbNEkqO"
    s.first_bare = "n=user,r=" + s.nonce
    final = s.client_final(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                           b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    s.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
