import { spawn } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import path from 'node:path';
import { labStateDir } from '../config';

/** Starts a lab process in its own process group, its output appended to `logs/<logName>` in the lab. */
export function spawnDetached(
  cmd: string,
  args: string[],
  logName: string,
  env: NodeJS.ProcessEnv = process.env,
): { pid: number; log: string } {
  const logs = path.join(labStateDir(), 'logs');
  mkdirSync(logs, { recursive: true });
  const log = path.join(logs, logName);
  const fd = openSync(log, 'a');
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', fd, fd], env, cwd: labStateDir() });
  child.unref();
  if (!child.pid) throw new Error(`could not start ${cmd}; see ${log}`);
  return { pid: child.pid, log };
}
