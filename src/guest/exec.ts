import { spawn } from 'node:child_process';
import { closeSync, openSync, statSync } from 'node:fs';
import { FailureType, RestoreError } from '../domain/errors';
import { maskSecrets } from './types';

export interface RunOptions {
  /** Written to the child's stdin, which is then closed. Without it stdin is empty. */
  input?: string | Buffer;
  cwd?: string;
  /**
   * Merged over the tool environment (PATH, LC_ALL=C, HOME, TMPDIR), never over process.env: disk tools
   * see no credentials or configuration of the worker. An undefined value removes the variable.
   */
  env?: NodeJS.ProcessEnv;
  /** Exit codes besides 0 that count as success (e2fsck uses 1 for "fixed", for example). */
  allowExit?: number[];
  /** Kills the child (SIGKILL) after this long; a wedged disk tool must not hang an activity. */
  timeoutMs?: number;
  /** Kills the child and fails once stdout grows past this (default 64 MiB): guest data is never slurped unbounded. */
  maxStdoutBytes?: number;
  /** Sends stdout to this file instead of memory (stdout/stdoutBuffer are then empty); size it with maxStdoutBytes. */
  stdoutFile?: string;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
  /** The raw stdout, for tools that print binary data (ntfscat, debugfs cat). */
  stdoutBuffer: Buffer;
}

const MAX_STDERR_IN_MESSAGE = 2000;
const DEFAULT_MAX_STDOUT = 64 * 1024 * 1024;
const MAX_STDERR_KEPT = 1024 * 1024;

const SBIN_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

/**
 * The search path for disk tools: PATH plus the sbin directories, where Debian keeps mke2fs, debugfs,
 * sfdisk and mkfs.fat, since a non-root user's PATH often lacks them.
 */
export function toolSearchPath(envPath = process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin'): string {
  const dirs = envPath.split(':').filter(Boolean);
  return [...dirs, ...SBIN_DIRS.filter((d) => !dirs.includes(d))].join(':');
}

/** The only variables a disk tool inherits. */
export function toolEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: toolSearchPath(), LC_ALL: 'C' };
  if (process.env.HOME) env.HOME = process.env.HOME;
  if (process.env.TMPDIR) env.TMPDIR = process.env.TMPDIR;
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/**
 * A disk tool failed. Tool failures on an image are deterministic (bad image, unsupported layout),
 * so retrying the activity would only repeat them: non-retryable GuestPreparation.
 */
export class CommandError extends RestoreError {
  constructor(
    readonly cmd: string,
    readonly args: readonly string[],
    readonly code: number | null,
    readonly stderr: string,
    readonly stdout: string,
    detail?: string,
  ) {
    // Tool output can quote guest data (names, values): lines are cut and secret-looking text masked.
    const shown = stderr
      .trim()
      .split('\n')
      .slice(0, 20)
      .map((l) => {
        const masked = maskSecrets(l);
        return masked.length > 300 ? `${masked.slice(0, 300)}…` : masked;
      })
      .join('\n')
      .slice(0, MAX_STDERR_IN_MESSAGE);
    const status = detail ?? (code === null ? 'was killed' : `exited with code ${code}`);
    super(FailureType.GuestPreparation, `${[cmd, ...args].map(quoteArg).join(' ')} ${status}${shown ? `: ${shown}` : ''}`);
    this.name = 'CommandError';
  }
}

function quoteArg(a: string): string {
  return /^[\w@%+=:,./?-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

/** Runs a command without a shell and collects its output; rejects with CommandError on failure. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise<RunResult>((resolve, reject) => {
    const maxStdout = opts.maxStdoutBytes ?? DEFAULT_MAX_STDOUT;
    let outFd: number | undefined;
    try {
      if (opts.stdoutFile) outFd = openSync(opts.stdoutFile, 'w', 0o600);
    } catch (e) {
      reject(new CommandError(cmd, args, null, '', '', `could not open ${opts.stdoutFile}: ${(e as Error).message}`));
      return;
    }
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: toolEnv(opts.env),
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', outFd ?? 'pipe', 'pipe'],
    });
    if (outFd !== undefined) closeSync(outFd);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let errBytes = 0;
    let failure: string | undefined;
    const kill = (why: string) => {
      failure ??= why;
      child.kill('SIGKILL');
    };
    const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => kill(`timed out after ${opts.timeoutMs} ms`), opts.timeoutMs);
    const sizeTimer =
      opts.stdoutFile === undefined
        ? undefined
        : setInterval(() => {
            try {
              if (statSync(opts.stdoutFile!).size > maxStdout) kill(`wrote more than ${maxStdout} bytes`);
            } catch {
              // The file is checked again at exit.
            }
          }, 200);
    child.stdout?.on('data', (b: Buffer) => {
      outBytes += b.length;
      if (outBytes > maxStdout) kill(`printed more than ${maxStdout} bytes`);
      else out.push(b);
    });
    child.stderr!.on('data', (b: Buffer) => {
      errBytes += b.length;
      if (errBytes <= MAX_STDERR_KEPT) err.push(b);
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      if (sizeTimer) clearInterval(sizeTimer);
      const detail = e.code === 'ENOENT' ? 'could not start: command not found' : `could not start: ${e.message}`;
      reject(new CommandError(cmd, args, null, '', '', detail));
    });
    child.on('close', (code) => {
      if (timer) clearTimeout(timer);
      if (sizeTimer) clearInterval(sizeTimer);
      if (!failure && opts.stdoutFile && statSync(opts.stdoutFile, { throwIfNoEntry: false })!.size > maxStdout) {
        failure = `wrote more than ${maxStdout} bytes`;
      }
      const stdoutBuffer = Buffer.concat(out);
      const stdout = stdoutBuffer.toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (failure) {
        reject(new CommandError(cmd, args, code, stderr, '', failure));
      } else if (code === 0 || (code !== null && opts.allowExit?.includes(code))) {
        resolve({ stdout, stderr, code, stdoutBuffer });
      } else {
        reject(new CommandError(cmd, args, code, stderr, stdout));
      }
    });
    if (opts.input !== undefined) {
      // A child that exits without reading stdin closes the pipe; that is not our failure.
      child.stdin!.on('error', () => undefined);
      child.stdin!.end(opts.input);
    }
  });
}
