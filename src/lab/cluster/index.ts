import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time';
import { FailureType, RestoreError } from '../../domain/errors';
import { ensureTool } from '../binaries';
import { httpStatus, pickPort, pidAlive, stopProcess, waitFor } from '../net';
import { spawnDetached } from '../spawn';
import { ensureSearchAttributes, temporalReady } from '../temporal-admin';
import { databaseExists, postgresPassword, startPostgres, stopPostgres, type LabPostgres } from './postgres';
import { CONFIG_ENV, DATABASES, writeClusterConfig, type ClusterPorts } from './server-config';
import {
  postgresSchemaDir,
  TEMPORAL_SERVER,
  TEMPORAL_SERVER_VERSION,
  TEMPORAL_SQL_TOOL,
  TEMPORAL_UI_SERVER,
  temporalServerSource,
} from './tools';

export { psql, type LabPostgres } from './postgres';
export { TEMPORAL_SERVER_VERSION } from './tools';

/** Which Temporal the lab runs: the CLI's dev server (SQLite, the default) or the server built from source on PostgreSQL. */
export type TemporalKind = 'dev' | 'cluster';

/** The lab's Temporal cluster: its PostgreSQL, the server process (all services) and the Web UI server. */
export interface LabCluster {
  serverVersion: string;
  postgres: LabPostgres;
  serverPid: number;
  uiPid: number;
  ports: ClusterPorts;
  dir: string;
}

/** Shape of the lab's `temporal` entry (lab.ts), repeated here so this module does not import the lab. */
export interface ClusterTemporal {
  pid: number;
  port: number;
  uiPort: number;
  address: string;
  namespace: string;
  ui: string;
  kind: TemporalKind;
}

const NAMESPACE = 'default';
/** How long the server keeps closed workflows' histories. */
const RETENTION_SECONDS = 3 * 24 * 3600;

/** VMRESTORE_LAB_TEMPORAL (dev | cluster) if set, else the kind already running, else the dev server. */
export function labTemporalKind(running: TemporalKind | undefined, env: NodeJS.ProcessEnv = process.env): TemporalKind {
  const v = env.VMRESTORE_LAB_TEMPORAL;
  if (v === undefined || v === '') return running ?? 'dev';
  if (v !== 'dev' && v !== 'cluster') {
    throw new RestoreError(FailureType.Configuration, `VMRESTORE_LAB_TEMPORAL: expected 'dev' or 'cluster', got '${v}'`);
  }
  return v;
}

function sqlTool(tool: string, pg: LabPostgres, database: string, args: string[], what: string): void {
  const r = spawnSync(
    tool,
    ['--plugin', 'postgres12', '--endpoint', pg.host, '--port', String(pg.port), '--user', pg.user, '--database', database, ...args],
    { encoding: 'utf8', env: { ...process.env, SQL_PASSWORD: postgresPassword(pg) }, timeout: 300_000 },
  );
  if (r.status !== 0) {
    throw new RestoreError(
      FailureType.Configuration,
      `temporal-sql-tool ${what} on ${database} failed (exit ${r.status}): ${(r.stderr || r.stdout).trim().slice(-1500)}`,
    );
  }
}

/**
 * Creates the two databases the first time (create-database, setup-schema -v 0.0) and brings their schema
 * to the pinned server's version (update-schema with the versioned folders of the server's source).
 * Returns the seconds it took.
 */
export function setupClusterSchema(pg: LabPostgres, log: (s: string) => void): number {
  const t0 = Date.now();
  const tool = ensureTool(TEMPORAL_SQL_TOOL, log);
  const source = temporalServerSource();
  for (const [database, schema] of [
    [DATABASES.default, 'temporal'],
    [DATABASES.visibility, 'visibility'],
  ] as const) {
    if (!databaseExists(pg, database)) {
      sqlTool(tool, pg, database, ['create-database', '--defaultdb', 'postgres'], 'create-database');
      sqlTool(tool, pg, database, ['setup-schema', '-v', '0.0'], 'setup-schema');
    }
    sqlTool(tool, pg, database, ['update-schema', '-d', path.join(postgresSchemaDir(source, schema), 'versioned')], 'update-schema');
  }
  const seconds = (Date.now() - t0) / 1000;
  log(
    `temporal cluster: schema of ${DATABASES.default} and ${DATABASES.visibility} at server ${TEMPORAL_SERVER_VERSION} (${seconds.toFixed(1)} s)`,
  );
  return seconds;
}

async function pickClusterPorts(taken: Set<number>, frontend: number, ui: number): Promise<ClusterPorts> {
  const any = () => pickPort(0, taken);
  return {
    frontend: await pickPort(frontend, taken),
    frontendHttp: await any(),
    frontendMembership: await any(),
    history: await any(),
    historyMembership: await any(),
    matching: await any(),
    matchingMembership: await any(),
    worker: await any(),
    workerMembership: await any(),
    ui: await pickPort(ui, taken),
  };
}

async function frontendServing(address: string): Promise<boolean> {
  const conn = await Connection.connect({ address, connectTimeout: 1000 });
  try {
    await conn.workflowService.getSystemInfo({});
    return true;
  } finally {
    await conn.close();
  }
}

/** Registers the default namespace if the cluster does not have it (a fresh database). */
async function ensureNamespace(address: string, log: (s: string) => void): Promise<void> {
  const conn = await Connection.connect({ address, connectTimeout: 2000 });
  try {
    try {
      await conn.workflowService.describeNamespace({ namespace: NAMESPACE });
      return;
    } catch (err) {
      if ((err as { code?: number }).code !== 5 /* NOT_FOUND */) throw err;
    }
    await conn.workflowService.registerNamespace({
      namespace: NAMESPACE,
      workflowExecutionRetentionPeriod: msToTs(RETENTION_SECONDS * 1000),
    });
    log(`temporal cluster: registered namespace ${NAMESPACE}`);
  } finally {
    await conn.close();
  }
}

/** Starts the server (all services in one process) on the cluster's config, and waits for its frontend. */
async function spawnServer(cluster: Omit<LabCluster, 'serverPid' | 'uiPid'>, log: (s: string) => void): Promise<number> {
  const bin = ensureTool(TEMPORAL_SERVER, log);
  const { pid, log: logFile } = spawnDetached(
    bin,
    ['--root', cluster.dir, '--config', 'server', '--env', CONFIG_ENV, '--allow-no-auth', 'start'],
    'temporal-server.log',
  );
  await waitFor('temporal server', () => frontendServing(`127.0.0.1:${cluster.ports.frontend}`), {
    timeoutMs: 120_000,
    logFile,
    isAlive: () => pidAlive(pid),
  });
  return pid;
}

async function spawnUi(cluster: Omit<LabCluster, 'serverPid' | 'uiPid'>, log: (s: string) => void): Promise<number> {
  const bin = ensureTool(TEMPORAL_UI_SERVER, log);
  const { pid, log: logFile } = spawnDetached(
    bin,
    ['--root', cluster.dir, '--config', 'ui', '--env', CONFIG_ENV, 'start'],
    'temporal-ui.log',
  );
  const url = `http://127.0.0.1:${cluster.ports.ui}`;
  await waitFor('temporal web UI', async () => (await httpStatus(url)) < 500, { timeoutMs: 30_000, logFile, isAlive: () => pidAlive(pid) });
  return pid;
}

function temporalOf(cluster: LabCluster): ClusterTemporal {
  return {
    pid: cluster.serverPid,
    port: cluster.ports.frontend,
    uiPort: cluster.ports.ui,
    address: `127.0.0.1:${cluster.ports.frontend}`,
    namespace: NAMESPACE,
    ui: `http://127.0.0.1:${cluster.ports.ui}`,
    kind: 'cluster',
  };
}

async function registerSearchAttributes(address: string, log: (s: string) => void): Promise<void> {
  const added = await ensureSearchAttributes(address, NAMESPACE);
  if (added.length === 0) return;
  log(`temporal cluster: registered search attributes ${added.join(', ')} through the operator API`);
  // SQL visibility keeps them as aliases in the namespace record, which each service's namespace cache
  // reloads every system.namespaceCacheRefreshInterval (2 s): the history service validates upserts with it.
  await new Promise((r) => setTimeout(r, 5_000));
}

/**
 * The lab's Temporal as a cluster: its PostgreSQL (initdb the first time), the schema set up by the server's
 * SQL tool, the server, the default namespace, the project's search attributes, and the Web UI server.
 * Reuses what is running.
 */
export async function startClusterTemporal(
  prev: LabCluster | undefined,
  labDir: string,
  preferred: { frontend: number; ui: number; postgres: number },
  taken: Set<number>,
  log: (s: string) => void,
): Promise<{ temporal: ClusterTemporal; cluster: LabCluster }> {
  if (prev && pidAlive(prev.serverPid) && pidAlive(prev.uiPid) && pidAlive(prev.postgres.pid)) {
    const t = temporalOf(prev);
    if (await temporalReady(t.address, t.namespace).catch(() => false)) {
      await registerSearchAttributes(t.address, log);
      log(`temporal cluster: reusing server pid ${prev.serverPid} at ${t.address} (PostgreSQL pid ${prev.postgres.pid})`);
      return { temporal: t, cluster: prev };
    }
  }
  // Whatever of an earlier cluster still runs goes first; a second server on one database would share its shards.
  if (prev) await stopClusterServers(prev);
  const dir = path.join(labDir, 'cluster');
  const postgres = await startPostgres(
    prev?.postgres,
    path.join(dir, 'postgresql'),
    path.join(labDir, 'secrets'),
    preferred.postgres,
    taken,
    log,
  );
  setupClusterSchema(postgres, log);
  const ports = await pickClusterPorts(taken, preferred.frontend, preferred.ui);
  const base = { serverVersion: TEMPORAL_SERVER_VERSION, postgres, ports, dir };
  writeClusterConfig(dir, { host: postgres.host, port: postgres.port, user: postgres.user, password: postgresPassword(postgres) }, ports);
  const serverPid = await spawnServer(base, log);
  const address = `127.0.0.1:${ports.frontend}`;
  await ensureNamespace(address, log);
  await waitFor('namespace default', () => temporalReady(address, NAMESPACE), { timeoutMs: 30_000 });
  await registerSearchAttributes(address, log);
  const uiPid = await spawnUi(base, log);
  const cluster: LabCluster = { ...base, serverPid, uiPid };
  log(
    `temporal cluster: server ${TEMPORAL_SERVER_VERSION} pid ${serverPid} at ${address} on PostgreSQL ${postgres.host}:${postgres.port}, UI http://127.0.0.1:${ports.ui}`,
  );
  return { temporal: temporalOf(cluster), cluster };
}

async function stopClusterServers(cluster: LabCluster): Promise<void> {
  for (const pid of [cluster.uiPid, cluster.serverPid]) if (pidAlive(pid)) await stopProcess(pid, 'SIGTERM');
}

/** Stops the UI server and the server (their connections end), then PostgreSQL with a fast shutdown. */
export async function stopCluster(cluster: LabCluster, log: (s: string) => void = () => {}): Promise<void> {
  await stopClusterServers(cluster);
  stopPostgres(cluster.postgres);
  log(`temporal cluster: stopped server, UI and PostgreSQL`);
}

/** Stops the server process (as a crash would with SIGKILL) and starts it again on the same ports and database. */
export async function restartClusterServer(
  cluster: LabCluster,
  signal: 'SIGKILL' | 'SIGTERM',
  log: (s: string) => void,
): Promise<{ temporal: ClusterTemporal; cluster: LabCluster }> {
  if (pidAlive(cluster.serverPid)) await stopProcess(cluster.serverPid, signal);
  const serverPid = await spawnServer(cluster, log);
  const next = { ...cluster, serverPid };
  await waitFor('namespace default', () => temporalReady(temporalOf(next).address, NAMESPACE), { timeoutMs: 30_000 });
  return { temporal: temporalOf(next), cluster: next };
}
