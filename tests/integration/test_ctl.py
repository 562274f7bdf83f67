"""pgshift-ctl, the operator's command-line client.

Two kinds of scenario:
- against a real pgshift (proxy_only): SHOW commands in every output format,
  a refused command, RELOAD, a wrong password, an unreachable pgshift;
- against a scripted fake admin console (FakeConsole below, protocol 3.0 over
  a loopback socket): the commands that later issues bring to pgshift
  (MIGRATE, WATCH MIGRATION, SHOW MIGRATION, CUTOVER...), so that the exact
  statements pgshift-ctl sends, its quoting, live printing of streamed rows,
  the polling fallback, --until, --timeout and the exit codes are checked now.
"""

import csv
import io
import json
import os
import socket
import struct
import subprocess
import threading
import time

import pytest

import harness

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CTL = os.environ.get("PGSHIFT_CTL_BIN", os.path.join(REPO, "pgshift-ctl"))


@pytest.fixture(scope="module", autouse=True)
def _ctl_binary():
    if not os.access(CTL, os.X_OK):
        pytest.fail("pgshift-ctl not found at %s: build it with `make pgshift-ctl`" % CTL)


def ctl(*args, port=None, env=None, timeout=30, stdin=None):
    """Run pgshift-ctl; returns CompletedProcess (text)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    e.update(env or {})
    argv = [CTL] + (["-p", str(port)] if port is not None else []) + list(args)
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, env=e, stdin=stdin)


# --------------------------------------------------------------------------
# A fake admin console: trust auth, then each Query goes to a handler that
# answers with a list of actions.


def _msg(tag, body):
    return tag + struct.pack("!I", len(body) + 4) + body


def _cstr(s):
    return s.encode() + b"\0"


def row_description(cols):
    body = struct.pack("!H", len(cols))
    for c in cols:
        body += _cstr(c) + struct.pack("!IHIhiH", 0, 0, 25, -1, -1, 0)
    return _msg(b"T", body)


def data_row(values):
    body = struct.pack("!H", len(values))
    for v in values:
        if v is None:
            body += struct.pack("!i", -1)
        else:
            b = str(v).encode()
            body += struct.pack("!i", len(b)) + b
    return _msg(b"D", body)


def command_complete(tag):
    return _msg(b"C", _cstr(tag))


def error_response(sqlstate, message, detail=None, hint=None):
    body = b"SERROR\0VERROR\0C" + _cstr(sqlstate) + b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    if hint:
        body += b"H" + _cstr(hint)
    return _msg(b"E", body + b"\0")


READY = _msg(b"Z", b"I")


class FakeConsole:
    """Listens on a free loopback port. handler(sql, state) returns a list of
    items: bytes to send, or ("sleep", seconds). ReadyForQuery is appended.
    Every query text is recorded in .queries; .disconnects counts clients
    that went away while a reply was still being sent."""

    def __init__(self, handler):
        self.handler = handler
        self.queries = []
        self.state = {}
        self.disconnects = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self):
        self.closed = True
        self.sock.close()

    def _serve(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(c,), daemon=True).start()

    @staticmethod
    def _recv(c, n):
        b = b""
        while len(b) < n:
            chunk = c.recv(n - len(b))
            if not chunk:
                raise EOFError
            b += chunk
        return b

    def _client(self, c):
        try:
            while True:  # SSLRequest / GSSENCRequest: say no, then the real startup
                (n,) = struct.unpack("!I", self._recv(c, 4))
                body = self._recv(c, n - 4)
                (code,) = struct.unpack("!I", body[:4])
                if code in (80877103, 80877104):
                    c.sendall(b"N")
                    continue
                break
            c.sendall(_msg(b"R", struct.pack("!I", 0)) +
                      _msg(b"S", _cstr("server_version") + _cstr("15.0 (fake pgshift)")) +
                      _msg(b"S", _cstr("client_encoding") + _cstr("UTF8")) +
                      _msg(b"K", struct.pack("!II", 1, 2)) + READY)
            while True:
                tag = self._recv(c, 1)
                (n,) = struct.unpack("!I", self._recv(c, 4))
                body = self._recv(c, n - 4)
                if tag == b"X":
                    return
                if tag != b"Q":
                    c.sendall(error_response("08P01", "fake console: only simple queries"))
                    return
                sql = body.rstrip(b"\0").decode()
                self.queries.append(sql)
                try:
                    for item in self.handler(sql, self.state) + [READY]:
                        if isinstance(item, tuple) and item[0] == "sleep":
                            time.sleep(item[1])
                        else:
                            c.sendall(item)
                except (BrokenPipeError, ConnectionResetError):
                    self.disconnects += 1
                    return
        except (EOFError, OSError):
            return
        finally:
            c.close()


@pytest.fixture
def fake():
    consoles = []

    def start(handler):
        f = FakeConsole(handler)
        consoles.append(f)
        return f

    yield start
    for f in consoles:
        f.close()


def unknown(sql):
    return [error_response("42601", "unknown command: %s" % sql)]


# --------------------------------------------------------------------------
# Statements built from the command line (the fake console records them).


def test_commands_send_exact_statements(fake):
    f = fake(lambda sql, st: [command_complete(sql.split()[0])])
    cases = [
        (["show", "stores"], "SHOW STORES"),
        (["show", "migrations"], "SHOW MIGRATIONS"),
        (["show", "routes"], "SHOW ROUTES"),
        (["show", "tenants"], "SHOW TENANTS"),
        (["show", "migration", "42"], "SHOW MIGRATION 42"),
        (["show", "audit", "42"], "SHOW AUDIT 42"),
        (["audit", "7"], "SHOW AUDIT 7"),
        (["pause", "7"], "PAUSE MIGRATION 7"),
        (["pause", "7", "load is high"], "PAUSE MIGRATION 7 'load is high'"),
        (["resume", "7"], "RESUME MIGRATION 7"),
        (["abort", "7", "operator's call"], "ABORT MIGRATION 7 'operator''s call'"),
        (["pause"], "PAUSE"),
        (["pause", "--timeout", "2500"], "PAUSE 2500"),
        (["resume"], "RESUME"),
        (["cutover", "7"], "CUTOVER 7"),
        (["route", "acme's", "target"], "ROUTE TENANT 'acme''s' TO 'target'"),
        (["reload"], "RELOAD"),
        (["shutdown"], "SHUTDOWN"),
        (["raw", "SHOW POOLS"], "SHOW POOLS"),
        (["migrate", "t1", "target"], "MIGRATE TENANT 't1' TO 'target'"),
        (["migrate", "o'brien", "tar'get", "batch_size=500", "max_bulk_copy_rate=0",
          "position_mapping_enabled=false", "note=it's; DROP", "rate=1.5"],
         "MIGRATE TENANT 'o''brien' TO 'tar''get' WITH (batch_size = 500, "
         "max_bulk_copy_rate = 0, position_mapping_enabled = false, note = 'it''s; DROP', "
         "rate = 1.5)"),
        (["migrate", "back\\slash", "target"], "MIGRATE TENANT 'back\\slash' TO 'target'"),
    ]
    for args, want in cases:
        r = ctl(*args, port=f.port)
        assert r.returncode == 0, (args, r.stderr)
        assert f.queries[-1] == want, args


def test_usage_errors_connect_to_nothing(fake):
    f = fake(lambda sql, st: [command_complete("X")])
    for args in (["migrate", "t1"], ["migrate", "t1", "target", "bad key=1"],
                 ["migrate", "t1", "target", "novalue"], ["show", "nonsense"],
                 ["show", "migration", "abc"], ["abort"], ["cutover"], ["watch"],
                 ["watch", "1", "--until", "SOMEDAY"], ["resume", "1", "why"],
                 ["frobnicate"], ["raw"]):
        r = ctl(*args, port=f.port)
        assert r.returncode == 64, (args, r.stdout, r.stderr)
        assert "pgshift-ctl" in r.stderr and "--help" in r.stderr
    assert f.queries == []
    r = ctl("--help")
    assert r.returncode == 0
    for word in ("show", "migrate", "watch", "pause", "resume", "abort", "cutover", "audit",
                 "route", "reload", "shutdown", "raw", "--json", "--csv", "--conninfo"):
        assert word in r.stdout


# --------------------------------------------------------------------------
# Output formats.

COLS = ["name", "value", "n"]
ROWS = [["plain", "x", "1"], ["quote\"comma,", "line\nbreak", "22"], ["ünïcode", None, "333"]]


def table_handler(sql, st):
    return [row_description(COLS)] + [data_row(r) for r in ROWS] + [command_complete("SHOW")]


def test_json_output(fake):
    f = fake(table_handler)
    r = ctl("--json", "show", "stores", port=f.port)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [dict(zip(COLS, row)) for row in ROWS]


def test_csv_output(fake):
    f = fake(table_handler)
    r = ctl("--csv", "show", "stores", port=f.port)
    assert r.returncode == 0, r.stderr
    got = list(csv.reader(io.StringIO(r.stdout, newline="")))
    assert got == [COLS] + [[v if v is not None else "" for v in row] for row in ROWS]


def test_table_output_is_aligned(fake):
    f = fake(lambda sql, st: [row_description(["store", "queries"]),
                              data_row(["source", "5"]), data_row(["a-long-name", "12345"]),
                              command_complete("SHOW")])
    r = ctl("show", "stats", port=f.port)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "(2 rows)"
    body = lines[:-1]
    # Every line has its column separator at the same place.
    assert len({l.index("|") if "|" in l else l.index("+") for l in body}) == 1
    assert body[2].endswith("|       5") and body[3].endswith("|   12345")  # numbers right
    r = ctl("-q", "show", "stats", port=f.port)
    assert "rows)" not in r.stdout


def test_expanded_show_migration(fake):
    f = fake(lambda sql, st: [row_description(["id", "phase", "progress"]),
                              data_row(["3", "BULK_COPY", "41.5"]), command_complete("SHOW")])
    r = ctl("show", "migration", "3", port=f.port)
    assert r.returncode == 0, r.stderr
    assert "-[ RECORD 1 ]" in r.stdout
    assert "phase    | BULK_COPY" in r.stdout


def test_command_tag_output(fake):
    f = fake(lambda sql, st: [command_complete("RELOAD")])
    r = ctl("reload", port=f.port)
    assert (r.returncode, r.stdout) == (0, "RELOAD\n")
    r = ctl("--json", "reload", port=f.port)
    assert json.loads(r.stdout) == {"command": "RELOAD"}


def test_server_error_is_reported_with_sqlstate(fake):
    f = fake(lambda sql, st: [error_response("55000", "tenant \"t1\" is already migrating",
                                             detail="migration 4 is in BULK_COPY",
                                             hint="ABORT MIGRATION 4 first")])
    r = ctl("migrate", "t1", "target", port=f.port)
    assert r.returncode == 1
    assert "tenant \"t1\" is already migrating [55000]" in r.stderr
    assert "detail: migration 4 is in BULK_COPY" in r.stderr
    assert "hint: ABORT MIGRATION 4 first" in r.stderr
    assert r.stdout == ""


# --------------------------------------------------------------------------
# watch


WATCH_COLS = ["id", "phase", "progress", "events_copied", "events_total", "rate"]


def test_watch_streams_rows_live(fake):
    phases = ["BULK_COPY"] * 4 + ["COMPLETED"]

    def handler(sql, st):
        if not sql.startswith("WATCH MIGRATION 9"):
            return unknown(sql)
        out = [row_description(WATCH_COLS)]
        for i, ph in enumerate(phases):
            out += [data_row(["9", ph, str(25 * i), str(250 * i), "1000", "250"]),
                    ("sleep", 0.4)]
        return out + [command_complete("WATCH")]

    f = fake(handler)
    p = subprocess.Popen([CTL, "-p", str(f.port), "--json", "watch", "9"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arrivals = []
    for line in p.stdout:
        arrivals.append((time.monotonic(), json.loads(line)))
    rc = p.wait(10)
    assert rc == 0, p.stderr.read()
    assert [a[1]["phase"] for a in arrivals] == phases
    # Each row was printed as it came, not all at the end.
    assert arrivals[-1][0] - arrivals[0][0] > 1.2
    assert f.queries == ["WATCH MIGRATION 9"]


def test_watch_table_and_exit_code_on_abort(fake):
    def handler(sql, st):
        return [row_description(WATCH_COLS),
                data_row(["9", "BULK_COPY", "10", "100", "1000", "50"]),
                data_row(["9", "ABORTED", "10", "100", "1000", "0"]),
                command_complete("WATCH")]

    f = fake(handler)
    r = ctl("watch", "9", port=f.port)
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    assert "phase" in lines[0] and "BULK_COPY" in lines[2] and "ABORTED" in lines[3]


def test_watch_until_leaves_the_stream(fake):
    def handler(sql, st):
        out = [row_description(WATCH_COLS)]
        for i in range(40):
            ph = "BULK_COPY" if i < 3 else "DUAL_WRITE"
            out += [data_row(["9", ph, "100", "1000", "1000", "0"]), ("sleep", 0.1)]
        return out + [command_complete("WATCH")]

    f = fake(handler)
    t0 = time.monotonic()
    r = ctl("--csv", "watch", "9", "--until", "DUAL_WRITE", port=f.port)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 2.5
    rows = list(csv.reader(io.StringIO(r.stdout, newline="")))
    assert rows[0] == WATCH_COLS
    assert [x[1] for x in rows[1:]] == ["BULK_COPY"] * 3 + ["DUAL_WRITE"]


def test_watch_timeout(fake):
    def handler(sql, st):
        out = [row_description(WATCH_COLS)]
        for _ in range(100):
            out += [data_row(["9", "DUAL_WRITE", "100", "1", "1", "0"]), ("sleep", 0.2)]
        return out + [command_complete("WATCH")]

    f = fake(handler)
    t0 = time.monotonic()
    r = ctl("watch", "9", "--timeout", "1", port=f.port)
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert 0.8 < time.monotonic() - t0 < 4
    assert "timed out" in r.stderr


def test_watch_falls_back_to_polling(fake):
    progress = [("PENDING", "0", "0"), ("BULK_COPY", "30", "300"), ("BULK_COPY", "60", "600"),
                ("COMPLETED", "100", "1000")]

    def handler(sql, st):
        if sql.startswith("WATCH"):
            return unknown(sql)
        if sql == "SHOW MIGRATION 5":
            i = min(st.get("n", 0), len(progress) - 1)
            st["n"] = st.get("n", 0) + 1
            ph, pct, copied = progress[i]
            return [row_description(["id", "phase", "progress", "events_copied",
                                     "events_total", "rate", "paused"]),
                    data_row(["5", ph, pct, copied, "1000", "300", "f"]),
                    command_complete("SHOW")]
        return unknown(sql)

    f = fake(handler)
    r = ctl("watch", "5", "--interval", "100", port=f.port)
    assert r.returncode == 0, r.stderr
    assert "no WATCH MIGRATION; polling" in r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("[") and "PENDING" in lines[0]
    assert lines[-1].startswith("[" + "#" * 30 + "] 100.0%") and "COMPLETED" in lines[-1]
    assert any("30.0%" in l and "300/1000 events" in l for l in lines)
    assert f.queries[0] == "WATCH MIGRATION 5"
    assert set(f.queries[1:]) == {"SHOW MIGRATION 5"}


def test_watch_polling_field_value_shape_and_refusal(fake):
    def handler(sql, st):
        if sql.startswith("WATCH"):
            return unknown(sql)
        if sql == "SHOW MIGRATION 6":
            st["n"] = st.get("n", 0) + 1
            phase = "BULK_COPY" if st["n"] < 3 else "FAILED"
            return [row_description(["field", "value"])] + [
                data_row(r) for r in (["phase", phase], ["events_total", "10"],
                                      ["events_copied", "5"], ["last_error", "disk full"])
            ] + [command_complete("SHOW")]
        return [error_response("42704", "migration %s does not exist" % sql.split()[-1])]

    f = fake(handler)
    r = ctl("watch", "6", "--interval", "100", port=f.port)
    assert r.returncode == 3, r.stderr
    assert "50.0%" in r.stdout and "FAILED" in r.stdout and "disk full" in r.stdout
    r = ctl("watch", "77", "--interval", "100", port=f.port)
    assert r.returncode == 1
    assert "migration 77 does not exist [42704]" in r.stderr


def test_watch_error_from_watch_itself(fake):
    f = fake(lambda sql, st: [error_response("42704", "migration 8 does not exist")])
    r = ctl("watch", "8", port=f.port)
    assert r.returncode == 1
    assert "migration 8 does not exist [42704]" in r.stderr
    assert f.queries == ["WATCH MIGRATION 8"]  # no polling after a real refusal


# --------------------------------------------------------------------------
# Connection problems.


def test_unreachable_pgshift():
    r = ctl("show", "stores", port=harness.free_port())
    assert r.returncode == 2
    assert "cannot connect to the pgshift admin console at 127.0.0.1" in r.stderr
    assert "is pgshift running" in r.stderr


def test_conninfo_and_flags(fake):
    f = fake(lambda sql, st: [command_complete("RELOAD")])
    r = ctl("-c", "host=127.0.0.1 port=%d user=someone" % f.port, "reload")
    assert r.returncode == 0, r.stderr
    r = ctl("-c", "postgresql://admin@127.0.0.1:1/pgshift", "-p", str(f.port), "reload")
    assert r.returncode == 0, r.stderr  # -p overrides the URI's port
    r = ctl("-c", "not a conninfo", "reload")
    assert r.returncode == 64


# --------------------------------------------------------------------------
# A real pgshift.


def admin_env():
    return {"PGPASSWORD": harness.PASSWORDS["admin"]}


@pytest.mark.proxy_only
def test_real_show_commands(endpoint):
    port = endpoint.pgshift.admin_port
    r = ctl("show", "stores", port=port, env=admin_env())
    assert r.returncode == 0, r.stderr
    assert "main" in r.stdout and "(1 row)" in r.stdout
    r = ctl("--json", "show", "stores", port=port, env=admin_env())
    stores = json.loads(r.stdout)
    assert stores[0]["name"] == "main" and stores[0]["default"] == "yes"
    assert stores[0]["port"] == str(endpoint.cluster.port)
    r = ctl("--csv", "show", "version", port=port, env=admin_env())
    rows = list(csv.reader(io.StringIO(r.stdout, newline="")))
    assert rows[0] == ["version"] and rows[1][0].startswith("pgshift ")
    for what in ("clients", "servers", "pools", "stats", "config"):
        r = ctl("show", what, port=port, env=admin_env())
        assert r.returncode == 0, (what, r.stderr)
    r = ctl("--json", "show", "config", port=port, env=admin_env())
    keys = {row["key"] for row in json.loads(r.stdout)}
    assert "pgshift.admin_port" in keys


@pytest.mark.proxy_only
def test_real_refusal_and_auth(endpoint):
    port = endpoint.pgshift.admin_port
    r = ctl("raw", "FROBNICATE", port=port, env=admin_env())
    assert r.returncode == 1
    assert "[42601]" in r.stderr and "FROBNICATE" in r.stderr
    r = ctl("show", "stores", port=port, env={"PGPASSWORD": "wrong"})
    assert r.returncode == 2
    assert "admin_users" in r.stderr
    r = ctl("-U", "app", "show", "stores", port=port,
            env={"PGPASSWORD": harness.PASSWORDS["app"]})
    assert r.returncode == 2  # not an admin user


@pytest.mark.proxy_only
def test_real_reload_and_watch_fallback(pgshift_factory):
    ep = pgshift_factory()
    port = ep.pgshift.admin_port
    r = ctl("reload", port=port, env=admin_env())
    assert (r.returncode, r.stdout) == (0, "RELOAD\n"), r.stderr
    # Whatever this build knows of migrations, the answer is clean: a result or a
    # clear refusal, never a hang or a crash.
    r = ctl("watch", "1", "--timeout", "5", port=port, env=admin_env())
    assert r.returncode in (0, 1, 3, 4), r.stderr
    if r.returncode == 1:
        assert "[" in r.stderr and "]" in r.stderr
