import { readdirSync, readFileSync } from 'node:fs';

/** The kernel's I/O accounting of a process (/proc/<pid>/io), summed with its descendants'. */
export interface ProcessIo {
  /** Bytes passed to read-like system calls (files, sockets, pipes). */
  rchar: number;
  /** Bytes passed to write-like system calls. */
  wchar: number;
  /** Bytes this process caused to be fetched from storage. */
  readBytes: number;
  /** Bytes this process caused to be sent to storage, counted when it dirtied the pages. */
  writeBytes: number;
}

/** The processes `pid` started (the children of each of its threads). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tasks) {
    try {
      const list = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      if (list) out.push(...list.split(/\s+/).map(Number));
    } catch {
      // A thread that ended meanwhile.
    }
  }
  return out;
}

/**
 * What the kernel counted for `pid` and every process under it (a worker started through the launcher
 * runs as its child). Read from the outside, so a test can check what a worker really read or wrote
 * instead of what the worker reports.
 */
export function processTreeIo(pid: number): ProcessIo {
  const total: ProcessIo = { rchar: 0, wchar: 0, readBytes: 0, writeBytes: 0 };
  const seen = new Set<number>();
  const visit = (p: number): void => {
    if (seen.has(p)) return;
    seen.add(p);
    let text: string;
    try {
      text = readFileSync(`/proc/${p}/io`, 'utf8');
    } catch {
      return;
    }
    const field = (name: string) => Number(new RegExp(`^${name}: (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
    total.rchar += field('rchar');
    total.wchar += field('wchar');
    total.readBytes += field('read_bytes');
    total.writeBytes += field('write_bytes');
    for (const c of childrenOf(p)) visit(c);
  };
  visit(pid);
  return total;
}

/** The children of `pid` that bin/vmrestore.cjs started as the re-run of itself on the project's Node. */
export function launchedBy(pid: number): number[] {
  return childrenOf(pid).filter((c) => {
    try {
      return readFileSync(`/proc/${c}/environ`, 'utf8').split('\0').includes(`VMRESTORE_LAUNCHER_PID=${pid}`);
    } catch {
      return false;
    }
  });
}
