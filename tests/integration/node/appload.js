'use strict';
// The application load of tests/integration/appload.py with node-postgres:
// appends (version probe, multi-event INSERT ... RETURNING global_position,
// sometimes an outbox row and a snapshot upsert, ~10% ROLLBACK) through
// pgshift until "stop" arrives on stdin (or stdin closes), then prints one
// JSON line with what every client saw.
//
//   node appload.js '{"tenants": [{"id": ..., "weight": 1, "hot": [agg, ...]}],
//                     "sessions": [0, null, ...], "thinkMs": [5, 25], "seed": 1}'
//
// sessions: one entry per client, the index of the tenant it sets as its
// session tenant (SET pgshift.tenant), or null for a client that moves
// between tenants. Odd clients use named prepared statements. Connection
// settings come from the PG* environment variables. Times are epoch ms.
const crypto = require('crypto');
const { Client } = require('pg');

const AGG_TYPE = 'Order';
const PROBE =
  'SELECT COALESCE(MAX(version),0) AS v FROM events WHERE aggregate_id=$1 AND aggregate_type=$2';
const OUTBOX =
  'INSERT INTO event_outbox (event_id, aggregate_id, aggregate_type, event_type, tenant_id, ' +
  'payload) VALUES ($1, $2, $3, $4, $5, $6)';
const SNAPSHOT =
  'INSERT INTO snapshots (aggregate_id, aggregate_type, tenant_id, version, state) ' +
  'VALUES ($1, $2, $3, $4, $5) ON CONFLICT (aggregate_id, aggregate_type) DO UPDATE ' +
  'SET version = EXCLUDED.version, state = EXCLUDED.state';
const CONNECTION_STATES = new Set(['08000', '08003', '08006', '08001', '08004', '57P01']);

function appendSql(k) {
  const rows = [];
  for (let j = 0; j < k; j++) {
    const b = j * 8;
    rows.push(`($${b + 1}, $${b + 2}, $${b + 3}, $${b + 4}, $${b + 5}, $${b + 6}, $${b + 7}, ` +
      `now(), $${b + 8})`);
  }
  return 'INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, ' +
    'actor_id, version, timestamp, payload) VALUES ' + rows.join(', ') +
    ' RETURNING global_position';
}

// A small seeded generator (mulberry32), so runs differ only by seed.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const cfg = JSON.parse(process.argv[2]);
const tenants = cfg.tenants;
let stopping = false;
const out = {
  acked: [], inDoubt: [], outbox: [], snapshots: [], commits: {}, conflicts: {},
  rollbacks: {}, errors: [], ops: [], clients: [],
};
function bump(map, key) { map[key] = (map[key] || 0) + 1; }
// The SQLSTATE of an error, or null when the connection broke (ECONNRESET & co).
function sqlstate(e) { return e && /^[0-9A-Z]{5}$/.test(e.code || '') ? e.code : null; }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function pickTenant(r, session) {
  if (session !== null) return session;
  const total = tenants.reduce((s, t) => s + t.weight, 0);
  let x = r() * total;
  for (let i = 0; i < tenants.length; i++) {
    x -= tenants[i].weight;
    if (x < 0) return i;
  }
  return tenants.length - 1;
}

async function connect(name, session) {
  const c = new Client({ connectionTimeoutMillis: 10000 });
  c.on('error', () => {}); // a broken connection surfaces on the next query
  await c.connect();
  if (session !== null) await c.query(`SET pgshift.tenant = '${tenants[session].id}'`);
  return c;
}

async function client(k, session) {
  const name = 'node-' + k;
  const named = k % 2 === 1;
  const r = rng(cfg.seed * 1000 + 900 + k);
  out.clients.push(name);
  let c = null;
  let seq = 0;
  const q = (text, values, stmt) =>
    c.query(named && stmt ? { name: stmt, text, values } : { text, values });
  while (!stopping) {
    if (c === null) {
      try {
        c = await connect(name, session);
      } catch (e) {
        const tn = session === null ? null : tenants[session].id;
        out.errors.push([name, tn, sqlstate(e), String(e.message), Date.now(), 'connect']);
        if (c) c.end().catch(() => {});
        c = null;
        await sleep(200);
        continue;
      }
    }
    const ti = pickTenant(r, session);
    const t = tenants[ti];
    const agg = r() < 0.6 ? t.hot[Math.floor(r() * t.hot.length)] : crypto.randomUUID();
    const k_ev = 1 + Math.floor(r() * 3);
    const withOutbox = r() < 0.35;
    const withSnap = r() < 0.3;
    const rollback = r() < 0.1;
    seq += 1;
    const t0 = Date.now();
    let step = 'begin';
    const ids = [];
    try {
      await c.query('BEGIN');
      step = 'probe';
      const base = Number((await q(PROBE, [agg, AGG_TYPE], 'probe')).rows[0].v);
      const params = [];
      for (let j = 0; j < k_ev; j++) {
        const eid = crypto.randomUUID();
        ids.push(eid);
        params.push(eid, agg, AGG_TYPE, 'Ev' + ((base + j) % 7), t.id, name, base + j + 1,
          JSON.stringify({ client: name, seq, j }));
      }
      step = 'append';
      const res = await q(appendSql(k_ev), params, 'append' + k_ev);
      const positions = res.rows.map((row) => Number(row.global_position));
      if (withOutbox) {
        step = 'outbox';
        await q(OUTBOX, [ids[0], agg, AGG_TYPE, 'Ev', t.id, JSON.stringify({ outbox: ids[0] })],
          'outbox');
      }
      if (withSnap) {
        step = 'snapshot';
        await q(SNAPSHOT, [agg, AGG_TYPE, t.id, base + k_ev, JSON.stringify({ v: base + k_ev })],
          'snapshot');
      }
      if (rollback) {
        step = 'rollback';
        await c.query('ROLLBACK');
        bump(out.rollbacks, t.id);
      } else {
        step = 'commit';
        await c.query('COMMIT');
        const t1 = Date.now();
        bump(out.commits, t.id);
        ids.forEach((eid, j) => out.acked.push([t.id, eid, agg, base + j + 1, positions[j], t1,
          name]));
        if (withOutbox) out.outbox.push([ids[0], t.id, t1]);
        if (withSnap) out.snapshots.push([t.id, agg, base + k_ev]);
      }
      out.ops.push([ti, t0, Date.now() - t0, name]);
    } catch (e) {
      const t1 = Date.now();
      out.ops.push([ti, t0, t1 - t0, name]);
      const state = sqlstate(e);
      if (state === '23505') {
        bump(out.conflicts, t.id);
      } else {
        out.errors.push([name, t.id, state, String(e.message), t1, step]);
        if (step === 'commit') out.inDoubt.push([t.id, ids, t1]);
      }
      const broken = state === null || CONNECTION_STATES.has(state);
      let ok = !broken;
      if (ok) {
        try {
          await c.query('ROLLBACK');
        } catch (e2) {
          out.errors.push([name, t.id, sqlstate(e2), 'ROLLBACK after error: ' + e2.message,
            Date.now(), 'rollback']);
          ok = false;
        }
      }
      if (!ok) {
        c.end().catch(() => {});
        c = null;
        continue;
      }
    }
    const [lo, hi] = cfg.thinkMs;
    await sleep(lo + r() * (hi - lo));
  }
  if (c) await c.end().catch(() => {});
}

function stop() { stopping = true; }
process.stdin.on('data', (d) => { if (String(d).includes('stop')) stop(); });
process.stdin.on('end', stop);
process.on('SIGTERM', stop);

Promise.all(cfg.sessions.map((s, k) => client(k, s))).then(
  () => {
    process.stdout.write(JSON.stringify(out) + '\n');
    process.exit(0);
  },
  (err) => {
    process.stderr.write('appload.js failed: ' + (err && err.stack ? err.stack : err) + '\n');
    process.exit(1);
  }
);
