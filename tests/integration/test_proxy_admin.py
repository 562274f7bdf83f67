"""pgshift's own surfaces: the admin console (psql on admin_port, database
`pgshift`), PAUSE/RESUME, RELOAD and SIGHUP, SIGTERM drain. These exist only
in pgshift, so they are skipped (with the reason) in direct mode."""

import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest

import harness
from harness import PASSWORDS, PG_BIN, RawConn

pytestmark = [pytest.mark.proxy_only, pytest.mark.feature("admin")]


def admin(ep, sql, user="admin", check=True):
    """Run one admin command through psql (simple protocol); rows as lists."""
    env = dict(os.environ)
    env.update({"PGPASSWORD": PASSWORDS.get(user, "x"), "PGCONNECT_TIMEOUT": "10",
                "PGSSLMODE": "disable"})
    p = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-A", "-t", "-F", "|",
                        "-v", "ON_ERROR_STOP=1", "-h", ep.host, "-p", str(ep.pgshift.admin_port),
                        "-U", user, "-d", "pgshift", "-c", sql], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    if check and p.returncode != 0:
        raise AssertionError("admin %r failed: %s" % (sql, p.stderr))
    return p, [line.split("|") for line in p.stdout.splitlines() if line]


def test_show_commands(endpoint, pg):
    _, rows = admin(endpoint, "SHOW VERSION")
    assert rows[0][0].startswith("pgshift ")
    _, rows = admin(endpoint, "SHOW STORES")
    assert any(r[0] == "main" and str(pg.port) in r for r in rows), rows
    _, rows = admin(endpoint, "SHOW CONFIG")
    assert ["pgshift.listen_port", str(endpoint.port)] in [r[:2] for r in rows], rows[:5]
    with psycopg.connect(endpoint.conninfo(application_name="seen-by-admin")) as conn:
        conn.execute("SELECT 1")
        _, rows = admin(endpoint, "SHOW CLIENTS")
        assert any("seen-by-admin" in r for r in rows), rows
        for cmd in ("SHOW SERVERS", "SHOW POOLS", "SHOW STATS"):
            _, rows = admin(endpoint, cmd)
            assert rows, cmd
    p, _ = admin(endpoint, "SHOW NONSENSE", check=False)
    assert p.returncode != 0 and "unknown" in p.stderr.lower()


def test_admin_needs_admin_user(endpoint):
    p, _ = admin(endpoint, "SHOW VERSION", user="app", check=False)
    assert p.returncode != 0
    raw = RawConn(endpoint.host, endpoint.pgshift.admin_port)
    try:
        with pytest.raises(harness.ProtocolError) as ei:
            raw.startup("app", "pgshift", PASSWORDS["app"])
        assert ei.value.args[0]["C"] in ("28000", "28P01", "42501"), ei.value.args[0]
    finally:
        raw.close()


def test_pause_resume(pgshift_factory):
    ep = pgshift_factory()
    conn = psycopg.connect(ep.conninfo(), autocommit=True)
    try:
        admin(ep, "PAUSE 2000")
        out = {}

        def run():
            t0 = time.monotonic()
            out["v"] = conn.execute("SELECT 'ran'").fetchone()[0]
            out["t"] = time.monotonic() - t0

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.6)
        assert "v" not in out, "query ran while pgshift was paused"
        admin(ep, "RESUME")
        t.join(10)
        assert out.get("v") == "ran" and out["t"] >= 0.5
        # A PAUSE that cannot complete (a client sits in a transaction)
        # times out with an error and leaves pgshift running, not paused.
        conn.execute("BEGIN")
        t0 = time.monotonic()
        p, _ = admin(ep, "PAUSE 300", check=False)
        assert p.returncode != 0 and time.monotonic() - t0 < 10
        conn.execute("COMMIT")
        with psycopg.connect(ep.conninfo(), autocommit=True) as other:
            assert other.execute("SELECT 2").fetchone()[0] == 2
    finally:
        conn.close()


def test_sighup_reloads_auth_file(pgshift_factory):
    ep = pgshift_factory()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(ep.conninfo(user="newcomer", password="newcomer-secret")).close()
    with open(ep.pgshift.auth_file, "a") as f:
        f.write('"newcomer" "newcomer-secret"\n')
    ep.pgshift.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while True:
        try:
            with psycopg.connect(ep.conninfo(user="newcomer", password="newcomer-secret")) as conn:
                assert conn.execute("SELECT 1").fetchone()[0] == 1
                break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    # RELOAD on the console does the same and answers OK.
    admin(ep, "RELOAD")


def test_sigterm_drains(pgshift_factory):
    ep = pgshift_factory()
    conn = psycopg.connect(ep.conninfo())
    conn.execute("CREATE TEMP TABLE drain_t (x int)")
    conn.execute("INSERT INTO drain_t VALUES (1)")  # a transaction is open
    ep.pgshift.terminate()
    time.sleep(0.5)
    # New clients are refused while draining.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(ep.conninfo(connect_timeout=3)).close()
    # The open transaction may finish.
    conn.execute("INSERT INTO drain_t VALUES (2)")
    assert conn.execute("SELECT sum(x) FROM drain_t").fetchone()[0] == 3
    conn.commit()
    conn.close()
    assert ep.pgshift.stop(15) == 0
