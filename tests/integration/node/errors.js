'use strict';
// Errors carry their SQLSTATE and leave the connection usable; connection
// errors (wrong password, unknown database) are reported as such.
const { client, run } = require('./lib');

async function code(p) {
  try {
    await p;
    return null;
  } catch (e) {
    return e.code || String(e.message);
  }
}

run(async () => {
  const c = client();
  await c.connect();
  const out = {};
  try {
    out.syntax = await code(c.query('SELEC 1'));
    out.undefinedTable = await code(c.query('SELECT * FROM no_such_table_node'));
    out.divByZero = await code(c.query('SELECT 1 / $1::int', [0]));
    out.badParam = await code(c.query('SELECT $1::int', ['not-an-int']));
    out.raised = await code(c.query("DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = 'P0001'; END $$"));
    out.after = (await c.query('SELECT 42 AS v')).rows[0].v;
  } finally {
    await c.end();
  }
  const wrong = client({ password: 'wrong-password' });
  out.wrongPassword = await code(wrong.connect());
  await wrong.end().catch(() => {});
  const nodb = client({ database: 'no_such_database_node' });
  out.unknownDatabase = await code(nodb.connect());
  await nodb.end().catch(() => {});
  return out;
});
