'use strict';
// A transaction: commit is visible to another client, rollback is not.
const { client, run } = require('./lib');

run(async () => {
  const a = client();
  const b = client();
  await a.connect();
  await b.connect();
  try {
    const table = 'node_tx_' + process.pid;
    await a.query(`CREATE TABLE ${table} (id int PRIMARY KEY)`);
    await a.query('BEGIN');
    await a.query(`INSERT INTO ${table} VALUES (1), (2)`);
    const during = (await b.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n;
    await a.query('COMMIT');
    const afterCommit = (await b.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n;
    await a.query('BEGIN');
    await a.query(`INSERT INTO ${table} VALUES (3)`);
    await a.query('ROLLBACK');
    const afterRollback = (await b.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n;
    // An error inside a transaction aborts it.
    await a.query('BEGIN');
    let aborted = null;
    try {
      await a.query(`INSERT INTO ${table} VALUES (1)`);
    } catch (e) {
      aborted = e.code;
    }
    let inFailed = null;
    try {
      await a.query('SELECT 1');
    } catch (e) {
      inFailed = e.code;
    }
    await a.query('ROLLBACK');
    await a.query(`DROP TABLE ${table}`);
    return { during, afterCommit, afterRollback, aborted, inFailed };
  } finally {
    await a.end();
    await b.end();
  }
});
