import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ensureTool, TEMPORAL_CLI, VCSIM } from './binaries';
import { envPort, httpStatus, pickPort, pidAlive, reuseOrStop, stopProcess, tlsFingerprint, waitFor } from './net';
import { spawnDetached } from './spawn';
import { ensureSearchAttributes, temporalReady, type LabTemporal, type TemporalKind } from './temporal-admin';
export type { LabTemporal } from './temporal-admin';
import { ensureClusterTools, labTemporalKind, restartClusterServer, startClusterTemporal, stopCluster, type LabCluster } from './cluster';
import { SEARCH_ATTRIBUTES } from '../domain/search-attributes';
import { labConfigPath, labStateDir } from '../config';
import { attachLabDatastores, prepareLabStorage, teardownLabStorage, type LabStorage } from './storage';

/** Where the lab keeps state, logs and data; git-ignored. */
export function labDir(): string {
  return labStateDir();
}

export const AZURITE_ACCOUNT = 'devstoreaccount1';
// Azurite's documented well-known development key; it protects nothing outside the lab.
export const AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

export interface LabVSphere {
  pid: number;
  port: number;
  url: string;
  username: string;
  password: string;
  passwordFile: string;
  thumbprint: string;
  datacenter: string;
  datastore: string;
  /** Local folder behind each datastore, as the host sees it. */
  datastorePaths: Record<string, string>;
  proxyVmName: string;
  /** Each transport's own path to the datastores (storage.ts). */
  storage?: LabStorage;
}
export interface LabBlob {
  pid: number;
  port: number;
  endpoint: string;
  accountName: string;
  accountKey: string;
  connectionString: string;
}
export interface LabState {
  temporal?: LabTemporal;
  vsphere?: LabVSphere;
  blob?: LabBlob;
  azure?: Record<string, unknown> & { pid?: number };
  /** With `temporal.kind` 'cluster': its PostgreSQL, server and UI processes. */
  cluster?: LabCluster;
}

function statePath(): string {
  return path.join(labDir(), 'lab.json');
}

export function readLabState(): LabState {
  try {
    return JSON.parse(readFileSync(statePath(), 'utf8')) as LabState;
  } catch {
    return {};
  }
}

function writeLabState(state: LabState): void {
  mkdirSync(labDir(), { recursive: true });
  const tmp = `${statePath()}.tmp`;
  writeFileSync(tmp, JSON.stringify(state, null, 2));
  renameSync(tmp, statePath());
}

/** Starts the dev server on these ports, on the lab's database (kept across restarts). */
async function spawnTemporal(port: number, uiPort: number, log: (s: string) => void): Promise<LabTemporal> {
  const bin = ensureTool(TEMPORAL_CLI, log);
  const dataDir = path.join(labDir(), 'temporal');
  mkdirSync(dataDir, { recursive: true });
  const namespace = 'default';
  const args = [
    'server',
    'start-dev',
    '--ip',
    '127.0.0.1',
    '--port',
    String(port),
    '--ui-port',
    String(uiPort),
    '--db-filename',
    path.join(dataDir, 'temporal.db'),
    '--namespace',
    namespace,
    '--log-level',
    'warn',
  ];
  for (const [key, type] of Object.entries(SEARCH_ATTRIBUTES)) args.push('--search-attribute', `${key}=${type}`);
  const { pid, log: logFile } = spawnDetached(bin, args, 'temporal.log');
  const address = `127.0.0.1:${port}`;
  await waitFor('temporal dev server', () => temporalReady(address, namespace), {
    timeoutMs: 60_000,
    logFile,
    isAlive: () => pidAlive(pid),
  });
  const ui = `http://127.0.0.1:${uiPort}`;
  await waitFor('temporal web UI', async () => (await httpStatus(ui)) < 500, { timeoutMs: 30_000, logFile });
  await ensureSearchAttributes(address, namespace);
  log(`temporal: started pid ${pid} at ${address}, UI ${ui}`);
  return { pid, port, uiPort, address, namespace, ui };
}

async function startTemporal(prev: LabTemporal | undefined, taken: Set<number>, log: (s: string) => void): Promise<LabTemporal> {
  if (prev && (await reuseOrStop('temporal dev server', prev.pid, () => temporalReady(prev.address, prev.namespace), log))) {
    // A server started by older code may lack attributes added since.
    await ensureSearchAttributes(prev.address, prev.namespace);
    log(`temporal: reusing pid ${prev.pid} at ${prev.address}`);
    return prev;
  }
  const port = await pickPort(envPort('TEMPORAL', 7233), taken);
  const uiPort = await pickPort(envPort('TEMPORAL_UI', 8233), taken);
  return spawnTemporal(port, uiPort, log);
}

/**
 * Stops the lab's Temporal dev server (SIGKILL by default, as a crash would) and starts it again on the
 * same ports and database, so workflows, histories and timers survive and clients reconnect. Returns
 * the seconds the server was unavailable.
 */
export async function labRestartTemporal(
  opts: { signal?: 'SIGKILL' | 'SIGTERM' } = {},
  log: (s: string) => void = () => {},
): Promise<{ temporal: LabTemporal; downSeconds: number }> {
  const state = readLabState();
  const prev = state.temporal;
  if (!prev) throw new Error('the lab has no Temporal dev server to restart (run `vmrestore lab up`)');
  const t0 = Date.now();
  if (prev.kind === 'cluster' && state.cluster) {
    const restarted = await restartClusterServer(state.cluster, opts.signal ?? 'SIGKILL', log);
    writeLabState({ ...readLabState(), ...restarted });
    return { temporal: restarted.temporal, downSeconds: (Date.now() - t0) / 1000 };
  }
  if (pidAlive(prev.pid)) await stopProcess(prev.pid, opts.signal ?? 'SIGKILL');
  const temporal = await spawnTemporal(prev.port, prev.uiPort, log);
  writeLabState({ ...readLabState(), temporal });
  return { temporal, downSeconds: (Date.now() - t0) / 1000 };
}

async function startVcsim(prev: LabVSphere | undefined, taken: Set<number>, log: (s: string) => void): Promise<LabVSphere> {
  const about = prev && `${prev.url.replace(/\/sdk$/, '')}/about`;
  if (prev && about && (await reuseOrStop('vcsim', prev.pid, async () => (await httpStatus(about)) === 200, log))) {
    log(`vcsim: reusing pid ${prev.pid} at ${prev.url}`);
    return prev;
  }
  const bin = ensureTool(VCSIM, log);
  const port = await pickPort(envPort('VCSIM', 8989), taken);
  const home = path.join(labDir(), 'vcsim');
  // The previous vcsim's mounts and loop devices go first: they point into its datastore folders.
  const storage = prepareLabStorage(labDir(), log);
  rmSync(home, { recursive: true, force: true });
  mkdirSync(home, { recursive: true });
  const secrets = path.join(labDir(), 'secrets');
  mkdirSync(secrets, { recursive: true, mode: 0o700 });
  const username = 'administrator@vsphere.local';
  const password = 'lab-' + Math.random().toString(36).slice(2, 12);
  const passwordFile = path.join(secrets, 'vcsim-password');
  writeFileSync(passwordFile, password, { mode: 0o600 });
  const { pid, log: logFile } = spawnDetached(
    bin,
    [
      ...['-l', `127.0.0.1:${port}`, '-ds', '2', '-username', 'administrator', '-password', passwordFile],
      ...['-proxy-devices', storage.proxyDevices, `-loop-devices=${storage.loopDevices}`],
      ...(storage.san ? ['-san-datastores', storage.san.datastore] : []),
    ],
    'vcsim.log',
    // vcsim puts each datastore's folder under TMPDIR; keep them inside the lab.
    { ...process.env, TMPDIR: home },
  );
  const base = `https://127.0.0.1:${port}`;
  await waitFor('vcsim', async () => (await httpStatus(`${base}/about`)) === 200, {
    timeoutMs: 30_000,
    logFile,
    isAlive: () => pidAlive(pid),
  });
  const datastorePaths: Record<string, string> = {};
  for (const entry of readdirSync(home)) {
    const m = /^govcsim-(.+?)-(LocalDS_\d+)-/.exec(entry);
    if (m) datastorePaths[m[2]] = path.join(home, entry);
  }
  const thumbprint = await tlsFingerprint('127.0.0.1', port);
  log(`vcsim: started pid ${pid} at ${base}/sdk`);
  const paths = attachLabDatastores(labDir(), storage, datastorePaths);
  return {
    pid,
    port,
    url: `${base}/sdk`,
    username,
    password,
    passwordFile,
    thumbprint,
    datacenter: 'DC0',
    datastore: 'LocalDS_0',
    datastorePaths,
    proxyVmName: 'vmrestore-proxy',
    storage: paths,
  };
}

function azuriteScript(): string {
  return require.resolve('azurite/dist/src/blob/main.js');
}

async function startAzurite(prev: LabBlob | undefined, taken: Set<number>, log: (s: string) => void): Promise<LabBlob> {
  if (prev && (await reuseOrStop('azurite', prev.pid, async () => (await httpStatus(`${prev.endpoint}?comp=list`)) > 0, log))) {
    log(`azurite: reusing pid ${prev.pid} at ${prev.endpoint}`);
    return prev;
  }
  const port = await pickPort(envPort('BLOB', 10000), taken);
  const data = path.join(labDir(), 'azurite');
  mkdirSync(data, { recursive: true });
  const { pid, log: logFile } = spawnDetached(
    process.execPath,
    [
      azuriteScript(),
      '--blobHost',
      '127.0.0.1',
      '--blobPort',
      String(port),
      '--location',
      data,
      '--silent',
      '--loose',
      '--skipApiVersionCheck',
      '--disableTelemetry',
    ],
    'azurite.log',
  );
  const endpoint = `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
  await waitFor('azurite', async () => (await httpStatus(`${endpoint}?comp=list`)) > 0, {
    timeoutMs: 30_000,
    logFile,
    isAlive: () => pidAlive(pid),
  });
  log(`azurite: started pid ${pid} at ${endpoint}`);
  return {
    pid,
    port,
    endpoint,
    accountName: AZURITE_ACCOUNT,
    accountKey: AZURITE_KEY,
    connectionString: `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=${endpoint};`,
  };
}

/** The dev server or the cluster, as VMRESTORE_LAB_TEMPORAL asks; the other kind is stopped first. */
async function startTemporalOfKind(
  prev: LabState,
  taken: Set<number>,
  log: (s: string) => void,
): Promise<{ temporal: LabTemporal; cluster?: LabCluster }> {
  const recorded = recordedTemporalKind(prev);
  if (labTemporalKind(recorded) === 'cluster') {
    if (recorded === 'dev' && pidAlive(prev.temporal!.pid)) await stopProcess(prev.temporal!.pid, 'SIGTERM');
    const preferred = { frontend: envPort('TEMPORAL', 7233), ui: envPort('TEMPORAL_UI', 8233), postgres: envPort('POSTGRES', 5432) };
    return startClusterTemporal(prev.cluster, labDir(), preferred, taken, log);
  }
  if (prev.cluster) await stopCluster(prev.cluster, log);
  return { temporal: await startTemporal(recorded === 'dev' ? prev.temporal : undefined, taken, log) };
}

/** The Temporal server kind the lab state records (state written before clusters existed means dev). */
function recordedTemporalKind(prev: LabState): TemporalKind | undefined {
  return prev.temporal ? (prev.temporal.kind ?? 'dev') : undefined;
}

/** A part of the lab that `lab up` starts after Temporal, vcsim and Azurite (see `LAB_COMPONENTS` in index.ts). */
export type LabHook = (state: LabState, log: (s: string) => void, taken: Set<number>) => Promise<LabState>;

/** Starts what is not running yet, then `components` in order, reusing what is; safe to call repeatedly. */
export async function startLab(components: readonly LabHook[], log: (s: string) => void = () => {}): Promise<LabState> {
  mkdirSync(labDir(), { recursive: true });
  const prev = readLabState();
  const taken = new Set<number>();
  for (const p of [prev.temporal?.port, prev.temporal?.uiPort, prev.vsphere?.port, prev.blob?.port]) if (p) taken.add(p);
  // Every Go build first (minutes on a fresh machine, and synchronous): a build between one peer's start and
  // its readiness check would block the event loop past that check's deadline.
  if (labTemporalKind(recordedTemporalKind(prev)) === 'cluster') ensureClusterTools(log);
  else ensureTool(TEMPORAL_CLI, log);
  ensureTool(VCSIM, log);
  const [t, v, b] = await Promise.allSettled([
    startTemporalOfKind(prev, taken, log),
    startVcsim(prev.vsphere, taken, log),
    startAzurite(prev.blob, taken, log),
  ]);
  const ok = <T>(r: PromiseSettledResult<T>): T | undefined => (r.status === 'fulfilled' ? r.value : undefined);
  const started = ok(t);
  let state: LabState = {
    ...prev,
    ...(started && { temporal: started.temporal, cluster: started.cluster }),
    vsphere: ok(v) ?? prev.vsphere,
    blob: ok(b) ?? prev.blob,
  };
  // Written also when a peer did not start, so that `lab down` (or the next `lab up`) finds the others.
  writeLabState(state);
  for (const r of [t, v, b]) if (r.status === 'rejected') throw r.reason;
  for (const hook of components) {
    state = await hook(state, log, taken);
    writeLabState(state);
  }
  return state;
}

export async function labDown(opts: { purge?: boolean } = {}, log: (s: string) => void = () => {}): Promise<void> {
  const state = readLabState();
  const pids = [state.temporal?.pid, state.vsphere?.pid, state.blob?.pid, state.azure?.pid].filter(
    (p): p is number => typeof p === 'number' && pidAlive(p),
  );
  for (const pid of pids) {
    try {
      process.kill(-pid, 'SIGTERM');
    } catch {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
    }
  }
  const deadline = Date.now() + 15_000;
  while (pids.some(pidAlive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  for (const pid of pids.filter(pidAlive)) process.kill(pid, 'SIGKILL');
  if (state.cluster) await stopCluster(state.cluster, log);
  log(`stopped ${pids.length} lab process(es)`);
  teardownLabStorage(labDir(), log);
  // Without a running lab there is no configuration to fall back to.
  rmSync(labConfigPath(), { force: true });
  if (opts.purge) {
    rmSync(labDir(), { recursive: true, force: true });
    log(`removed ${labDir()}`);
  } else if (existsSync(statePath())) {
    writeLabState({});
  }
}

export interface LabStatus {
  temporal: { kind: TemporalKind; address: string; namespace: string; ui: string; running: boolean } | null;
  vsphere: {
    url: string;
    username: string;
    password: string;
    datacenter: string;
    datastore: string;
    thumbprint: string;
    running: boolean;
  } | null;
  blob: { connectionString: string; running: boolean } | null;
  azure: Record<string, unknown> | null;
}

export function labStatus(): LabStatus {
  const s = readLabState();
  return {
    temporal: s.temporal
      ? {
          kind: s.temporal.kind ?? 'dev',
          address: s.temporal.address,
          namespace: s.temporal.namespace,
          ui: s.temporal.ui,
          running: pidAlive(s.temporal.pid),
        }
      : null,
    vsphere: s.vsphere
      ? {
          url: s.vsphere.url,
          username: s.vsphere.username,
          password: s.vsphere.password,
          datacenter: s.vsphere.datacenter,
          datastore: s.vsphere.datastore,
          thumbprint: s.vsphere.thumbprint,
          running: pidAlive(s.vsphere.pid),
        }
      : null,
    blob: s.blob ? { connectionString: s.blob.connectionString, running: pidAlive(s.blob.pid) } : null,
    azure: s.azure
      ? {
          armEndpoint: s.azure.armEndpoint,
          subscriptionId: s.azure.subscriptionId,
          resourceGroup: s.azure.resourceGroup,
          location: s.azure.location,
          storageAccountId: s.azure.storageAccountId,
          subnetId: s.azure.subnetId,
          caCertPath: s.azure.caCertPath,
          running: pidAlive(s.azure.pid),
        }
      : null,
  };
}
