/**
 * A throwaway Azurite blob service for page-blob tests and benchmarks: its own free port and data
 * folder, stopped by pid. The long-lived lab instance lives in src/lab; this one never touches it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BlobServiceClient, StorageSharedKeyCredential } from '@azure/storage-blob';

export const AZURITE_DEV_ACCOUNT = 'devstoreaccount1';
// Azurite's documented well-known development key; it protects nothing.
export const AZURITE_DEV_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

export interface EphemeralAzurite {
  pid: number;
  port: number;
  /** Blob endpoint including the account, e.g. http://127.0.0.1:PORT/devstoreaccount1 */
  endpoint: string;
  location: string;
  credential: StorageSharedKeyCredential;
  serviceClient: BlobServiceClient;
  stop(): Promise<void>;
}

export interface StartAzuriteOptions {
  /** Data folder; a fresh temporary one (removed on stop) by default. */
  location?: string;
  timeoutMs?: number;
}

/**
 * Starts azurite-blob on a free port. `--skipApiVersionCheck` is required because
 * @azure/storage-blob 12.34 sends a newer x-ms-version (2026-10-06) than Azurite 3.37 knows (2026-06-06).
 */
export async function startEphemeralAzurite(opts: StartAzuriteOptions = {}): Promise<EphemeralAzurite> {
  const ownLocation = opts.location === undefined;
  const location = opts.location ?? mkdtempSync(path.join(os.tmpdir(), 'vmrs-azurite-'));
  const script = require.resolve('azurite/dist/src/blob/main.js');
  const args = [
    script,
    '--blobHost',
    '127.0.0.1',
    '--blobPort',
    '0',
    '--location',
    location,
    '--silent',
    '--loose',
    '--skipApiVersionCheck',
    '--disableTelemetry',
  ];
  const child: ChildProcess = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGTERM');
      reject(new Error(`azurite did not report a port within ${opts.timeoutMs ?? 20000} ms: ${output}`));
    }, opts.timeoutMs ?? 20000);
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      const m = /listens on http:\/\/127\.0\.0\.1:(\d+)/.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`azurite exited with code ${code}: ${output}`));
    });
  });
  child.stdout?.resume();
  child.stderr?.resume();
  // A crashed test or benchmark must not leave an orphaned Azurite behind.
  const killOnExit = (): void => {
    child.kill('SIGTERM');
  };
  process.once('exit', killOnExit);
  const endpoint = `http://127.0.0.1:${port}/${AZURITE_DEV_ACCOUNT}`;
  const credential = new StorageSharedKeyCredential(AZURITE_DEV_ACCOUNT, AZURITE_DEV_KEY);
  const serviceClient = new BlobServiceClient(endpoint, credential);
  const pid = child.pid ?? -1;
  let stopped: Promise<void> | undefined;
  return {
    pid,
    port,
    endpoint,
    location,
    credential,
    serviceClient,
    stop() {
      process.removeListener('exit', killOnExit);
      stopped ??= new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }).then(() => {
        if (ownLocation) rmSync(location, { recursive: true, force: true });
      });
      return stopped;
    },
  };
}
