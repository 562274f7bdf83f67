'use strict';
// Named prepared statements: parsed once per connection, executed many times.
const { client, run } = require('./lib');

run(async () => {
  const c = client();
  await c.connect();
  try {
    await c.query('CREATE TEMP TABLE np (id int PRIMARY KEY, v text)');
    for (let i = 0; i < 100; i++) {
      await c.query({ name: 'ins', text: 'INSERT INTO np VALUES ($1, $2)', values: [i, 'v' + i] });
    }
    const sel = [];
    for (let i = 0; i < 5; i++) {
      const r = await c.query({ name: 'sel', text: 'SELECT v FROM np WHERE id = $1', values: [i * 10] });
      sel.push(r.rows[0].v);
    }
    // The server holds both statements for this session.
    const r = await c.query("SELECT name FROM pg_prepared_statements WHERE name IN ('ins', 'sel') ORDER BY name");
    const count = await c.query('SELECT count(*)::int AS n FROM np');
    // Many queries queued at once on one connection (node-pg pipelines its queue).
    const many = await Promise.all(Array.from({ length: 200 }, (_, i) =>
      c.query({ name: 'echo', text: 'SELECT $1::int AS i', values: [i] }).then((x) => x.rows[0].i)));
    return { sel, prepared: r.rows.map((x) => x.name), count: count.rows[0].n, many };
  } finally {
    await c.end();
  }
});
