import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from './env';

export interface DataMoverCredentials {
  certFile: string;
  keyFile: string;
  tokenFile: string;
  token: string;
  /** SHA-256 fingerprint of the certificate, colon-separated. */
  thumbprint: string;
}

/** A self-signed certificate for 127.0.0.1/localhost (Debian's openssl, as the lab makes one) and a token file. */
export function makeDataMoverCredentials(dir: string, name = 'repo01'): DataMoverCredentials {
  mkdirSync(dir, { recursive: true });
  const certFile = path.join(dir, `${name}.crt`);
  const keyFile = path.join(dir, `${name}.key`);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '2',
      '-subj',
      `/CN=${name}`,
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      '-keyout',
      keyFile,
      '-out',
      certFile,
    ],
    { stdio: 'ignore' },
  );
  const token = randomBytes(24).toString('base64url');
  const tokenFile = path.join(dir, `${name}.token`);
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  return { certFile, keyFile, tokenFile, token, thumbprint: new X509Certificate(readFileSync(certFile)).fingerprint256 };
}

export interface DataMoverProcess {
  url: string;
  port: number;
  child: ChildProcess;
  output(): string;
  /** SIGTERM and wait. */
  stop(): Promise<void>;
  /** SIGKILL and wait, as a crashed repository host. */
  kill(): Promise<void>;
}

/**
 * `vmrestore repository serve` in its own process, from a config file holding only the repository section
 * (no vCenter, Temporal or Azure settings, as on a repository host).
 */
export async function startDataMoverProcess(opts: {
  repoDir: string;
  dir: string;
  creds: DataMoverCredentials;
  port?: number;
  /** The address to listen on (default 127.0.0.1): a topology host's own, say. */
  host?: string;
  args?: string[];
  /** Runs the command elsewhere, e.g. on a topology host: `(cmd, args) => topo.command('repo01', cmd, args)`. */
  wrap?: (cmd: string, args: string[]) => { command: string; args: string[] };
}): Promise<DataMoverProcess> {
  const configFile = path.join(opts.dir, 'repository-host.config.json');
  writeFileSync(
    configFile,
    JSON.stringify({
      repository: {
        path: opts.repoDir,
        tokenFile: opts.creds.tokenFile,
        serve: { certFile: opts.creds.certFile, keyFile: opts.creds.keyFile },
      },
    }),
  );
  const env: NodeJS.ProcessEnv = { ...process.env, VMRESTORE_CONFIG: configFile };
  delete env.VMRESTORE_REPOSITORY;
  const argv = [
    path.join(ROOT, 'bin', 'vmrestore.cjs'),
    'repository',
    'serve',
    '--listen',
    `${opts.host ?? '127.0.0.1'}:${opts.port ?? 0}`,
  ];
  const run = (opts.wrap ?? ((command, args) => ({ command, args })))(process.execPath, [...argv, ...(opts.args ?? [])]);
  const child = spawn(run.command, run.args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`repository serve did not start in 60 s:\n${out}`));
    }, 60_000);
    child.stdout!.on('data', () => {
      const m = /listening at (https:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(m[1]);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`repository serve exited with ${code} before listening:\n${out}`));
    });
  });
  const end = async (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await exited;
  };
  return { url, port: Number(new URL(url).port), child, output: () => out, stop: () => end('SIGTERM'), kill: () => end('SIGKILL') };
}
