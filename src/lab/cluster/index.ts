import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time';
import { FailureType, RestoreError } from '../../domain/errors';
import { ensureTool } from '../binaries';
import { httpStatus, isPortFree, pickPort, pidAlive, stopProcess, waitFor } from '../net';
import { spawnDetached } from '../spawn';
import { ensureSearchAttributes, temporalReady, type LabTemporal, type TemporalKind } from '../temporal-admin';
import { databaseExists, postgresPassword, startPostgres, stopPostgres, type LabPostgres } from './postgres';
import { check, run } from './run';
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
export type { TemporalKind } from '../temporal-admin';

/** The lab's Temporal cluster: its PostgreSQL, the server process (all services) and the Web UI server. */
export interface LabCluster {
  serverVersion: string;
  postgres: LabPostgres;
  serverPid: number;
  uiPid: number;
  ports: ClusterPorts;
  dir: string;
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

async function sqlTool(tool: string, pg: LabPostgres, database: string, args: string[], what: string): Promise<void> {
  const r = await run(
    tool,
    ['--plugin', 'postgres12', '--endpoint', pg.host, '--port', String(pg.port), '--user', pg.user, '--database', database, ...args],
    { env: { SQL_PASSWORD: postgresPassword(pg) }, timeoutMs: 300_000 },
  );
  check(r, `temporal-sql-tool ${what} on ${database}`);
}

/**
 * Creates the two databases the first time (create-database, setup-schema -v 0.0) and brings their schema
 * to the pinned server's version (update-schema with the versioned folders of the server's source).
 * Returns the seconds it took.
 */
export async function setupClusterSchema(pg: LabPostgres, log: (s: string) => void): Promise<number> {
  const t0 = Date.now();
  const tool = ensureTool(TEMPORAL_SQL_TOOL, log);
  const source = await temporalServerSource();
  for (const [database, schema] of [
    [DATABASES.default, 'temporal'],
    [DATABASES.visibility, 'visibility'],
  ] as const) {
    if (!(await databaseExists(pg, database))) {
      await sqlTool(tool, pg, database, ['create-database', '--defaultdb', 'postgres'], 'create-database');
      await sqlTool(tool, pg, database, ['setup-schema', '-v', '0.0'], 'setup-schema');
    }
    await sqlTool(tool, pg, database, ['update-schema', '-d', path.join(postgresSchemaDir(source, schema), 'versioned')], 'update-schema');
  }
  const seconds = (Date.now() - t0) / 1000;
  log(
    `temporal cluster: schema of ${DATABASES.default} and ${DATABASES.visibility} at server ${TEMPORAL_SERVER_VERSION} (${seconds.toFixed(1)} s)`,
  );
  return seconds;
}

/**
 * Builds the server, its SQL tool and the UI server once per machine (cached by version). Synchronous, so
 * `lab up` calls it before it starts waiting on its other peers.
 */
export function ensureClusterTools(log: (s: string) => void): void {
  for (const tool of [TEMPORAL_SERVER, TEMPORAL_SQL_TOOL, TEMPORAL_UI_SERVER]) ensureTool(tool, log);
}

/**
 * A free port at most 32767: the PostgreSQL schema keeps membership ports as smallint, so a service on an
 * ephemeral port (32768 and up) fails to join. The preferred port first, then the next free ones above it.
 */
async function pickServicePort(preferred: number, taken: Set<number>): Promise<number> {
  const MAX = 32767;
  for (let p = preferred > 0 ? preferred : 20000; p <= MAX; p++) {
    if (!taken.has(p) && (await isPortFree(p))) {
      taken.add(p);
      return p;
    }
  }
  throw new RestoreError(FailureType.Configuration, `no free port between ${preferred} and ${MAX} on 127.0.0.1 for the Temporal cluster`);
}

/** The ports of the server's config/development-postgres12.yaml when free. */
async function pickClusterPorts(taken: Set<number>, frontend: number, ui: number): Promise<ClusterPorts> {
  const pick = (p: number) => pickServicePort(p, taken);
  return {
    frontend: await pick(frontend > 0 ? frontend : 7233),
    frontendHttp: await pick(7243),
    frontendMembership: await pick(6933),
    history: await pick(7234),
    historyMembership: await pick(6934),
    matching: await pick(7235),
    matchingMembership: await pick(6935),
    worker: await pick(7239),
    workerMembership: await pick(6939),
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
async function spawnServer(cluster: Omit<LabCluster, 'serverPid' | 'uiPid'>, log: (s: string) => void, started: number[]): Promise<number> {
  const bin = ensureTool(TEMPORAL_SERVER, log);
  const { pid, log: logFile } = spawnDetached(
    bin,
    ['--root', cluster.dir, '--config', 'server', '--env', CONFIG_ENV, '--allow-no-auth', 'start'],
    'temporal-server.log',
  );
  noteProcess(cluster.dir, started, pid);
  await waitFor('temporal server', () => frontendServing(`127.0.0.1:${cluster.ports.frontend}`), {
    timeoutMs: 120_000,
    logFile,
    isAlive: () => pidAlive(pid),
  });
  return pid;
}

async function spawnUi(cluster: Omit<LabCluster, 'serverPid' | 'uiPid'>, log: (s: string) => void, started: number[]): Promise<number> {
  const bin = ensureTool(TEMPORAL_UI_SERVER, log);
  const { pid, log: logFile } = spawnDetached(
    bin,
    ['--root', cluster.dir, '--config', 'ui', '--env', CONFIG_ENV, 'start'],
    'temporal-ui.log',
  );
  noteProcess(cluster.dir, started, pid);
  const url = `http://127.0.0.1:${cluster.ports.ui}`;
  await waitFor('temporal web UI', async () => (await httpStatus(url)) < 500, { timeoutMs: 30_000, logFile, isAlive: () => pidAlive(pid) });
  return pid;
}

function temporalOf(cluster: LabCluster): LabTemporal {
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
  // A namespace just registered reaches the frontend's namespace cache within its refresh interval.
  let added: string[] = [];
  await waitFor(
    'search attributes',
    async () => {
      added = await ensureSearchAttributes(address, NAMESPACE);
      return true;
    },
    { timeoutMs: 30_000, intervalMs: 500 },
  );
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
): Promise<{ temporal: LabTemporal; cluster: LabCluster }> {
  if (prev && pidAlive(prev.serverPid) && pidAlive(prev.uiPid) && pidAlive(prev.postgres.pid)) {
    const t = temporalOf(prev);
    if (await temporalReady(t.address, t.namespace).catch(() => false)) {
      await registerSearchAttributes(t.address, log);
      log(`temporal cluster: reusing server pid ${prev.serverPid} at ${t.address} (PostgreSQL pid ${prev.postgres.pid})`);
      return { temporal: t, cluster: prev };
    }
  }
  ensureClusterTools(log);
  const dir = path.join(labDir, 'cluster');
  // Whatever of an earlier cluster still runs goes first (also one whose `lab up` failed before it was
  // recorded): a second server on the same database would take over its shards.
  await stopRecordedServers(dir, prev);
  const postgres = await startPostgres(
    prev?.postgres,
    path.join(dir, 'postgresql'),
    path.join(labDir, 'secrets'),
    preferred.postgres,
    taken,
    log,
  );
  const started: number[] = [];
  try {
    await setupClusterSchema(postgres, log);
    const ports = await pickClusterPorts(taken, preferred.frontend, preferred.ui);
    const base = { serverVersion: TEMPORAL_SERVER_VERSION, postgres, ports, dir };
    writeClusterConfig(dir, { host: postgres.host, port: postgres.port, user: postgres.user, password: postgresPassword(postgres) }, ports);
    const serverPid = await spawnServer(base, log, started);
    const address = `127.0.0.1:${ports.frontend}`;
    await ensureNamespace(address, log);
    await waitFor('namespace default', () => temporalReady(address, NAMESPACE), { timeoutMs: 30_000 });
    await registerSearchAttributes(address, log);
    const uiPid = await spawnUi(base, log, started);
    const cluster: LabCluster = { ...base, serverPid, uiPid };
    log(
      `temporal cluster: server ${TEMPORAL_SERVER_VERSION} pid ${serverPid} at ${address} on PostgreSQL ${postgres.host}:${postgres.port}, UI http://127.0.0.1:${ports.ui}`,
    );
    return { temporal: temporalOf(cluster), cluster };
  } catch (err) {
    // Nothing half-started stays behind: the processes of this attempt, then PostgreSQL.
    for (const pid of started.reverse()) if (pidAlive(pid)) await stopProcess(pid, 'SIGTERM');
    await stopPostgres(postgres);
    throw err;
  }
}

/** The cluster's server and UI processes, noted as they start, so a later `lab up` can find them. */
function processesFile(dir: string): string {
  return path.join(dir, 'processes.json');
}

function noteProcess(dir: string, started: number[], pid: number): void {
  started.push(pid);
  writeFileSync(processesFile(dir), JSON.stringify({ pids: started }));
}

/** Stops the server and UI processes of an earlier start on this folder that are still running. */
async function stopRecordedServers(dir: string, prev: LabCluster | undefined): Promise<void> {
  let noted: number[] = [];
  try {
    noted = (JSON.parse(readFileSync(processesFile(dir), 'utf8')) as { pids: number[] }).pids;
  } catch {
    // none noted
  }
  const ours = (pid: number) => {
    try {
      return /temporal-(server|ui-server)/.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
    } catch {
      return false;
    }
  };
  for (const pid of new Set([...noted, ...(prev ? [prev.uiPid, prev.serverPid] : [])])) if (ours(pid)) await stopProcess(pid, 'SIGTERM');
}

async function stopClusterServers(cluster: LabCluster): Promise<void> {
  await stopRecordedServers(cluster.dir, cluster);
}

/** Stops the UI server and the server (their connections end), then PostgreSQL with a fast shutdown. */
export async function stopCluster(cluster: LabCluster, log: (s: string) => void = () => {}): Promise<void> {
  await stopClusterServers(cluster);
  await stopPostgres(cluster.postgres);
  log(`temporal cluster: stopped server, UI and PostgreSQL`);
}

/** Stops the server process (as a crash would with SIGKILL) and starts it again on the same ports and database. */
export async function restartClusterServer(
  cluster: LabCluster,
  signal: 'SIGKILL' | 'SIGTERM',
  log: (s: string) => void,
): Promise<{ temporal: LabTemporal; cluster: LabCluster }> {
  if (pidAlive(cluster.serverPid)) await stopProcess(cluster.serverPid, signal);
  const serverPid = await spawnServer(cluster, log, [cluster.uiPid]);
  const next = { ...cluster, serverPid };
  await waitFor('namespace default', () => temporalReady(temporalOf(next).address, NAMESPACE), { timeoutMs: 30_000 });
  return { temporal: temporalOf(next), cluster: next };
}
