// run.js: runs one case of SparkPost's official Node client against smtpgw.
//
//   SMTPGW_ORIGIN=http://127.0.0.1:8025 SMTPGW_KEY=... node run.js CASE [ARGS_JSON]
//
// cases/CASE.js exports an async function (sp, args) whose result is
// printed as one JSON line {"ok": true, "result": ...}. A rejected
// request prints {"ok": false, "status": ..., "errors": [...], "message": ...}
// and exits 1. tests/sparkpost_test.go runs the cases and asserts on the
// output; add a case by adding a file to cases/.
'use strict';

const SparkPost = require('sparkpost');

async function main() {
  const name = process.argv[2];
  if (!name || !/^[a-z0-9_-]+$/.test(name)) {
    throw new Error('usage: node run.js CASE [ARGS_JSON]');
  }
  const origin = process.env.SMTPGW_ORIGIN;
  const key = process.env.SMTPGW_KEY;
  if (!origin || !key) {
    throw new Error('SMTPGW_ORIGIN and SMTPGW_KEY must be set');
  }
  const args = process.argv[3] ? JSON.parse(process.argv[3]) : {};
  const sp = new SparkPost(key, { origin: origin });
  const result = await require('./cases/' + name + '.js')(sp, args, { SparkPost, origin, key });
  process.stdout.write(JSON.stringify({ ok: true, result: result === undefined ? null : result }) + '\n');
}

main().catch(function(err) {
  process.stdout.write(JSON.stringify({
    ok: false,
    status: err.statusCode || 0,
    errors: err.errors || null,
    message: String(err.message || err)
  }) + '\n');
  process.exit(1);
});
