'use strict';
// Parameterized queries (extended protocol, unnamed statements).
const { client, run } = require('./lib');

run(async () => {
  const c = client();
  await c.connect();
  try {
    const out = {};
    let r = await c.query('SELECT $1::int + $2::int AS sum, $3::text AS t, $4::jsonb AS j, $5::text IS NULL AS isnull',
      [40, 2, 'héllo', JSON.stringify({ a: [1, 2] }), null]);
    out.row = r.rows[0];
    out.fields = r.fields.map((f) => f.name);
    r = await c.query('SELECT g FROM generate_series(1, $1::int) g', [1000]);
    out.count = r.rowCount;
    out.last = r.rows[r.rows.length - 1].g;
    r = await c.query({ text: 'SELECT $1::int AS a, $2::text AS b', values: [7, 'x'], rowMode: 'array' });
    out.array = r.rows[0];
    // Simple-protocol query (no parameters) with several statements.
    r = await c.query('SELECT 1 AS one; SELECT 2 AS two');
    out.multi = r.map((x) => x.rows[0]);
    return out;
  } finally {
    await c.end();
  }
});
