'use strict';
// Shared helpers for the node-postgres scenarios. Connection settings come
// from the PG* environment variables that the pytest driver sets.
const { Client } = require('pg');

function client(extra) {
  return new Client(Object.assign({ connectionTimeoutMillis: 10000 }, extra || {}));
}

// Run main(), print its result as one JSON line, exit non-zero on error.
function run(main) {
  main().then(
    (result) => {
      process.stdout.write(JSON.stringify(result) + '\n');
      process.exit(0);
    },
    (err) => {
      process.stderr.write('node scenario failed: ' + (err && err.stack ? err.stack : err) + '\n');
      process.exit(1);
    }
  );
}

module.exports = { client, run };
