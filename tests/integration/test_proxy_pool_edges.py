"""
tests/integration/test_proxy_pool_edges.py - transaction pooling: state a
backend must not carry from one client to the next, and servers that must not
go back to the pool. Each case was a defect found by review of the first pool
(f8ec9a3); pool_size = 1 forces every client onto the same backend.
"""
import socket
import struct
import time

import pytest

from harness import PASSWORDS, RawConn
from test_proxy_pool import start_pool, connect, store  # noqa: F401 (fixture)


def cstr(s):
    return s.encode() + b"\0"


def parse_msg(name, sql):
    return cstr(name) + cstr(sql) + struct.pack("!H", 0)


def bind_msg(portal, stmt):
    return cstr(portal) + cstr(stmt) + struct.pack("!HHH", 0, 0, 0)


def execute_msg(portal):
    return cstr(portal) + struct.pack("!I", 0)


def assert_next_client_served(ep, what="B's query on the pooled server was never answered"):
    """A new client's SELECT 42 is answered (on the pool's only backend)."""
    b = RawConn(ep.host, ep.port, timeout=5)
    b.startup("app", ep.dbname, PASSWORDS["app"])
    try:
        rows, err = b.query("SELECT 42")
    except (socket.timeout, EOFError) as e:
        pytest.fail("%s: %r" % (what, e))
    assert rows == [["42"]], (rows, err)
    return b


def test_set_config_does_not_leak_to_the_next_client(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1)
    with connect(ep, prepare_threshold=None) as a, connect(ep, prepare_threshold=None) as b:
        default = b.execute("SHOW search_path").fetchone()[0]
        a.execute("SELECT set_config('search_path', 'pool_schema, public', false)")
        got = b.execute("SHOW search_path").fetchone()[0]
        assert got == default, "A's set_config leaked to B: %r" % got


def test_only_the_set_of_a_query_string_is_replayed(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1)
    with connect(ep, prepare_threshold=None) as a, connect(ep, prepare_threshold=None) as b:
        a.execute("SET DateStyle = 'German'; INSERT INTO pool_scratch (worker, i, tag) "
                  "VALUES (77, 1, 'once')")
        for _ in range(3):
            b.execute("SELECT 1")
            a.execute("SELECT 1")
    n = store.psql("SELECT count(*) FROM pool_scratch WHERE worker = 77",
                   dbname=store.dbname).strip()
    assert n == "1", "the INSERT ran %s times" % n


def test_set_in_a_transaction_stays_with_its_session(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1)
    with connect(ep, prepare_threshold=None) as a, connect(ep, prepare_threshold=None) as b:
        a.execute("BEGIN")
        a.execute("SELECT 1")
        a.execute("SET search_path = pool_schema, public")
        a.execute("COMMIT")
        assert a.execute("SHOW search_path").fetchone()[0] == "pool_schema, public"
        b.execute("SELECT 1")
        got = a.execute("SHOW search_path").fetchone()[0]
        assert got == "pool_schema, public", "A lost its committed SET: %r" % got


def test_client_gone_after_a_failed_batch_without_sync(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1)
    a = RawConn(ep.host, ep.port)
    a.startup("app", ep.dbname, PASSWORDS["app"])
    a.send_msg(b"P", parse_msg("", "SELECT 1/0"))
    a.send_msg(b"B", bind_msg("", ""))
    a.send_msg(b"E", execute_msg(""))
    a.send_msg(b"H", b"")
    assert a.read_error()["C"] == "22012"
    a.close()
    time.sleep(0.3)
    assert_next_client_served(ep)


def test_client_gone_before_sync_commits_nothing(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1)
    a = RawConn(ep.host, ep.port)
    a.startup("app", ep.dbname, PASSWORDS["app"])
    a.send_msg(b"P", parse_msg("", "INSERT INTO pool_scratch (worker, i, tag) "
                                    "VALUES (55, 1, 'ghost')"))
    a.send_msg(b"B", bind_msg("", ""))
    a.send_msg(b"E", execute_msg(""))
    a.send_msg(b"H", b"")
    while a.recv_msg()[0] != b"C":
        pass
    a.close()   # never sent Sync: the INSERT must not commit
    time.sleep(0.3)
    with connect(ep, prepare_threshold=None) as b:
        b.execute("SELECT 1")
    n = store.psql("SELECT count(*) FROM pool_scratch WHERE tag = 'ghost'",
                   dbname=store.dbname).strip()
    assert n == "0", "an unsynced INSERT of a client that left was committed"


def test_copy_error_mid_copydata_message(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1)
    a = RawConn(ep.host, ep.port)
    a.startup("app", ep.dbname, PASSWORDS["app"])
    a.send_msg(b"Q", cstr("COPY pool_scratch (worker, i) FROM STDIN"))
    while a.recv_msg()[0] != b"G":
        pass
    bad = b"notanint\t1\n"
    big = b"1\t1\n" * 5000
    msg2 = b"d" + struct.pack("!I", len(big) + 4) + big
    a.send(b"d" + struct.pack("!I", len(bad) + 4) + bad + msg2[:1000])
    err = a.read_error()
    assert err["C"] == "22P02", err
    assert a.recv_msg()[0] == b"Z"
    time.sleep(0.3)
    assert_next_client_served(ep, "B broken after A's partial CopyData")


def test_server_back_from_a_slow_client_still_reads(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1, max_buffer_len="1KB")
    for attempt in range(12):
        a = RawConn(ep.host, ep.port, timeout=30)
        a.startup("app", ep.dbname, PASSWORDS["app"])
        a.send_msg(b"Q", cstr("SELECT repeat('x', 1000) FROM generate_series(1, 20000)"))
        time.sleep(0.5)
        n = 0
        while True:
            tag, _ = a.recv_msg()
            if tag == b"D":
                n += 1
                if n % 100 == 0:
                    time.sleep(0.005)
            if tag == b"Z":
                break
        assert n == 20000
        time.sleep(0.2)
        b = assert_next_client_served(ep, "attempt %d: B's query never answered" % attempt)
        a.close()
        b.close()


def test_set_held_with_begin_does_not_leak(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=1)
    with connect(ep, prepare_threshold=None) as a, connect(ep, prepare_threshold=None) as b:
        default = b.execute("SHOW search_path").fetchone()[0]
        a.execute("BEGIN")
        a.execute("SET search_path = pool_schema, public")   # held with the BEGIN
        a.execute("SELECT 1")
        a.execute("COMMIT")
        got = b.execute("SHOW search_path").fetchone()[0]
        assert got == default, "A's SET (made in a transaction) leaked to B: %r" % got


def test_server_of_a_client_gone_while_connecting(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=5)
    opts = {"options": "-c DateStyle=German"}
    with connect(ep, prepare_threshold=None, **opts) as a:
        assert a.execute("SHOW DateStyle").fetchone()[0].startswith("German")
        a.execute("BEGIN")
        a.execute("SELECT 1")          # A holds its server
        r = RawConn(ep.host, ep.port)
        r.startup("app", ep.dbname, PASSWORDS["app"], options=opts)
        r.send_msg(b"Q", cstr("SELECT 1"))
        r.close()                      # leaves while its new server connects
        time.sleep(0.5)
        with connect(ep, prepare_threshold=None, **opts) as c:
            got = c.execute("SHOW DateStyle").fetchone()[0]
        a.execute("COMMIT")
    assert got.startswith("German"), "C borrowed a backend without its startup options: %r" % got


class LeavingConn(RawConn):
    def startup_and_leave(self, user, dbname, password, options):
        import harness
        params = {"user": user, "database": dbname}
        params.update(options)
        body = struct.pack("!I", 196608)
        for k, v in params.items():
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        self.send(struct.pack("!I", len(body) + 4) + body)
        scram = None
        while True:
            tag, body = self.recv_msg()
            (code,) = struct.unpack("!I", body[:4])
            if code == 10:
                scram = harness._Scram(password)
                first = scram.client_first()
                self.send_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
            elif code == 11:
                self.send_msg(b"p", scram.client_final(body[4:]))
                self.close()
                return


def test_first_login_of_a_client_gone_after_auth(store, pgshift_factory):
    ep = start_pool(pgshift_factory, store, pool_size=5)
    opts = {"options": "-c DateStyle=German"}
    r = LeavingConn(ep.host, ep.port)
    r.startup_and_leave("app", ep.dbname, PASSWORDS["app"], opts)
    time.sleep(0.5)
    with connect(ep, prepare_threshold=None, **opts) as c:
        got = c.execute("SHOW DateStyle").fetchone()[0]
    assert got.startswith("German"), "C borrowed a backend without its startup options: %r" % got
