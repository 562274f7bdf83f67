"""An application load for the migration tests (issue #5, item 6): many
client connections appending to an event store through pgshift, the way an
event-sourced application does (DESIGN.md, "The event store it serves").

Every append is one transaction: the version probe
    SELECT COALESCE(MAX(version),0) FROM events WHERE aggregate_id=$1 AND aggregate_type=$2
then one multi-row INSERT of 1-3 events ... RETURNING global_position,
sometimes an outbox row and a snapshot upsert, and about 10% of them end in
ROLLBACK. Clients share a few "hot" aggregates per tenant, so two of them
regularly append the same version of the same stream: the loser gets
unique_violation (23505), the application's own optimistic-concurrency
conflict, which is counted, not reported as an error.

Three drivers at once:
  psycopg   threads; half use the extended protocol (with psycopg's automatic
            prepared statements), half the simple protocol (ClientCursor).
  asyncpg   tasks on one event loop in a thread; each connection prepares
            every statement once right after connecting (named prepared
            statements, the usual asyncpg pattern). Leaving the preparing to
            asyncpg's statement cache inside the first transaction currently
            fails in pgshift for a tenant off the default store (0A000 "send a
            Sync between them"; a routing bug reported with issue #5's tests).
  node pg   node/appload.js as a subprocess (half with named statements).
Some clients set the session tenant (SET pgshift.tenant, one tenant each),
the others do not and move between tenants from one transaction to the next.

Each client records every acknowledged (committed) event, outbox row and
snapshot version, every error that is not a 23505 conflict, the commits whose
outcome it cannot know (the connection broke during COMMIT: "in doubt"), and
the start and duration of every operation, so that a test can find the
longest stall of each tenant and of any time window. Clients reconnect after
errors and stop on request.

Public API:
  TenantLoad(tenant, weight=1, hot=(), sessions=0)  one tenant of the load
  AppLoad(endpoint, tenants, psycopg=16, asyncpg=10, node=8, think_ms=(5, 25))
      .start(), .stop() -> LoadResult, .acked_count(tenant),
      .wait_acked(tenant, n, timeout), .result (live, for the Python clients)
  LoadResult  acked / in_doubt / outbox / snapshots / conflicts / rollbacks /
              errors / ops, with helpers: events_of(tenant), errors_except(),
              max_stall(tenant, since, until), summary()
"""

import asyncio
import json
import os
import random
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict

import asyncpg
import psycopg

from harness import PASSWORDS

AGG_TYPE = "Order"
NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")

PROBE = ("SELECT COALESCE(MAX(version),0) FROM events "
         "WHERE aggregate_id=%s AND aggregate_type=%s")
EVENT_COLS = ("event_id, aggregate_id, aggregate_type, event_type, tenant_id, actor_id, "
              "version, timestamp, payload")
OUTBOX = ("INSERT INTO event_outbox (event_id, aggregate_id, aggregate_type, event_type, "
          "tenant_id, payload) VALUES (%s, %s, %s, %s, %s, %s)")
SNAPSHOT = ("INSERT INTO snapshots (aggregate_id, aggregate_type, tenant_id, version, state) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (aggregate_id, aggregate_type) DO UPDATE "
            "SET version = EXCLUDED.version, state = EXCLUDED.state")


def append_sql(k):
    """INSERT of k events (8 parameters each; timestamp is now() on the
    server, so a replayed statement would differ from the source's row)."""
    row = "(%s, %s, %s, %s, %s, %s, %s, now(), %s)"
    return ("INSERT INTO events (%s) VALUES %s RETURNING global_position"
            % (EVENT_COLS, ", ".join([row] * k)))


def dollar(sql):
    """%s placeholders -> $1..$n (asyncpg, node)."""
    parts = sql.split("%s")
    out = parts[0]
    for i, p in enumerate(parts[1:], 1):
        out += "$%d" % i + p
    return out


# Errors that mean "the connection is gone" rather than "the statement failed".
CONNECTION_STATES = ("08000", "08003", "08006", "08001", "08004", "57P01", "57P02", "57P03")


class TenantLoad:
    """One tenant of the load: `weight` is its share of the non-session
    clients' transactions, `hot` aggregates shared by every client (existing
    streams may be given; new ones are added), `sessions` how many clients
    per driver set the session tenant to it."""

    def __init__(self, tenant, weight=1, hot=(), sessions=1, new_hot=4):
        self.tenant = tenant
        self.weight = weight
        self.hot = list(hot) + [str(uuid.uuid4()) for _ in range(new_hot)]
        self.sessions = sessions

    def as_json(self):
        return {"id": self.tenant, "weight": self.weight, "hot": self.hot}


class Ack:
    __slots__ = ("event_id", "tenant", "aggregate_id", "version", "position", "t_ack",
                 "client")

    def __init__(self, event_id, tenant, aggregate_id, version, position, t_ack, client):
        self.event_id = event_id
        self.tenant = tenant
        self.aggregate_id = aggregate_id
        self.version = version
        self.position = position
        self.t_ack = t_ack
        self.client = client

    def __repr__(self):
        return "Ack(%s %s v%d pos %s at %.3f by %s)" % (self.event_id, self.aggregate_id,
                                                          self.version, self.position,
                                                          self.t_ack, self.client)


class LoadError:
    __slots__ = ("client", "tenant", "sqlstate", "message", "t", "step")

    def __init__(self, client, tenant, sqlstate, message, t, step):
        self.client = client
        self.tenant = tenant
        self.sqlstate = sqlstate
        self.message = message
        self.t = t
        self.step = step

    @property
    def connection(self):
        """The connection broke (or could not be made): not a statement error."""
        return self.sqlstate in (None, "") or self.sqlstate in CONNECTION_STATES

    def __repr__(self):
        return "LoadError(%s tenant=%s step=%s sqlstate=%s t=%.3f: %s)" % (
            self.client, self.tenant, self.step, self.sqlstate, self.t, self.message)


class LoadResult:
    """What the clients saw. Times are wall-clock seconds (time.time()), the
    same clock in every driver."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}  # event_id -> Ack
        self.in_doubt = {}  # event_id -> (tenant, t) commit outcome unknown
        self.outbox = {}  # event_id -> (tenant, t_ack)
        self.snapshots = defaultdict(int)  # (tenant, aggregate_id) -> highest acked version
        self.commits = Counter()  # tenant -> committed transactions
        self.conflicts = Counter()  # tenant -> 23505 conflicts
        self.rollbacks = Counter()  # tenant -> deliberate ROLLBACKs
        self.errors = []  # LoadError
        self.ops = []  # (tenant, t_start, duration_s, client)
        self.clients = set()

    # -- recording (thread-safe) ------------------------------------------
    def op(self, tenant, t0, dur, client):
        with self.lock:
            self.ops.append((tenant, t0, dur, client))

    def commit(self, tenant, acks, outbox_ids, snapshot):
        with self.lock:
            self.commits[tenant] += 1
            for a in acks:
                self.acked[a.event_id] = a
            for e in outbox_ids:
                self.outbox[e] = (tenant, acks[0].t_ack)
            if snapshot:
                key = (tenant, snapshot[0])
                self.snapshots[key] = max(self.snapshots[key], snapshot[1])

    def doubt(self, tenant, event_ids, t):
        with self.lock:
            for e in event_ids:
                self.in_doubt[e] = (tenant, t)

    def error(self, err):
        with self.lock:
            self.errors.append(err)

    def merge_node(self, out, names):
        """Add the JSON result of node/appload.js."""
        with self.lock:
            for e in out["acked"]:
                tenant, eid, agg, version, pos, t_ack, client = e
                self.acked[eid] = Ack(eid, tenant, agg, version, pos, t_ack / 1000.0, client)
            for tenant, eids, t in out["inDoubt"]:
                for e in eids:
                    self.in_doubt[e] = (tenant, t / 1000.0)
            for eid, tenant, t in out["outbox"]:
                self.outbox[eid] = (tenant, t / 1000.0)
            for tenant, agg, v in out["snapshots"]:
                self.snapshots[(tenant, agg)] = max(self.snapshots[(tenant, agg)], v)
            for k in ("commits", "conflicts", "rollbacks"):
                getattr(self, k).update(out[k])
            for c, tenant, state, msg, t, step in out["errors"]:
                self.errors.append(LoadError(c, tenant, state, msg, t / 1000.0, step))
            for ti, t0, dur, c in out["ops"]:
                self.ops.append((names[ti], t0 / 1000.0, dur / 1000.0, c))
            self.clients.update(out["clients"])

    # -- reading -------------------------------------------------------------
    def events_of(self, tenant):
        return {e: a for e, a in self.acked.items() if a.tenant == tenant}

    def errors_except(self, allow=None):
        """Errors that `allow(err)` does not excuse (all of them by default)."""
        return [e for e in self.errors if not (allow and allow(e))]

    def max_stall(self, tenant=None, since=None, until=None):
        """Longest operation (seconds) of `tenant` (None: any) that overlaps
        [since, until]."""
        best = 0.0
        for t, t0, dur, _ in self.ops:
            if tenant is not None and t != tenant:
                continue
            if since is not None and t0 + dur < since:
                continue
            if until is not None and t0 > until:
                continue
            best = max(best, dur)
        return best

    def ops_completed(self, tenant, since):
        """Operations of `tenant` that ended after `since`."""
        return sum(1 for t, t0, dur, _ in self.ops if t == tenant and t0 + dur >= since)

    def summary(self):
        return ("%d clients, commits %s, conflicts %s, rollbacks %s, %d events acked, "
                "%d in doubt, %d errors" % (len(self.clients), dict(self.commits),
                                            dict(self.conflicts), dict(self.rollbacks),
                                            len(self.acked), len(self.in_doubt),
                                            len(self.errors)))


class _Plan:
    """The random choices of one client (shared by the Python drivers)."""

    def __init__(self, tenants, session_tenant, seed):
        self.rng = random.Random(seed)
        self.tenants = tenants
        self.session = session_tenant
        self.weights = [t.weight for t in tenants]

    def next(self):
        """(TenantLoad, aggregate, n_events, outbox?, snapshot?, rollback?)"""
        rng = self.rng
        if self.session is not None:
            tl = self.session
        else:
            tl = rng.choices(self.tenants, self.weights)[0]
        agg = rng.choice(tl.hot) if rng.random() < 0.6 else str(uuid.uuid4())
        return (tl, agg, rng.randint(1, 3), rng.random() < 0.35, rng.random() < 0.3,
                rng.random() < 0.1)


def _event_rows(tenant, agg, base, k, client, seq):
    """k events following version `base`: (event_ids, flat parameters)."""
    ids, params = [], []
    for j in range(k):
        eid = str(uuid.uuid4())
        ids.append(eid)
        params += [eid, agg, AGG_TYPE, "Ev%d" % ((base + j) % 7), tenant, client,
                   base + j + 1, json.dumps({"client": client, "seq": seq, "j": j})]
    return ids, params


class AppLoad:
    """The load. `tenants` is a list of TenantLoad; the first ones get the
    session clients (each TenantLoad.sessions per driver)."""

    def __init__(self, endpoint, tenants, psycopg_clients=16, asyncpg_clients=10,
                 node_clients=8, think_ms=(5, 25), seed=None, name="load"):
        self.ep = endpoint
        self.tenants = list(tenants)
        self.n_psycopg = psycopg_clients
        self.n_asyncpg = asyncpg_clients
        self.n_node = node_clients
        self.think = think_ms
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.name = name
        self.result = LoadResult()
        self.stop_flag = threading.Event()
        self._threads = []
        self._aloop_thread = None
        self._node = None
        self._node_out = None
        self._node_err = None

    @property
    def total_clients(self):
        return self.n_psycopg + self.n_asyncpg + self.n_node

    def _sessions(self, n):
        """For n clients of one driver: the session TenantLoad (or None) of each."""
        out = []
        for tl in self.tenants:
            out += [tl] * tl.sessions
        out = out[:n]
        return out + [None] * (n - len(out))

    # -- psycopg ---------------------------------------------------------------
    def _psycopg_client(self, k, session):
        name = "psycopg-%d" % k
        simple = k % 2 == 1
        plan = _Plan(self.tenants, session, self.seed * 1000 + k)
        res = self.result
        res.clients.add(name)
        conn = None
        seq = 0
        while not self.stop_flag.is_set():
            if conn is None:
                try:
                    conn = psycopg.connect(self.ep.conninfo(), autocommit=True)
                    if session is not None:
                        conn.execute("SET pgshift.tenant = '%s'" % session.tenant)
                except psycopg.Error as e:
                    res.error(LoadError(name, session and session.tenant, e.sqlstate, str(e),
                                        time.time(), "connect"))
                    conn = _close(conn)
                    self.stop_flag.wait(0.2)
                    continue
            tl, agg, k_ev, outbox, snap, rollback = plan.next()
            seq += 1
            cur = psycopg.ClientCursor(conn) if simple else conn.cursor()
            t0 = time.time()
            step = "begin"
            ids = []
            try:
                cur.execute("BEGIN")
                step = "probe"
                cur.execute(PROBE, (agg, AGG_TYPE))
                base = cur.fetchone()[0]
                ids, params = _event_rows(tl.tenant, agg, base, k_ev, name, seq)
                step = "append"
                cur.execute(append_sql(k_ev), params)
                positions = [r[0] for r in cur.fetchall()]
                if outbox:
                    step = "outbox"
                    cur.execute(OUTBOX, (ids[0], agg, AGG_TYPE, "Ev", tl.tenant,
                                         json.dumps({"outbox": ids[0]})))
                if snap:
                    step = "snapshot"
                    cur.execute(SNAPSHOT, (agg, AGG_TYPE, tl.tenant, base + k_ev,
                                           json.dumps({"v": base + k_ev})))
                if rollback:
                    step = "rollback"
                    cur.execute("ROLLBACK")
                    with res.lock:
                        res.rollbacks[tl.tenant] += 1
                else:
                    step = "commit"
                    cur.execute("COMMIT")
                    t1 = time.time()
                    res.commit(tl.tenant,
                               [Ack(e, tl.tenant, agg, base + j + 1, positions[j], t1, name)
                                for j, e in enumerate(ids)],
                               ids[:1] if outbox else [], (agg, base + k_ev) if snap else None)
                res.op(tl.tenant, t0, time.time() - t0, name)
            except psycopg.Error as e:
                t1 = time.time()
                res.op(tl.tenant, t0, t1 - t0, name)
                state = e.sqlstate
                if state == "23505":
                    with res.lock:
                        res.conflicts[tl.tenant] += 1
                else:
                    res.error(LoadError(name, tl.tenant, state, str(e), t1, step))
                    if step == "commit":
                        res.doubt(tl.tenant, ids, t1)
                if conn.closed or conn.broken:
                    conn = _close(conn)
                    continue
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error as e2:
                    res.error(LoadError(name, tl.tenant, e2.sqlstate, "ROLLBACK after error: %s"
                                        % e2, time.time(), "rollback"))
                    conn = _close(conn)
                    continue
            self._think(plan.rng)
        _close(conn)

    def _think(self, rng):
        self.stop_flag.wait(rng.uniform(self.think[0], self.think[1]) / 1000.0)

    # -- asyncpg ---------------------------------------------------------------
    async def _asyncpg_client(self, k, session):
        name = "asyncpg-%d" % k
        plan = _Plan(self.tenants, session, self.seed * 1000 + 500 + k)
        res = self.result
        res.clients.add(name)
        conn = st = None
        seq = 0
        while not self.stop_flag.is_set():
            if conn is None or conn.is_closed():
                try:
                    conn = await asyncpg.connect(host=self.ep.host, port=self.ep.port,
                                                 user="app", password=PASSWORDS["app"],
                                                 database=self.ep.dbname, ssl=False, timeout=10)
                    if session is not None:
                        await conn.execute("SET pgshift.tenant = '%s'" % session.tenant)
                    st = await _asyncpg_statements(conn)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                        asyncio.TimeoutError) as e:
                    res.error(LoadError(name, session and session.tenant,
                                        getattr(e, "sqlstate", None), repr(e), time.time(),
                                        "connect"))
                    await _aclose(conn)
                    conn = None
                    await asyncio.sleep(0.2)
                    continue
            tl, agg, k_ev, outbox, snap, rollback = plan.next()
            seq += 1
            t0 = time.time()
            step = "begin"
            ids = []
            tr = conn.transaction()
            try:
                await tr.start()
                step = "probe"
                base = await st["probe"].fetchval(uuid.UUID(agg), AGG_TYPE)
                ids, params = _event_rows(tl.tenant, agg, base, k_ev, name, seq)
                params = [uuid.UUID(p) if i % 8 in (0, 1, 4) else p
                          for i, p in enumerate(params)]
                step = "append"
                rows = await st[k_ev].fetch(*params)
                positions = [r[0] for r in rows]
                if outbox:
                    step = "outbox"
                    await st["outbox"].fetch(uuid.UUID(ids[0]), uuid.UUID(agg),
                                       AGG_TYPE, "Ev", uuid.UUID(tl.tenant),
                                       json.dumps({"outbox": ids[0]}))
                if snap:
                    step = "snapshot"
                    await st["snapshot"].fetch(uuid.UUID(agg), AGG_TYPE,
                                       uuid.UUID(tl.tenant), base + k_ev,
                                       json.dumps({"v": base + k_ev}))
                if rollback:
                    step = "rollback"
                    await tr.rollback()
                    with res.lock:
                        res.rollbacks[tl.tenant] += 1
                else:
                    step = "commit"
                    await tr.commit()
                    t1 = time.time()
                    res.commit(tl.tenant,
                               [Ack(e, tl.tenant, agg, base + j + 1, positions[j], t1, name)
                                for j, e in enumerate(ids)],
                               ids[:1] if outbox else [], (agg, base + k_ev) if snap else None)
                res.op(tl.tenant, t0, time.time() - t0, name)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                    asyncio.TimeoutError) as e:
                t1 = time.time()
                res.op(tl.tenant, t0, t1 - t0, name)
                state = getattr(e, "sqlstate", None)
                if state == "23505":
                    with res.lock:
                        res.conflicts[tl.tenant] += 1
                else:
                    res.error(LoadError(name, tl.tenant, state, repr(e), t1, step))
                    if step == "commit":
                        res.doubt(tl.tenant, ids, t1)
                if conn.is_closed():
                    conn = None
                    continue
                try:
                    if conn.is_in_transaction():
                        await tr.rollback()
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e2:
                    res.error(LoadError(name, tl.tenant, getattr(e2, "sqlstate", None),
                                        "ROLLBACK after error: %r" % e2, time.time(),
                                        "rollback"))
                    await _aclose(conn)
                    conn = None
                    continue
            await asyncio.sleep(plan.rng.uniform(self.think[0], self.think[1]) / 1000.0)
        await _aclose(conn)

    def _asyncpg_main(self, sessions):
        async def main():
            await asyncio.gather(*[self._asyncpg_client(k, s) for k, s in enumerate(sessions)])
        asyncio.run(main())

    # -- node ------------------------------------------------------------------
    def _start_node(self, sessions):
        exe = shutil.which("node") or shutil.which("nodejs")
        if exe is None:
            raise RuntimeError("node is not installed (scripts/install-deps.sh)")
        names = [t.tenant for t in self.tenants]
        cfg = {"tenants": [t.as_json() for t in self.tenants],
               "sessions": [None if s is None else names.index(s.tenant) for s in sessions],
               "thinkMs": list(self.think), "seed": self.seed}
        self._node_out = open(os.path.join(_tmpdir(self.ep), "%s-node.out" % self.name), "w+")
        self._node_err = open(os.path.join(_tmpdir(self.ep), "%s-node.err" % self.name), "w+")
        self._node = subprocess.Popen([exe, os.path.join(NODE_DIR, "appload.js"),
                                       json.dumps(cfg)], cwd=NODE_DIR, env=self.ep.env(),
                                      stdin=subprocess.PIPE, stdout=self._node_out,
                                      stderr=self._node_err, text=True)

    def _stop_node(self):
        p = self._node
        try:
            p.stdin.write("stop\n")
            p.stdin.flush()
            p.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise RuntimeError("node/appload.js did not stop within 60 s")
        self._node_out.seek(0)
        self._node_err.seek(0)
        out, err = self._node_out.read(), self._node_err.read()
        if p.returncode != 0:
            raise RuntimeError("node/appload.js exited with %s:\n%s\n%s"
                               % (p.returncode, out[-2000:], err[-4000:]))
        lines = out.strip().splitlines()
        if not lines:
            raise RuntimeError("node/appload.js printed no result:\n%s" % err[-4000:])
        self.result.merge_node(json.loads(lines[-1]), [t.tenant for t in self.tenants])

    # -- control ---------------------------------------------------------------
    def start(self):
        for k, s in enumerate(self._sessions(self.n_psycopg)):
            th = threading.Thread(target=self._psycopg_client, args=(k, s), daemon=True,
                                  name="psycopg-%d" % k)
            th.start()
            self._threads.append(th)
        if self.n_asyncpg:
            self._aloop_thread = threading.Thread(
                target=self._asyncpg_main, args=(self._sessions(self.n_asyncpg),), daemon=True,
                name="asyncpg")
            self._aloop_thread.start()
        if self.n_node:
            self._start_node(self._sessions(self.n_node))
        return self

    def stop(self, timeout=60):
        """Stop every client; returns the LoadResult (node's results merged)."""
        self.stop_flag.set()
        deadline = time.monotonic() + timeout
        stuck = []
        for th in self._threads + ([self._aloop_thread] if self._aloop_thread else []):
            th.join(max(0.1, deadline - time.monotonic()))
            if th.is_alive():
                stuck.append(th.name)
        if self._node is not None:
            try:
                self._stop_node()
            finally:
                self._node = None
        if stuck:
            raise RuntimeError("load clients did not stop within %ds: %s" % (timeout, stuck))
        return self.result

    def kill(self):
        """Best-effort stop for a test's cleanup path (never raises)."""
        self.stop_flag.set()
        if self._node is not None:
            try:
                self._node.kill()
                self._node.wait(10)
            except Exception:  # noqa: BLE001 - cleanup only
                pass
            self._node = None

    def acked_count(self, tenant):
        """Events of tenant acknowledged so far to the Python clients."""
        with self.result.lock:
            return sum(1 for a in self.result.acked.values() if a.tenant == tenant)

    def wait_acked(self, tenant, n, timeout=30, since=None):
        """Wait until the Python clients have n more acknowledged events of
        tenant (after `since`, wall clock, when given)."""
        t_end = time.monotonic() + timeout
        start = None if since is not None else self.acked_count(tenant)
        while True:
            with self.result.lock:
                if since is not None:
                    got = sum(1 for a in self.result.acked.values()
                              if a.tenant == tenant and a.t_ack >= since)
                else:
                    got = sum(1 for a in self.result.acked.values()
                              if a.tenant == tenant) - start
            if got >= n:
                return got
            if time.monotonic() > t_end:
                raise AssertionError("load: only %d of %d acknowledged events of %s within %ds "
                                     "(%s; last errors %r)" % (got, n, tenant, timeout,
                                                               self.result.summary(),
                                                               self.result.errors[-3:]))
            time.sleep(0.05)


async def _asyncpg_statements(conn):
    """Every statement of the append, prepared on a new connection before
    its first transaction (the common asyncpg pattern; see AppLoad)."""
    st = {"probe": await conn.prepare(dollar(PROBE)),
          "outbox": await conn.prepare(dollar(OUTBOX)),
          "snapshot": await conn.prepare(dollar(SNAPSHOT))}
    for k in (1, 2, 3):
        st[k] = await conn.prepare(dollar(append_sql(k)))
    return st


def _close(conn):
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass
    return None


async def _aclose(conn):
    if conn is not None:
        try:
            await asyncio.wait_for(conn.close(), 2)
        except Exception:  # noqa: BLE001 - closing a broken connection
            conn.terminate()


def _tmpdir(ep):
    """Where the node subprocess's output goes (next to the pgshift logs)."""
    if ep.pgshift is not None:
        return ep.pgshift.dir
    return os.environ.get("PGSHIFT_IT_TMP") or "/tmp"
