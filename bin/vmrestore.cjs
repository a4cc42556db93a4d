#!/usr/bin/env node
'use strict';
// Runs the TypeScript CLI directly; tsx compiles on load.
require('tsx/cjs');
require('../src/client.ts')
  .main(process.argv.slice(2))
  .then((code) => {
    if (typeof code === 'number') process.exitCode = code;
  })
  .catch((err) => {
    process.stderr.write(`vmrestore: ${err && err.message ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
