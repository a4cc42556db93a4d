import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, chownSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { pickPort, pidAlive, waitFor } from '../net';
import { check, run, type ToolRun } from './run';

/** Debian 12's PostgreSQL server programs (package `postgresql`, see src/prereqs.ts); they are not on PATH. */
export const POSTGRES_BIN = process.env.VMRESTORE_POSTGRES_BIN ?? '/usr/lib/postgresql/15/bin';

/** The lab's own PostgreSQL instance: a data folder in the lab, on loopback only, password login. */
export interface LabPostgres {
  pid: number;
  port: number;
  host: string;
  dataDir: string;
  user: string;
  passwordFile: string;
  logFile: string;
}

export interface OsAccount {
  name: string;
  home: string;
  uid: number;
  gid: number;
}

/** PostgreSQL refuses to run as root: as root the instance runs as Debian's `postgres` account. */
function serverAccount(): OsAccount | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  const [, , uid, gid, , home] = line?.split(':') ?? [];
  if (uid === undefined || gid === undefined) {
    throw new RestoreError(
      FailureType.Configuration,
      'running as root, but there is no `postgres` account to run PostgreSQL as (apt-get install -y postgresql)',
    );
  }
  return { name: 'postgres', uid: Number(uid), gid: Number(gid), home: home || '/var/lib/postgresql' };
}

function pgTool(tool: string): string {
  const file = path.join(POSTGRES_BIN, tool);
  if (!existsSync(file)) {
    throw new RestoreError(
      FailureType.Configuration,
      `${file} not found: install PostgreSQL (apt-get install -y postgresql) or set VMRESTORE_POSTGRES_BIN`,
    );
  }
  return file;
}

function runAs(account: OsAccount | undefined, tool: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<ToolRun> {
  return run(pgTool(tool), args, { env, account });
}

/** Whether the account can walk down to `dir`: every folder above it searchable by others. */
function reachable(dir: string): boolean {
  for (let d = path.resolve(dir); d !== path.dirname(d); d = path.dirname(d)) if ((statSync(d).mode & 0o001) === 0) return false;
  return true;
}

/**
 * Where the instance keeps its data: `dir` in the lab, unless the account cannot enter the lab's folder
 * (a checkout under a private home, say); then a folder of this lab in the account's home.
 */
function instanceDir(dir: string, account: OsAccount | undefined, log: (s: string) => void): string {
  if (!account || reachable(dir)) return dir;
  const own = path.join(account.home, 'vmrestore-lab', createHash('sha256').update(path.resolve(dir)).digest('hex').slice(0, 12));
  log(`postgresql: ${account.name} cannot enter ${dir}; its data goes to ${own}`);
  ownedDir(path.dirname(own), account);
  ownedDir(own, account);
  return own;
}

/** A folder (and file) the instance writes: owned by its account. */
function ownedDir(dir: string, account: OsAccount | undefined): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (account) chownSync(dir, account.uid, account.gid);
}

async function initdb(pg: Omit<LabPostgres, 'pid' | 'port'>, account: OsAccount | undefined): Promise<void> {
  ownedDir(pg.dataDir, account);
  // initdb reads the superuser's password from a file its account can read; it goes away afterwards.
  const pwfile = path.join(pg.dataDir, '..', `initdb-pw.${process.pid}`);
  writeFileSync(pwfile, readFileSync(pg.passwordFile, 'utf8'), { mode: 0o600 });
  if (account) chownSync(pwfile, account.uid, account.gid);
  try {
    check(
      await runAs(account, 'initdb', [
        '-D',
        pg.dataDir,
        '-U',
        pg.user,
        `--pwfile=${pwfile}`,
        '--auth=scram-sha-256',
        '--encoding=UTF8',
        '--locale=C',
      ]),
      `initdb of ${pg.dataDir}`,
    );
  } finally {
    rmSync(pwfile, { force: true });
  }
  appendFileSync(
    path.join(pg.dataDir, 'postgresql.conf'),
    [
      '',
      '# vmrestore lab: TCP on loopback only, no Unix socket outside the data folder.',
      `listen_addresses = '${pg.host}'`,
      "unix_socket_directories = ''",
      // A commit returns before its WAL is flushed: a machine crash may lose the last writes, a process crash does not.
      'synchronous_commit = off',
      '',
    ].join('\n'),
  );
}

function postmasterPid(dataDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

export function postgresPassword(pg: LabPostgres): string {
  return readFileSync(pg.passwordFile, 'utf8').trim();
}

/** Runs SQL through psql on `database`; returns its unaligned, tuples-only output. */
export async function psql(pg: LabPostgres, database: string, sql: string): Promise<string> {
  const r = await runAs(
    undefined,
    'psql',
    ['-h', pg.host, '-p', String(pg.port), '-U', pg.user, '-d', database, '-v', 'ON_ERROR_STOP=1', '-At', '-c', sql],
    {
      PGPASSWORD: postgresPassword(pg),
    },
  );
  return check(r, `psql on ${database} (${sql.slice(0, 80)})`).trim();
}

async function ready(pg: LabPostgres): Promise<boolean> {
  return (await runAs(undefined, 'pg_isready', ['-h', pg.host, '-p', String(pg.port), '-q'])).status === 0;
}

/**
 * Starts the lab's PostgreSQL on `dir/data` (created with initdb the first time), or reuses the running one.
 * The data folder is kept across `lab down`, as the dev server keeps its database file.
 */
export async function startPostgres(
  prev: LabPostgres | undefined,
  dir: string,
  secretsDir: string,
  preferredPort: number,
  taken: Set<number>,
  log: (s: string) => void,
): Promise<LabPostgres> {
  if (prev && pidAlive(prev.pid) && (await ready(prev))) {
    log(`postgresql: reusing pid ${prev.pid} at ${prev.host}:${prev.port}`);
    return prev;
  }
  const account = serverAccount();
  mkdirSync(dir, { recursive: true });
  const home = instanceDir(dir, account, log);
  const dataDir = path.join(home, 'data');
  if (prev && pidAlive(prev.pid)) await stopPostgres(prev);
  const base = {
    host: '127.0.0.1',
    dataDir,
    user: 'temporal',
    passwordFile: path.join(secretsDir, 'postgres-password'),
    logFile: path.join(home, 'postgresql.log'),
  };
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) {
    mkdirSync(secretsDir, { recursive: true, mode: 0o700 });
    writeFileSync(base.passwordFile, randomBytes(18).toString('base64url'), { mode: 0o600 });
    rmSync(dataDir, { recursive: true, force: true });
    log(`postgresql: initdb ${dataDir}${account ? ` (as ${account.name})` : ''}`);
    await initdb(base, account);
  }
  // A postmaster left from an earlier lab on this data folder (its state lost) is stopped before a new start.
  const stale = postmasterPid(dataDir);
  if (stale && pidAlive(stale)) await runAs(account, 'pg_ctl', ['-D', dataDir, '-m', 'fast', '-w', 'stop']);
  const port = await pickPort(preferredPort, taken);
  if (!existsSync(base.logFile)) writeFileSync(base.logFile, '');
  if (account) chownSync(base.logFile, account.uid, account.gid);
  check(
    await runAs(account, 'pg_ctl', ['-D', dataDir, '-l', base.logFile, '-w', '-t', '60', '-o', `-p ${port}`, 'start']),
    `pg_ctl start (see ${base.logFile})`,
  );
  const pid = postmasterPid(dataDir);
  if (!pid)
    throw new RestoreError(
      FailureType.Configuration,
      `PostgreSQL started but ${dataDir}/postmaster.pid names no process; see ${base.logFile}`,
    );
  const pg: LabPostgres = { ...base, pid, port };
  await waitFor('postgresql', () => ready(pg), { timeoutMs: 30_000, logFile: base.logFile, isAlive: () => pidAlive(pid) });
  log(`postgresql: started pid ${pid} at ${pg.host}:${port} (data ${dataDir})`);
  return pg;
}

/** Fast shutdown: open sessions are ended, the data folder is left consistent. */
export async function stopPostgres(pg: LabPostgres): Promise<void> {
  if (!pidAlive(pg.pid)) return;
  const r = await runAs(serverAccount(), 'pg_ctl', ['-D', pg.dataDir, '-m', 'fast', '-w', '-t', '60', 'stop']);
  if (r.status !== 0 && pidAlive(pg.pid)) process.kill(pg.pid, 'SIGQUIT');
}

/** Whether `database` exists on the instance. */
export async function databaseExists(pg: LabPostgres, database: string): Promise<boolean> {
  return (await psql(pg, 'postgres', `SELECT 1 FROM pg_database WHERE datname = '${database.replace(/'/g, "''")}'`)) === '1';
}
