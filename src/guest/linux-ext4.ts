import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FailureType, RestoreError } from '../domain/errors';
import { run } from './exec';

/**
 * Reads and edits an ext2/3/4 filesystem inside a disk image with e2fsprogs' debugfs, addressing the
 * partition as `image?offset=N`. Nothing is mounted, so this needs no privileges or loop devices and
 * never touches the host's kernel state. Calls are batched (`debugfs -f`) because each debugfs start
 * re-reads the superblock and group descriptors.
 */

export type Ext4FileType = 'regular' | 'directory' | 'symlink' | 'other';

export interface Ext4Stat {
  inode: number;
  type: Ext4FileType;
  /** Permission bits only (e.g. 0o644). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Symlinks only. */
  linkTarget?: string;
}

export interface ResolvedFile {
  /** The path after following symlinks. */
  path: string;
  stat: Ext4Stat;
  content: Buffer;
}

export type Ext4Op =
  | { op: 'write'; path: string; content: string | Buffer; mode?: number; uid?: number; gid?: number }
  | { op: 'rm'; path: string }
  | { op: 'symlink'; path: string; target: string }
  | { op: 'mkdir'; path: string };

const DEBUGFS_ENV = { LC_ALL: 'C', DEBUGFS_PAGER: '__none__', PAGER: '__none__' };
const MAX_SYMLINK_HOPS = 16;

function q(s: string): string {
  if (/["\n\r]/.test(s)) throw new RestoreError(FailureType.GuestPreparation, `unsupported character in guest path ${JSON.stringify(s)}`);
  return `"${s}"`;
}

function normalize(p: string): string {
  const n = path.posix.normalize('/' + p);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

/** debugfs reports failures on stderr with exit code 0; everything but its version banner is an error. */
function stderrErrors(stderr: string): string[] {
  return stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/^debugfs \d/.test(l));
}

/** Splits `debugfs -f` stdout into the output of each command, keyed by command order. */
function splitByCommand(stdout: string, count: number): string[] {
  const parts = stdout.split(/^debugfs: .*$\n?/m).slice(1);
  while (parts.length < count) parts.push('');
  return parts;
}

function parseStat(text: string): Ext4Stat | null {
  const head = /Inode:\s+(\d+)\s+Type:\s+(\S+)\s+Mode:\s+([0-7]+)/.exec(text);
  if (!head) return null;
  const owner = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(text);
  const size = /Size:\s+(\d+)\s*$/m.exec(text);
  const t = head[2];
  const type: Ext4FileType = t === 'regular' || t === 'directory' || t === 'symlink' ? t : 'other';
  const st: Ext4Stat = {
    inode: Number(head[1]),
    type,
    mode: parseInt(head[3], 8) & 0o7777,
    uid: owner ? Number(owner[1]) : 0,
    gid: owner ? Number(owner[2]) : 0,
    size: size ? Number(size[1]) : 0,
  };
  const fast = /^Fast link dest: "(.*)"$/m.exec(text);
  if (fast) st.linkTarget = fast[1];
  return st;
}

export class Ext4Volume {
  constructor(
    readonly imagePath: string,
    readonly offset: number,
  ) {}

  /** The device spec debugfs/e2fsck accept for a filesystem inside a whole-disk image. */
  get device(): string {
    return this.offset ? `${this.imagePath}?offset=${this.offset}` : this.imagePath;
  }

  private async debugfs(commands: string[], write = false): Promise<{ stdout: string; errors: string[] }> {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmrestore-debugfs-'));
    try {
      const cmdFile = path.join(dir, 'commands');
      await fsp.writeFile(cmdFile, commands.join('\n') + '\n');
      const args = write ? ['-w', '-f', cmdFile, this.device] : ['-f', cmdFile, this.device];
      const r = await run('debugfs', args, { env: DEBUGFS_ENV, timeoutMs: 120_000 });
      return { stdout: r.stdout, errors: stderrErrors(r.stderr) };
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }

  /** lstat-like: symlinks are reported, not followed (intermediate directory symlinks are followed). */
  async statMany(paths: string[]): Promise<Map<string, Ext4Stat | null>> {
    const out = new Map<string, Ext4Stat | null>();
    const list = [...new Set(paths.map(normalize))];
    if (list.length === 0) return out;
    const { stdout } = await this.debugfs(list.map((p) => `stat ${q(p)}`));
    const parts = splitByCommand(stdout, list.length);
    const slow: string[] = [];
    list.forEach((p, i) => {
      const st = parseStat(parts[i]);
      out.set(p, st);
      if (st?.type === 'symlink' && st.linkTarget === undefined) slow.push(p);
    });
    // Targets longer than 59 bytes live in a data block instead of the inode.
    if (slow.length) {
      const data = await this.dumpMany(slow);
      for (const p of slow) out.get(p)!.linkTarget = data.get(p)?.toString('utf8').replace(/\0.*$/s, '');
    }
    return out;
  }

  async stat(p: string): Promise<Ext4Stat | null> {
    return (await this.statMany([p])).get(normalize(p)) ?? null;
  }

  /** Dumps regular files (no symlink resolution) to temp files in one debugfs run. */
  private async dumpMany(paths: string[]): Promise<Map<string, Buffer | null>> {
    const out = new Map<string, Buffer | null>();
    if (paths.length === 0) return out;
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmrestore-dump-'));
    try {
      const targets = paths.map((_, i) => path.join(dir, String(i)));
      await this.debugfs(paths.map((p, i) => `dump ${q(p)} ${q(targets[i])}`));
      await Promise.all(
        paths.map(async (p, i) => {
          out.set(p, await fsp.readFile(targets[i]).catch(() => null));
        }),
      );
      return out;
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }

  /** Resolves the final-component symlinks of each path, as open(2) would. null when dangling/missing. */
  async resolveMany(paths: string[]): Promise<Map<string, { path: string; stat: Ext4Stat } | null>> {
    const result = new Map<string, { path: string; stat: Ext4Stat } | null>();
    let pending = new Map<string, string>(paths.map((p) => [normalize(p), normalize(p)]));
    for (let hop = 0; hop <= MAX_SYMLINK_HOPS && pending.size; hop++) {
      const stats = await this.statMany([...pending.values()]);
      const next = new Map<string, string>();
      for (const [orig, cur] of pending) {
        const st = stats.get(cur) ?? null;
        if (!st) result.set(orig, null);
        else if (st.type !== 'symlink') result.set(orig, { path: cur, stat: st });
        else if (st.linkTarget === undefined) result.set(orig, null);
        else next.set(orig, normalize(path.posix.resolve(path.posix.dirname(cur), st.linkTarget)));
      }
      pending = next;
    }
    for (const orig of pending.keys()) result.set(orig, null);
    return result;
  }

  /**
   * Reads regular files following symlinks, with the path they resolved to (edits must go there, not
   * replace the link). Missing, dangling and non-regular paths map to null. Keys are the given paths.
   */
  async readResolved(paths: string[]): Promise<Map<string, ResolvedFile | null>> {
    const resolved = await this.resolveMany(paths);
    const regular = [...resolved.values()].filter((r) => r?.stat.type === 'regular').map((r) => r!.path);
    const data = await this.dumpMany([...new Set(regular)]);
    const out = new Map<string, ResolvedFile | null>();
    for (const p of paths) {
      const r = resolved.get(normalize(p));
      const content = r && r.stat.type === 'regular' ? (data.get(r.path) ?? null) : null;
      out.set(p, r && content ? { path: r.path, stat: r.stat, content } : null);
    }
    return out;
  }

  /** Reads files, following symlinks; missing files and non-regular files read as null. */
  async readMany(paths: string[]): Promise<Map<string, Buffer | null>> {
    const out = new Map<string, Buffer | null>();
    for (const [p, r] of await this.readResolved(paths)) out.set(p, r ? r.content : null);
    return out;
  }

  async readFile(p: string): Promise<Buffer | null> {
    return (await this.readMany([p])).get(p) ?? null;
  }

  async readText(p: string): Promise<string | null> {
    const b = await this.readFile(p);
    return b === null ? null : b.toString('utf8');
  }

  /** Entry names of a directory (without . and ..), or null if it does not exist. */
  async list(dir: string): Promise<{ name: string; type: Ext4FileType }[] | null> {
    const d = normalize(dir);
    const st = (await this.resolveMany([d])).get(d);
    if (!st || st.stat.type !== 'directory') return null;
    const { stdout } = await this.debugfs([`ls -p ${q(st.path)}`]);
    const entries: { name: string; type: Ext4FileType }[] = [];
    for (const line of stdout.split('\n')) {
      const m = /^\/(\d+)\/(\d+)\/\d+\/\d+\/(.*)\/\d*\/$/.exec(line);
      if (!m || m[1] === '0' || m[3] === '.' || m[3] === '..') continue;
      const fmt = parseInt(m[2], 8) & 0o170000;
      const type: Ext4FileType = fmt === 0o100000 ? 'regular' : fmt === 0o40000 ? 'directory' : fmt === 0o120000 ? 'symlink' : 'other';
      entries.push({ name: m[3], type });
    }
    return entries;
  }

  /**
   * Applies edits in one `debugfs -w` run. Missing parent directories are created; writes replace
   * existing files keeping their mode and owner unless given; rm of a missing path is a no-op.
   */
  async apply(ops: Ext4Op[]): Promise<void> {
    if (ops.length === 0) return;
    const targets = ops.map((o) => normalize(o.path));
    const ancestors = new Set<string>();
    for (const t of targets) {
      for (let d = path.posix.dirname(t); d !== '/'; d = path.posix.dirname(d)) ancestors.add(d);
    }
    const existing = await this.statMany([...targets, ...ancestors]);
    const dirs = new Set([...ancestors].filter((a) => existing.get(a)?.type === 'directory'));
    const present = new Set([...existing].filter(([, st]) => st !== null).map(([p]) => p));
    // `cd` does not follow a symlink in the last component, so symlinked parents (merged /usr) are resolved.
    const linkedParents = targets.map((t) => path.posix.dirname(t)).filter((d) => existing.get(d)?.type === 'symlink');
    const realParent = new Map<string, string>();
    for (const [d, r] of await this.resolveMany(linkedParents)) if (r) realParent.set(d, r.path);

    const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmrestore-write-'));
    try {
      const cmds: string[] = [];
      const ensureDir = (d: string) => {
        if (d === '/' || dirs.has(d)) return;
        ensureDir(path.posix.dirname(d));
        if (present.has(d)) {
          // A symlink to a directory (merged /usr) resolves for debugfs' path lookup; keep it.
          if (existing.get(d)?.type === 'symlink') return;
          throw new RestoreError(FailureType.GuestPreparation, `${d} exists in the guest but is not a directory`);
        }
        cmds.push(`mkdir ${q(d)}`);
        dirs.add(d);
        present.add(d);
      };
      for (let i = 0; i < ops.length; i++) {
        const op = ops[i];
        const p = targets[i];
        const parent = path.posix.dirname(p);
        if (op.op !== 'rm') ensureDir(parent);
        const before = existing.get(p) ?? null;
        switch (op.op) {
          case 'rm':
            if (present.has(p)) cmds.push(`rm ${q(p)}`);
            present.delete(p);
            break;
          case 'mkdir':
            if (!present.has(p)) cmds.push(`mkdir ${q(p)}`);
            dirs.add(p);
            present.add(p);
            break;
          case 'symlink':
            if (present.has(p)) cmds.push(`rm ${q(p)}`);
            cmds.push(`symlink ${q(p)} ${q(op.target)}`);
            present.add(p);
            break;
          case 'write': {
            const src = path.join(tmp, String(i));
            await fsp.writeFile(src, op.content);
            if (present.has(p)) cmds.push(`rm ${q(p)}`);
            // Older debugfs links `write`'s destination name into the cwd verbatim, so go there first.
            cmds.push(`cd ${q(realParent.get(parent) ?? parent)}`, `write ${q(src)} ${q(path.posix.basename(p))}`, 'cd /');
            const keep = before && before.type === 'regular' ? before : null;
            const mode = op.mode ?? keep?.mode ?? 0o644;
            cmds.push(`sif ${q(p)} mode 0${(0o100000 | mode).toString(8)}`);
            cmds.push(`sif ${q(p)} uid ${op.uid ?? keep?.uid ?? 0}`);
            cmds.push(`sif ${q(p)} gid ${op.gid ?? keep?.gid ?? 0}`);
            present.add(p);
            break;
          }
        }
      }
      if (cmds.length === 0) return;
      const { errors } = await this.debugfs(cmds, true);
      if (errors.length) {
        throw new RestoreError(FailureType.GuestPreparation, `debugfs -w on ${this.device} reported: ${errors.slice(0, 10).join('; ')}`);
      }
    } finally {
      await fsp.rm(tmp, { recursive: true, force: true });
    }
  }

  /** Read-only full check; throws with e2fsck's output when the filesystem is not clean. */
  async fsck(): Promise<void> {
    await run('e2fsck', ['-fn', this.device], { env: { LC_ALL: 'C' }, timeoutMs: 600_000 });
  }
}
