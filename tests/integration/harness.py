"""Integration-test harness: throwaway PostgreSQL 15 clusters and pgshift
processes, plus a tiny raw protocol client.

Everything here runs as root (CI) or as an ordinary user; PostgreSQL itself
runs as user `postgres` when we are root (it refuses root).

Public pieces used by conftest.py and the tests:
  Cluster        one initdb'ed, running PostgreSQL 15 server
  Pgshift        one running pgshift process with a written config
  Endpoint       where a client connects (pgshift, or PostgreSQL directly)
  RawConn        a raw-socket protocol client (startup, SCRAM/md5, messages)
  free_port()    a free loopback TCP port
"""

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_SQL = os.path.join(HERE, "schema.sql")

DBNAME = "eventstore"
# Roles created on every cluster (name -> password). `app` owns the database
# and is the role pgshift itself uses towards the store.
PASSWORDS = {
    "app": "app-secret",
    "scramuser": "scram-secret",
    "md5user": "md5-secret",
    "admin": "admin-secret",
}

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                     "WARNING: ThreadSanitizer")


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_root():
    return os.geteuid() == 0


def _pg_user():
    """The OS user PostgreSQL runs as."""
    return "postgres" if _is_root() else pwd.getpwuid(os.geteuid()).pw_name


def _as_pg(argv):
    if _is_root():
        return ["runuser", "-u", "postgres", "--"] + argv
    return argv


def _chown_pg(path):
    if _is_root():
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def run(argv, check=True, timeout=120, **kw):
    """subprocess.run with captured text output and a readable failure."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError("command failed (%d): %s\nstdout:\n%s\nstderr:\n%s"
                           % (p.returncode, " ".join(argv), p.stdout, p.stderr))
    return p


def wait_port(host, port, timeout, alive=None):
    """Wait until host:port accepts a TCP connection. `alive` (optional)
    returns False when the process we wait for has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def make_tls_cert(directory, cn="localhost"):
    """Self-signed certificate + key (for 127.0.0.1 and localhost). Returns
    (cert_path, key_path)."""
    cert = os.path.join(directory, "server.crt")
    key = os.path.join(directory, "server.key")
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=" + cn, "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", key, "-out", cert])
    os.chmod(key, 0o600)
    return cert, key


def md5_secret(user, password):
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


class Cluster:
    """A PostgreSQL 15 cluster in `basedir/name`: data dir, unix socket dir,
    log file. Listens on 127.0.0.1:port and on a unix socket in sockdir."""

    def __init__(self, basedir, name, tls_cert=None, tls_key=None):
        self.name = name
        self.dir = os.path.join(basedir, name)
        self.datadir = os.path.join(self.dir, "data")
        self.sockdir = os.path.join(self.dir, "sock")
        self.logfile = os.path.join(self.dir, "postgres.log")
        self.port = None
        self.host = "127.0.0.1"
        self.dbname = DBNAME
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.scram_secrets = {}

    # -- life cycle -------------------------------------------------------
    def init(self):
        os.makedirs(self.dir)
        os.makedirs(self.sockdir)
        for d in (self.dir, self.sockdir):
            _chown_pg(d)
            os.chmod(d, 0o755)
        run(_as_pg([os.path.join(PG_BIN, "initdb"), "-D", self.datadir, "-U", "postgres",
                    "-A", "trust", "-E", "UTF8", "--locale=C", "-N"]))
        self.port = free_port()
        conf = [
            "listen_addresses = '127.0.0.1'",
            "port = %d" % self.port,
            "unix_socket_directories = '%s'" % self.sockdir,
            "password_encryption = 'scram-sha-256'",
            "max_connections = 100",
            "shared_buffers = 32MB",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "logging_collector = off",
            "log_min_messages = warning",
            "wal_level = logical",
            "max_wal_senders = 4",
            "max_replication_slots = 4",
        ]
        if self.tls_cert:
            # PostgreSQL insists that the key belongs to it and is 0600.
            cert = os.path.join(self.dir, "server.crt")
            key = os.path.join(self.dir, "server.key")
            shutil.copy(self.tls_cert, cert)
            shutil.copy(self.tls_key, key)
            for f in (cert, key):
                _chown_pg(f)
            os.chmod(key, 0o600)
            conf += ["ssl = on", "ssl_cert_file = '%s'" % cert, "ssl_key_file = '%s'" % key]
        with open(os.path.join(self.datadir, "postgresql.auto.conf"), "a") as f:
            f.write("\n".join(conf) + "\n")
        su = _pg_user()
        hba = [
            "# written by tests/integration/harness.py",
            "local all %s trust" % su,
            "local all postgres trust",
            "local all md5user md5",
            "local all all scram-sha-256",
            "host all md5user 127.0.0.1/32 md5",
            "host all all 127.0.0.1/32 scram-sha-256",
        ]
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w") as f:
            f.write("\n".join(hba) + "\n")
        _chown_pg(os.path.join(self.datadir, "pg_hba.conf"))
        self.start()
        self._bootstrap()
        return self

    def start(self):
        run(_as_pg([os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-l", self.logfile,
                    "-w", "-t", "60", "start"]))

    def stop(self, mode="fast"):
        if os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
            run(_as_pg([os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w",
                        "-t", "60", "stop"]), check=False)

    def kill(self):
        """Immediate stop (a crash, as far as clients can tell)."""
        self.stop("immediate")

    def running(self):
        p = run(_as_pg([os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "status"]),
                check=False)
        return p.returncode == 0

    # -- SQL as the superuser ----------------------------------------------
    def psql(self, sql, dbname=None, check=True):
        """Run SQL through psql as superuser over the unix socket; returns
        stdout (unaligned, tuples only)."""
        argv = _as_pg([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t", "-v",
                       "ON_ERROR_STOP=1", "-h", self.sockdir, "-p", str(self.port), "-U",
                       "postgres", "-d", dbname or "postgres", "-c", sql])
        return run(argv, check=check).stdout.strip()

    def _bootstrap(self):
        pw = PASSWORDS
        self.psql("""
            CREATE ROLE app LOGIN PASSWORD '%s';
            CREATE ROLE scramuser LOGIN PASSWORD '%s' IN ROLE app;
            CREATE ROLE admin LOGIN PASSWORD '%s';
            SET password_encryption = 'md5';
            CREATE ROLE md5user LOGIN PASSWORD '%s' IN ROLE app;
        """ % (pw["app"], pw["scramuser"], pw["admin"], pw["md5user"]))
        self.psql("CREATE DATABASE %s OWNER app" % DBNAME)
        with open(SCHEMA_SQL) as f:
            schema = f.read()
        # The schema belongs to app, as an application's migrations would make it.
        self.psql("SET ROLE app;\n" + schema, dbname=DBNAME)
        for role in ("app", "scramuser", "md5user"):
            self.scram_secrets[role] = self.psql(
                "SELECT rolpassword FROM pg_authid WHERE rolname = '%s'" % role)

    # -- client side -----------------------------------------------------
    def conninfo(self, user="app", password=None, dbname=None, **extra):
        """libpq connection string for TCP on 127.0.0.1."""
        kv = {"host": self.host, "port": self.port, "dbname": dbname or self.dbname,
              "user": user, "password": password if password is not None else PASSWORDS[user]}
        kv.update(extra)
        return " ".join("%s=%s" % (k, _quote(v)) for k, v in kv.items())

    def endpoint(self):
        return Endpoint(self.host, self.port, self.dbname, kind="postgres", cluster=self)


def _quote(v):
    v = str(v)
    if v == "" or any(c in v for c in " '\\"):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return v


class Endpoint:
    """Where clients connect: pgshift's listener, or PostgreSQL itself in
    direct mode (PGSHIFT_TARGET=postgres)."""

    def __init__(self, host, port, dbname, kind, cluster=None, pgshift=None):
        self.host = host
        self.port = port
        self.dbname = dbname
        self.kind = kind  # "pgshift" | "postgres"
        self.cluster = cluster
        self.pgshift = pgshift

    @property
    def direct(self):
        return self.kind == "postgres"

    def conninfo(self, user="app", password=None, dbname=None, **extra):
        kv = {"host": self.host, "port": self.port, "dbname": dbname or self.dbname,
              "user": user, "password": password if password is not None else PASSWORDS[user],
              "connect_timeout": 10}
        kv.update(extra)
        return " ".join("%s=%s" % (k, _quote(v)) for k, v in kv.items())

    def env(self, user="app", password=None, dbname=None):
        """Environment for psql / pgbench / node (PG* variables)."""
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("PG") and k not in ("PGSHIFT_BIN", "PGSHIFT_TARGET"):
                del e[k]
        e.update({"PGHOST": self.host, "PGPORT": str(self.port),
                  "PGDATABASE": dbname or self.dbname, "PGUSER": user,
                  "PGPASSWORD": password if password is not None else PASSWORDS[user],
                  "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable"})
        return e

    def __repr__(self):
        return "Endpoint(%s %s:%s/%s)" % (self.kind, self.host, self.port, self.dbname)



def fetch_metrics(http_port):
    """pgshift's /metrics page as {sample name with labels: value}."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % http_port, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out

class Pgshift:
    """One pgshift process. `stores` maps store name -> Cluster; the first is
    the default store. `settings` are extra [pgshift] keys (they override the
    defaults written here); `sections` adds whole sections."""

    def __init__(self, binary, workdir, stores, settings=None, sections=None,
                 auth_users=None, tls=None):
        self.binary = binary
        self.dir = workdir
        os.makedirs(self.dir, exist_ok=True)
        self.stores = stores
        self.config_path = os.path.join(self.dir, "pgshift.ini")
        self.auth_file = os.path.join(self.dir, "userlist.txt")
        self.stderr_path = os.path.join(self.dir, "pgshift.stderr")
        self.stdout_path = os.path.join(self.dir, "pgshift.stdout")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.admin_port = free_port()
        self.http_port = free_port()
        self.sockdir = os.path.join(self.dir, "sock")
        os.makedirs(self.sockdir, exist_ok=True)
        first = next(iter(stores.values()))
        self.dbname = first.dbname
        self.proc = None
        self.exit_code = None
        self._stopped = False
        self._stderr_f = None
        self._stdout_f = None
        self.settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "admin_port": self.admin_port,
            "http_port": self.http_port,
            "unix_socket_dir": self.sockdir,
            "auth_type": "scram-sha-256",
            "auth_file": self.auth_file,
            "admin_users": "admin",
            "default_store": next(iter(stores)),
            "log_level": "info",
            "shutdown_timeout_ms": 5000,
        }
        # PGSHIFT_POOL_MODE / PGSHIFT_POOL_SIZE run a suite in another pool mode;
        # PGSHIFT_LOG_LEVEL=debug logs more.
        for env_key, key in (("PGSHIFT_POOL_MODE", "pool_mode"), ("PGSHIFT_POOL_SIZE", "pool_size")):
            if os.environ.get(env_key):
                self.settings[key] = os.environ[env_key]
        if tls:
            self.settings.update({"client_tls_mode": "allow",
                                  "client_tls_cert_file": tls[0],
                                  "client_tls_key_file": tls[1]})
        self.settings.update(settings or {})
        if os.environ.get("PGSHIFT_LOG_LEVEL"):
            self.settings["log_level"] = os.environ["PGSHIFT_LOG_LEVEL"]
        self.sections = sections or {}
        self.auth_users = auth_users

    def write_config(self):
        users = self.auth_users
        if users is None:
            first = next(iter(self.stores.values()))
            users = {
                "app": PASSWORDS["app"],  # plain
                "scramuser": first.scram_secrets["scramuser"],
                "md5user": md5_secret("md5user", PASSWORDS["md5user"]),
                "admin": PASSWORDS["admin"],
            }
        with open(self.auth_file, "w") as f:
            for u, s in users.items():
                f.write('"%s" "%s"\n' % (u, s))
        os.chmod(self.auth_file, 0o600)
        lines = ["; written by tests/integration/harness.py", "[pgshift]"]
        lines += ["%s = %s" % (k, v) for k, v in self.settings.items()]
        lines += ["", "[stores]"]
        for name, cl in self.stores.items():
            lines.append("%s = %s" % (name, cl.conninfo(user="app")))
        for sec, kv in self.sections.items():
            lines += ["", "[%s]" % sec] + ["%s = %s" % (k, v) for k, v in kv.items()]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, timeout=15):
        self.write_config()
        self._stderr_f = open(self.stderr_path, "ab")
        self._stdout_f = open(self.stdout_path, "ab")
        env = dict(os.environ)
        env.update(getattr(self, "extra_env", None) or {})  # e.g. PGSHIFT_FAILPOINT
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self.proc = subprocess.Popen([self.binary, "-c", self.config_path], cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=self._stdout_f,
                                     stderr=self._stderr_f, env=env)
        if not wait_port(self.host, self.port, timeout, alive=self.alive):
            out = self.stderr()
            self.stop()
            raise RuntimeError("pgshift did not accept connections on port %d within %ds "
                               "(exit code %s)\nconfig:\n%s\nstderr:\n%s"
                               % (self.port, timeout, self.proc.returncode,
                                  open(self.config_path).read(), out[-4000:]))
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def problems(self, stopped=False):
        """What is wrong with this process so far: died, BUG or a sanitizer
        report on stderr. Empty list when healthy. With stopped=True (after
        stop()), a non-zero exit status after SIGTERM is a problem instead."""
        out = []
        if stopped:
            if self.exit_code != 0:
                out.append("pgshift did not exit cleanly on SIGTERM (status %s)"
                           % self.exit_code)
        elif self.proc is not None and not self._stopped and self.proc.poll() is not None:
            out.append("pgshift exited on its own with code %s" % self.proc.returncode)
        err = self.stderr()
        if "pgshift: BUG at" in err:
            out.append("pgshift stderr contains BUG")
        for m in SANITIZER_MARKERS:
            if m in err:
                out.append("pgshift stderr contains a sanitizer report (%r)" % m)
        return out

    def terminate(self):
        """Send SIGTERM (drain) without waiting; stop() collects the exit."""
        if self.proc is not None and self.proc.poll() is None and not self._stopped:
            self._stopped = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout=20):
        """SIGTERM, wait; SIGKILL if it does not go. Returns the exit status
        (None if it had to be killed). Idempotent."""
        if self.proc is None:
            return None
        if self.exit_code is not None:
            return self.exit_code
        self.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        for f in (self._stderr_f, self._stdout_f):
            if f:
                f.close()
        self._stderr_f = self._stdout_f = None
        self.exit_code = code
        return code

    def endpoint(self):
        return Endpoint(self.host, self.port, self.dbname, kind="pgshift",
                        cluster=next(iter(self.stores.values())), pgshift=self)


# --------------------------------------------------------------------------
# A raw protocol client, for malformed input and exact error checks.


class ProtocolError(Exception):
    pass


def parse_fields(body):
    """ErrorResponse / NoticeResponse body -> {code letter: value}."""
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


class RawConn:
    """Blocking raw-socket client speaking protocol 3.0."""

    def __init__(self, host, port, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def send_msg(self, tag, body):
        self.send(tag + struct.pack("!I", len(body) + 4) + body)

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def recv_msg(self):
        """Next (tag, body) from the server; EOFError when it closed."""
        self._fill(5)
        tag = self.buf[:1]
        (length,) = struct.unpack("!I", self.buf[1:5])
        self._fill(1 + length)
        body = self.buf[5:1 + length]
        self.buf = self.buf[1 + length:]
        return tag, body

    def closed_by_peer(self, timeout=5):
        """True when the server closes the connection within `timeout`
        (discarding anything it still sends)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def startup(self, user, dbname, password=None, options=None):
        """Send StartupMessage, answer cleartext / md5 / SCRAM-SHA-256, read
        until ReadyForQuery. Returns the list of messages seen. Raises
        ProtocolError with the error fields on ErrorResponse."""
        params = {"user": user, "database": dbname}
        params.update(options or {})
        body = struct.pack("!I", 196608)
        for k, v in params.items():
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        self.send(struct.pack("!I", len(body) + 4) + body)
        seen = []
        scram = None
        while True:
            tag, body = self.recv_msg()
            seen.append((tag, body))
            if tag == b"E":
                raise ProtocolError(parse_fields(body))
            if tag == b"R":
                (code,) = struct.unpack("!I", body[:4])
                if code == 0:
                    continue
                if code == 3:
                    self.send_msg(b"p", password.encode() + b"\0")
                elif code == 5:
                    salt = body[4:8]
                    inner = hashlib.md5((password + user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.send_msg(b"p", b"md5" + outer.encode() + b"\0")
                elif code == 10:
                    mechs = body[4:].split(b"\0")
                    if b"SCRAM-SHA-256" not in mechs:
                        raise ProtocolError({"M": "no SCRAM-SHA-256 in %r" % mechs})
                    scram = _Scram(password)
                    first = scram.client_first()
                    self.send_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
                elif code == 11:
                    self.send_msg(b"p", scram.client_final(body[4:]))
                elif code == 12:
                    scram.verify_server_final(body[4:])
                else:
                    raise ProtocolError({"M": "unsupported auth request %d" % code})
            elif tag == b"Z":
                return seen

    def query(self, sql):
        """Simple query; returns (rows, error_fields or None). Rows are lists
        of str/None."""
        self.send_msg(b"Q", sql.encode() + b"\0")
        rows, err = [], None
        while True:
            tag, body = self.recv_msg()
            if tag == b"D":
                (n,) = struct.unpack("!H", body[:2])
                off, row = 2, []
                for _ in range(n):
                    (ln,) = struct.unpack("!i", body[off:off + 4])
                    off += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(body[off:off + ln].decode())
                        off += ln
                rows.append(row)
            elif tag == b"E":
                err = parse_fields(body)
            elif tag == b"Z":
                return rows, err

    def read_error(self):
        """Read messages until an ErrorResponse; return its fields. Raises
        EOFError when the connection closes first."""
        while True:
            tag, body = self.recv_msg()
            if tag == b"E":
                return parse_fields(body)


class _Scram:
    """Client side of SCRAM-SHA-256 (RFC 5802/7677), no channel binding."""

    def __init__(self, password):
        self.password = password.encode()
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = "n=,r=" + self.nonce

    def client_first(self):
        return ("n,," + self.first_bare).encode()

    def client_final(self, server_first):
        sf = server_first.decode()
        attrs = dict(kv.split("=", 1) for kv in sf.split(","))
        if not attrs["r"].startswith(self.nonce):
            raise ProtocolError({"M": "server nonce does not extend ours"})
        salt = base64.b64decode(attrs["s"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = "c=biws,r=" + attrs["r"]
        auth_msg = ",".join([self.first_bare, sf, without_proof]).encode()
        sig = hmac.new(stored_key, auth_msg, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.expected_server_sig = hmac.new(server_key, auth_msg, hashlib.sha256).digest()
        return (without_proof + ",p=" + base64.b64encode(proof).decode()).encode()

    def verify_server_final(self, server_final):
        attrs = dict(kv.split("=", 1) for kv in server_final.decode().split(","))
        if base64.b64decode(attrs.get("v", "")) != self.expected_server_sig:
            raise ProtocolError({"M": "bad SCRAM server signature"})
