import { spawn } from 'node:child_process';
import { FailureType, RestoreError } from '../domain/errors';

export interface RunOptions {
  /** Written to the child's stdin, which is then closed. Without it stdin is empty. */
  input?: string | Buffer;
  cwd?: string;
  /** Merged over process.env, so callers only name what they change. */
  env?: NodeJS.ProcessEnv;
  /** Exit codes besides 0 that count as success (e2fsck uses 1 for "fixed", for example). */
  allowExit?: number[];
  /** Kills the child (SIGKILL) after this long; a wedged disk tool must not hang an activity. */
  timeoutMs?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
  /** The raw stdout, for tools that print binary data (ntfscat, debugfs cat). */
  stdoutBuffer: Buffer;
}

const MAX_STDERR_IN_MESSAGE = 2000;

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
    const shown = stderr.trim().slice(0, MAX_STDERR_IN_MESSAGE);
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
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ? { ...process.env, ...opts.env } : process.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs);
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      const detail = e.code === 'ENOENT' ? 'could not start: command not found' : `could not start: ${e.message}`;
      reject(new CommandError(cmd, args, null, '', '', detail));
    });
    child.on('close', (code) => {
      if (timer) clearTimeout(timer);
      const stdoutBuffer = Buffer.concat(out);
      const stdout = stdoutBuffer.toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (timedOut) {
        reject(new CommandError(cmd, args, code, stderr, stdout, `timed out after ${opts.timeoutMs} ms`));
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
