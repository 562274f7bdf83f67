'use strict';
// The event-store workload for tenants on different stores, through pgshift
// (test_routing_drivers.py). The plan comes as JSON in ROUTING_PLAN:
//   { session: "none" | "set" | "options",
//     sql: { probe, append, outbox, stream, feed, snapshot_upsert, snapshot_read, checkpoint },
//     tenants: [ { tenant, agg, eids: [...], dup, proj } ] }
// Named prepared statements (probe, append, stream) are reused across the
// tenants on one connection, so they run on several stores. Prints one JSON
// line: per tenant what the reads returned and the conflict's SQLSTATE.
const { client, run } = require('./lib');

const plan = JSON.parse(process.env.ROUTING_PLAN);
const Q = plan.sql;

async function tenantWorkload(c, t) {
  const out = { probes: [], positions: [] };
  for (let i = 0; i < t.eids.length; i++) {
    const v = i + 1;
    await c.query('BEGIN');
    const p = await c.query({ name: 'probe', text: Q.probe, values: [t.agg, 'Order'] });
    out.probes.push(Number(p.rows[0].coalesce));
    const a = await c.query({
      name: 'append', text: Q.append,
      values: [t.eids[i], t.agg, 'Order', 'Ev' + v, t.tenant, 'node', v, JSON.stringify({ v })],
    });
    out.positions.push(Number(a.rows[0].global_position));
    await c.query(Q.outbox, [t.eids[i], t.agg, 'Order', 'Ev' + v, t.tenant, JSON.stringify({ v })]);
    await c.query('COMMIT');
  }
  // Version conflict.
  await c.query('BEGIN');
  const p = await c.query({ name: 'probe', text: Q.probe, values: [t.agg, 'Order'] });
  out.conflictProbe = Number(p.rows[0].coalesce);
  await c.query(Q.outbox, [t.dup, t.agg, 'Order', 'Dup', t.tenant, '{}']);
  try {
    await c.query({
      name: 'append', text: Q.append,
      values: [t.dup, t.agg, 'Order', 'Dup', t.tenant, 'node', t.eids.length, '{}'],
    });
    out.conflict = 'none';
  } catch (e) {
    out.conflict = e.code;
  }
  await c.query('ROLLBACK');
  const s = await c.query({ name: 'stream', text: Q.stream, values: [t.agg, 'Order'] });
  out.stream = s.rows.map((r) => [r.version, r.event_id, r.tenant_id]);
  await c.query(Q.snapshot_upsert, [t.agg, 'Order', t.tenant, 1, '{}']);
  await c.query(Q.snapshot_upsert, [t.agg, 'Order', t.tenant, t.eids.length, '{"last":true}']);
  const sn = await c.query(Q.snapshot_read, [t.agg, 'Order']);
  out.snapshot = sn.rows.map((r) => [r.version, r.tenant_id]);
  await c.query('BEGIN');
  const f = await c.query(Q.feed, [t.tenant, 0]);
  out.feed = f.rows.map((r) => [Number(r.global_position), r.event_id, r.tenant_id]);
  const last = f.rows[f.rows.length - 1];
  await c.query(Q.checkpoint, [t.proj, last.event_id, 'Ev', last.global_position]);
  await c.query('COMMIT');
  return out;
}

run(async () => {
  const results = {};
  let shared = null;
  try {
    for (const t of plan.tenants) {
      let c = shared;
      if (plan.session === 'options') {
        c = client({ options: '-c pgshift.tenant=' + t.tenant });
        await c.connect();
      } else if (c === null) {
        c = shared = client();
        await c.connect();
      }
      if (plan.session === 'set') {
        await c.query("SET pgshift.tenant = '" + t.tenant + "'");
      }
      results[t.tenant] = await tenantWorkload(c, t);
      if (c !== shared) {
        await c.end();
      }
    }
  } finally {
    if (shared) {
      await shared.end();
    }
  }
  return results;
});
