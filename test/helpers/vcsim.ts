import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cachedToolPath, VCSIM } from '../../src/lab/binaries';

export interface VcsimOptions {
  /** Default true: https with Go httptest's self-signed certificate. */
  tls?: boolean;
  username?: string;
  password?: string;
  extraArgs?: string[];
}

export interface Vcsim {
  /** SDK URL without credentials, e.g. https://127.0.0.1:41439/sdk */
  url: string;
  /** TMPDIR given to vcsim; the datastore folders live below it. */
  tmpDir: string;
  /** Local directory behind a datastore, e.g. 'LocalDS_0'. */
  datastoreDir(name: string): string;
  stop(): Promise<void>;
}

function vcsimBinary(): string {
  return process.env[VCSIM.envVar] ?? cachedToolPath(VCSIM);
}

/** Starts a private vcsim on a free port and waits for the URL it prints. */
export async function startVcsim(opts: VcsimOptions = {}): Promise<Vcsim> {
  const tmpDir = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-vcsim-'));
  const args = ['-l', '127.0.0.1:0', `-tls=${opts.tls ?? true}`];
  if (opts.username) args.push('-username', opts.username);
  if (opts.password) args.push('-password', opts.password);
  args.push(...(opts.extraArgs ?? []));
  const child: ChildProcess = spawn(vcsimBinary(), args, {
    env: { ...process.env, TMPDIR: tmpDir },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));

  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      // SIGTERM lets vcsim remove its datastore folders.
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    rmSync(tmpDir, { recursive: true, force: true });
  };

  try {
    const govcUrl = await new Promise<string>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`vcsim did not start within 15 s: ${stderr}`)), 15_000);
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /GOVC_URL=(\S+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`vcsim exited with ${code}: ${stderr}`));
      });
      child.once('error', reject);
    });
    const url = new URL(govcUrl);
    url.username = '';
    url.password = '';
    return {
      url: url.href,
      tmpDir,
      datastoreDir(name: string): string {
        const entry = readdirSync(tmpDir).find((e) => new RegExp(`^govcsim-.+-${name}-`).test(e));
        if (!entry) throw new Error(`vcsim has no folder for datastore ${name} in ${tmpDir}`);
        return path.join(tmpDir, entry);
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
