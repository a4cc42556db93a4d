import { execFile } from 'node:child_process';
import { FailureType, RestoreError } from '../../domain/errors';

export interface ToolRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program without blocking the event loop (the lab starts its other peers meanwhile). */
export function run(
  file: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; account?: { uid: number; gid: number }; timeoutMs?: number } = {},
): Promise<ToolRun> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      {
        encoding: 'utf8',
        env: { ...process.env, ...opts.env },
        // The account may not be allowed into the caller's working directory.
        cwd: '/',
        ...(opts.account ? { uid: opts.account.uid, gid: opts.account.gid } : {}),
        timeout: opts.timeoutMs ?? 120_000,
        maxBuffer: 16 * 1024 * 1024,
      },
      (err, stdout, stderr) => {
        const code = (err as { code?: unknown } | null)?.code;
        resolve({ status: err ? (typeof code === 'number' ? code : null) : 0, stdout, stderr: stderr || (err?.message ?? '') });
      },
    );
  });
}

/** The output of a run that exited 0; else an error naming `what` with the end of its output. */
export function check(r: ToolRun, what: string): string {
  if (r.status !== 0) {
    throw new RestoreError(FailureType.Configuration, `${what} failed (exit ${r.status}): ${(r.stderr || r.stdout).trim().slice(-1500)}`);
  }
  return r.stdout;
}
