"""Bad input and failures: malformed and oversized messages, garbage on the
wire, a store killed mid-query. One client's failure must never disturb
another's, and pgshift must keep running (the fixtures check its stderr for
BUG and sanitizer reports after every test)."""

import os
import random
import socket
import struct
import threading
import time

import psycopg
import pytest

from harness import PASSWORDS, RawConn


def login(endpoint, user="app"):
    raw = RawConn(endpoint.host, endpoint.port)
    raw.startup(user, endpoint.dbname, PASSWORDS[user])
    return raw


def assert_protocol_violation_and_close(raw):
    fields = raw.read_error()
    assert fields["C"] == "08P01", fields
    assert fields["S"] in ("FATAL", "ERROR"), fields
    assert raw.closed_by_peer(5), "connection still open after 08P01"


class Bystander:
    """A client with a query in flight while another client misbehaves."""

    def __init__(self, endpoint):
        self.conn = psycopg.connect(endpoint.conninfo(), autocommit=True)
        self.result = None
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        try:
            self.result = self.conn.execute("SELECT pg_sleep(0.8), 'bystander ok'").fetchone()[1]
        except Exception as e:  # noqa: BLE001 - asserted in check()
            self.result = e

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(20)
        try:
            assert self.result == "bystander ok", self.result
            assert self.conn.execute("SELECT 'still ok'").fetchone()[0] == "still ok"
        finally:
            self.conn.close()


@pytest.mark.proxy_only
@pytest.mark.feature("limits")
def test_query_with_length_3(endpoint):
    """Length below the 4 bytes of the length field itself."""
    with Bystander(endpoint):
        raw = login(endpoint)
        try:
            raw.send(b"Q" + struct.pack("!I", 3))
            assert_protocol_violation_and_close(raw)
        finally:
            raw.close()


@pytest.mark.proxy_only
@pytest.mark.feature("limits")
def test_length_2_pow_31(endpoint):
    with Bystander(endpoint):
        raw = login(endpoint)
        try:
            raw.send(b"Q" + struct.pack("!I", 2**31) + b"SELECT 1\0")
            assert_protocol_violation_and_close(raw)
        finally:
            raw.close()


def test_unknown_message_type(endpoint):
    """PostgreSQL answers 08P01 FATAL too; pgshift must do no worse."""
    with Bystander(endpoint):
        raw = login(endpoint)
        try:
            raw.send_msg(b"z", b"garbage")
            assert_protocol_violation_and_close(raw)
        finally:
            raw.close()


@pytest.mark.proxy_only
@pytest.mark.feature("limits")
def test_oversized_message(pgshift_factory):
    ep = pgshift_factory(settings={"max_message_len": 8192})
    # Just under the limit works.
    raw = login(ep)
    try:
        rows, err = raw.query("SELECT length('%s')" % ("a" * 4000))
        assert err is None and rows == [["4000"]]
    finally:
        raw.close()
    with Bystander(ep):
        raw = login(ep)
        try:
            raw.send_msg(b"Q", b"SELECT '" + b"x" * 100000 + b"'\0")
            assert_protocol_violation_and_close(raw)
        finally:
            raw.close()
        # Only the header announces it: pgshift must not wait for (or buffer) the body.
        raw = login(ep)
        try:
            raw.send(b"Q" + struct.pack("!I", 50 * 1024 * 1024))
            assert_protocol_violation_and_close(raw)
        finally:
            raw.close()
    # psycopg sees the connection fail, nothing worse.
    with psycopg.connect(ep.conninfo(), autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT %s::text", ("y" * 100000,))
    with psycopg.connect(ep.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT 'small is fine'").fetchone()[0] == "small is fine"


def test_malformed_startup_packets(endpoint):
    """Bad startup packets close that connection; nobody else notices."""
    bad = [
        struct.pack("!I", 3),                                   # length < 4
        struct.pack("!I", 2**31) + b"\0" * 8,                   # absurd length
        struct.pack("!II", 8, 0x12345678),                      # unknown protocol
        struct.pack("!II", 11, 196608) + b"use",                # no terminator
        struct.pack("!II", 9, 196608) + b"\0",                  # no user
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                   # wrong protocol entirely
    ]
    with Bystander(endpoint):
        for blob in bad:
            s = socket.create_connection((endpoint.host, endpoint.port), timeout=10)
            try:
                s.sendall(blob)
                s.settimeout(10)
                got = b""
                try:
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        got += chunk
                except ConnectionResetError:
                    pass
                # Either closed silently or with an ErrorResponse, never a session.
                assert got == b"" or got[:1] == b"E", (blob, got[:100])
                assert b"Z" not in got[:1]
            finally:
                s.close()


def test_random_garbage_after_login(endpoint):
    """150 connections each send random bytes after logging in: random bytes,
    a real message tag with a well-formed length and a random body, or a real
    tag with a random length. Each is answered with an error or closed, or
    waits for the rest of what it announced; pgshift survives all of it."""
    rnd = random.Random(int(os.environ.get("PGSHIFT_GARBAGE_SEED", "20240501")))
    tags = b"QPBDESCHFdcfpXz"
    with Bystander(endpoint):
        for i in range(150):
            raw = login(endpoint)
            try:
                body = bytes(rnd.getrandbits(8) for _ in range(rnd.choice([0, 1, 3, 9, 64, 700])))
                kind = i % 3
                if kind == 0:
                    blob = body or b"\xff"
                elif kind == 1:
                    blob = bytes([rnd.choice(tags)]) + struct.pack("!I", len(body) + 4) + body
                else:
                    blob = bytes([rnd.choice(tags)]) + struct.pack("!I", rnd.getrandbits(32)) + body
                raw.send(blob + b"S\0\0\0\4")  # a Sync, in case it waits for one
                raw.sock.settimeout(1)
                try:
                    while True:
                        tag, _ = raw.recv_msg()
                        if tag in (b"E", b"Z"):
                            break
                except (EOFError, ConnectionResetError, socket.timeout):
                    pass
            finally:
                raw.close()
    with psycopg.connect(endpoint.conninfo()) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_store_killed_mid_query(clusters, pgshift_factory):
    store = clusters.new("killme")
    ep = pgshift_factory(stores={"main": store})
    idle = psycopg.connect(ep.conninfo(), autocommit=True)
    busy = psycopg.connect(ep.conninfo(), autocommit=True)
    out = {}

    def run():
        t0 = time.monotonic()
        try:
            busy.execute("SELECT pg_sleep(30)")
            out["err"] = None
        except Exception as e:  # noqa: BLE001 - asserted below
            out["err"] = e
        out["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.7)
    store.kill()
    t.join(15)
    assert not t.is_alive(), "client still waiting 15s after its store died"
    err = out["err"]
    assert isinstance(err, psycopg.OperationalError), repr(err)
    assert getattr(err, "sqlstate", None) in (None, "08006", "57P01"), err.sqlstate
    assert out["elapsed"] < 10
    busy.close()

    # While the store is down, a new client gets a clear error, not a hang.
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as ei:
        with psycopg.connect(ep.conninfo(connect_timeout=20), autocommit=True) as c:
            c.execute("SELECT 1")
    assert time.monotonic() - t0 < 20
    assert getattr(ei.value, "sqlstate", None) in (None, "08006", "08001", "57P03")

    # The store comes back: new clients work again through the same pgshift.
    store.start()
    deadline = time.monotonic() + 15
    last = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(ep.conninfo(), autocommit=True) as c:
                assert c.execute("SELECT 'back'").fetchone()[0] == "back"
                break
        except psycopg.OperationalError as e:
            last = e
            time.sleep(0.3)
    else:
        pytest.fail("no connection through pgshift after the store restarted: %r" % last)
    # The idle client lost its server session; it gets an error or, if the
    # proxy reconnected it, an answer, but it never hangs.
    try:
        idle.execute("SELECT 1")
    except psycopg.OperationalError:
        pass
    finally:
        idle.close()


def test_client_vanishes_mid_query(endpoint):
    """A client that disconnects during a long query must not disturb
    others, and its server-side query must not block new clients."""
    with Bystander(endpoint):
        raw = login(endpoint)
        raw.send_msg(b"Q", b"SELECT pg_sleep(0.5)\0")
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # RST
        for _ in range(10):
            raw = login(endpoint)
            rows, err = raw.query("SELECT 1")
            assert err is None and rows == [["1"]]
            raw.close()  # closing without Terminate


def test_store_refusing_the_login_over_tls_gives_its_reason(clusters, pgshift_factory):
    """A store that refuses pgshift's login sends its FATAL and closes the
    TLS session, often in the same packet: each client hears the store's
    reason (not "TLS connection closed"), every time, and pgshift goes on
    serving once the store takes logins again."""
    store = clusters.new("refuser")
    ep = pgshift_factory(stores={"main": store})
    store.psql("ALTER ROLE app CONNECTION LIMIT 0")
    errors = []

    def attempt():
        try:
            with psycopg.connect(ep.conninfo(), autocommit=True) as c:
                c.execute("SELECT 1")
            errors.append(None)
        except psycopg.OperationalError as e:
            errors.append(e)

    try:
        # Many at once: pgshift's loop then reads the FATAL and the
        # close_notify together more often.
        for _ in range(3):
            ths = [threading.Thread(target=attempt) for _ in range(16)]
            for th in ths:
                th.start()
            for th in ths:
                th.join(30)
        assert len(errors) == 48, len(errors)
        for e in errors:
            assert e is not None, "a login the store refused went through"
            assert "too many connections for role" in str(e), str(e)
            assert getattr(e, "sqlstate", None) in (None, "08006"), e.sqlstate
    finally:
        store.psql("ALTER ROLE app CONNECTION LIMIT -1")
    with psycopg.connect(ep.conninfo(), autocommit=True) as c:
        assert c.execute("SELECT 'served'").fetchone()[0] == "served"
        # pgshift's connection to the store is TLS (what this test is about).
        assert c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                         ).fetchone()[0] is True
