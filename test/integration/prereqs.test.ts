import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { EXTERNAL_TOOLS, missingTools } from '../../src/prereqs';

const ROOT = path.resolve(__dirname, '..', '..');

function which(command: string): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v "$1"', 'which', command], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** A PATH holding every external tool this machine has, except the ones named. */
function pathWithout(dir: string, ...left: string[]): string {
  for (const t of EXTERNAL_TOOLS) {
    if (path.isAbsolute(t.command)) continue;
    const found = which(t.command);
    if (found && !left.includes(t.command)) symlinkSync(found, path.join(dir, t.command));
  }
  return dir;
}

describe('external tool check', () => {
  const dirs: string[] = [];
  after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
  const tmp = () => {
    const d = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-prereqs-'));
    dirs.push(d);
    return d;
  };

  it('finds every tool of this machine (the suite itself needs them)', () => {
    assert.deepEqual(
      missingTools('test').map((t) => t.command),
      [],
    );
  });

  it('names the missing command, its package and the install command, and stops', () => {
    const bin = pathWithout(tmp(), 'hivexsh', 'hivexml', 'qemu-img');
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'vmrestore.cjs'), 'prereqs', '--for', 'start', '--no-install'], {
      encoding: 'utf8',
      env: { ...process.env, PATH: bin },
    });
    assert.equal(r.status, 1, r.stderr);
    const line = r.stderr.trim();
    assert.equal(line.split('\n').length, 1, line);
    assert.match(
      line,
      /missing tools: hivexsh \(libhivex-bin\), hivexml \(libhivex-bin\); install them with: (sudo )?apt-get install -y libhivex-bin$/,
    );
    // qemu-img is a test tool: the demo does not ask for it.
    assert.doesNotMatch(line, /qemu/);
  });

  it('asks for the test tools too when checking for the test suite', () => {
    const missing = missingTools('test', pathWithout(tmp(), 'qemu-img', 'chromium', 'hivexsh', 'mkfs.fat'));
    assert.deepEqual(
      missing.map((t) => `${t.command}:${t.debianPackage}`),
      ['hivexsh:libhivex-bin', 'qemu-img:qemu-utils', 'chromium:chromium'],
      // mkfs.fat lives in /usr/sbin, which the tools are also looked up in, as they are run.
    );
  });
});
