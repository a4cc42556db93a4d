import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { run } from '../exec';

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
  /** Hard link count. */
  links?: number;
  /** Symlinks only. */
  linkTarget?: string;
}

export interface ResolvedPath {
  /** The path after following symlinks. */
  path: string;
  stat: Ext4Stat;
  /** Every path visited, the given one first and `path` last (one entry when no symlink was followed). */
  hops: string[];
}

export interface ResolvedFile extends ResolvedPath {
  /** null when the file is larger than the read limit (`tooLarge`). */
  content: Buffer | null;
  tooLarge: boolean;
}

export type Ext4Op =
  | { op: 'write'; path: string; content: string | Buffer; mode?: number; uid?: number; gid?: number }
  | { op: 'rm'; path: string }
  | { op: 'symlink'; path: string; target: string }
  | { op: 'mkdir'; path: string };

const DEBUGFS_ENV = { DEBUGFS_PAGER: '__none__', PAGER: '__none__' };
const MAX_SYMLINK_HOPS = 16;

/**
 * debugfs reads `-f` command files with fgets into a BUFSIZ (8192-byte) buffer: a longer line is split
 * and its remainder runs as a command of its own, and a command starting with `!` goes to a shell. Every
 * line we emit is checked against this limit and refused, never truncated.
 */
export const DEBUGFS_MAX_LINE = 4096;
/**
 * ext4 names are at most 255 bytes. Paths are held well under PATH_MAX so that a command naming a
 * guest path and one of our temporary files always fits DEBUGFS_MAX_LINE.
 */
const MAX_NAME_BYTES = 255;
const MAX_PATH_BYTES = 3800;

/** A path or name from the guest (or derived from guest data) that cannot be handed to debugfs. */
export class UnsafeGuestPathError extends RestoreError {
  constructor(
    readonly guestPath: string,
    reason: string,
  ) {
    super(FailureType.GuestPreparation, `guest path ${describePath(guestPath)} ${reason}; refused (it is not passed to debugfs)`);
    this.name = 'UnsafeGuestPathError';
  }
}

/** A bounded, printable rendering of a guest string for messages. */
export function describePath(p: string): string {
  const shown = JSON.stringify(p.length > 120 ? `${p.slice(0, 120)}…` : p);
  return p.length > 120 ? `${shown} (${Buffer.byteLength(p)} bytes)` : shown;
}

/**
 * Checks a path for use inside a quoted debugfs argument: absolute, no control characters (no newline
 * that would start another command), no `"` (debugfs has no escape for it inside quotes), names and
 * the whole path within ext4's limits.
 */
export function checkGuestPath(p: string): string {
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(p)) throw new UnsafeGuestPathError(p, 'contains a control character');
  if (p.includes('"')) throw new UnsafeGuestPathError(p, 'contains a double quote');
  if (Buffer.byteLength(p) > MAX_PATH_BYTES) throw new UnsafeGuestPathError(p, `is longer than ${MAX_PATH_BYTES} bytes`);
  for (const part of p.split('/')) {
    if (Buffer.byteLength(part) > MAX_NAME_BYTES) throw new UnsafeGuestPathError(p, `has a name longer than ${MAX_NAME_BYTES} bytes`);
  }
  return p;
}

/** True when checkGuestPath accepts the path. */
export function isSafeGuestPath(p: string): boolean {
  try {
    checkGuestPath(p);
    return true;
  } catch {
    return false;
  }
}

function q(s: string): string {
  return `"${checkGuestPath(s)}"`;
}

/** Refuses a command line debugfs would split (see DEBUGFS_MAX_LINE). */
function checkLine(line: string): string {
  const bytes = Buffer.byteLength(line);
  if (bytes > DEBUGFS_MAX_LINE) {
    throw new RestoreError(
      FailureType.GuestPreparation,
      `debugfs command for ${describePath(line.slice(0, 200))} is ${bytes} bytes, over the ${DEBUGFS_MAX_LINE}-byte line limit; refused`,
    );
  }
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(line) || /^\s*[!#]/.test(line)) {
    throw new RestoreError(FailureType.GuestPreparation, `unsafe debugfs command line ${describePath(line)}; refused`);
  }
  return line;
}

/** Regular files larger than this are not read for preparation (configuration files are small). */
export const MAX_GUEST_FILE_BYTES = 4 * 1024 * 1024;

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

/**
 * Splits `debugfs -f` stdout into the output of each command. Each command is preceded by a comment line
 * carrying a random marker (debugfs echoes comments), so guest text in the output (a symlink target
 * holding `\ndebugfs: stat ...`) cannot shift one command's output onto another.
 */
function splitByMarker(stdout: string, marker: string, count: number): string[] {
  const parts: string[] = new Array<string>(count).fill('');
  const re = new RegExp(`^#${marker}-(\\d+)$\\n?`, 'gm');
  const hits = [...stdout.matchAll(re)];
  hits.forEach((h, k) => {
    const i = Number(h[1]);
    const end = k + 1 < hits.length ? hits[k + 1].index : stdout.length;
    if (i < count) parts[i] = stdout.slice(h.index + h[0].length, end);
  });
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
  // The target is printed raw as the last line; it may itself hold newlines or quotes.
  const fast = /^Fast link dest: "([\s\S]*)"\s*$/m.exec(text);
  if (fast) st.linkTarget = fast[1];
  const links = /Links:\s+(\d+)/.exec(text);
  st.links = links ? Number(links[1]) : 1;
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

  /**
   * Runs commands in one debugfs process. Every line is checked (length, control characters, no `!`
   * shell escape), and each command's output is delimited by a random marker.
   */
  private async debugfs(commands: string[], write = false): Promise<{ parts: string[]; errors: string[] }> {
    const marker = `vmrestore-${randomBytes(12).toString('hex')}`;
    const lines = commands.flatMap((c, i) => [`#${marker}-${i}`, checkLine(c)]);
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmrestore-debugfs-'));
    try {
      const cmdFile = path.join(dir, 'commands');
      await fsp.writeFile(cmdFile, lines.join('\n') + '\n', { mode: 0o600 });
      const args = write ? ['-w', '-f', cmdFile, this.device] : ['-f', cmdFile, this.device];
      const r = await run('debugfs', args, { env: DEBUGFS_ENV, timeoutMs: 120_000 });
      const errors = stderrErrors(r.stderr);
      // A damaged superblock or group descriptors: debugfs carries on with "Filesystem not open".
      const openFailure = errors.find((l) => / while (trying to open|opening filesystem)|Filesystem not open/.test(l));
      if (openFailure) {
        throw new RestoreError(
          FailureType.GuestPreparation,
          `debugfs cannot open the ext2/3/4 filesystem in ${this.device}: ${openFailure.slice(0, 300)}`,
        );
      }
      return { parts: splitByMarker(r.stdout, marker, commands.length), errors };
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }

  /** lstat-like: symlinks are reported, not followed (intermediate directory symlinks are followed). */
  async statMany(paths: string[]): Promise<Map<string, Ext4Stat | null>> {
    const out = new Map<string, Ext4Stat | null>();
    const list = [...new Set(paths.map(normalize))];
    if (list.length === 0) return out;
    const { parts } = await this.debugfs(list.map((p) => `stat ${q(p)}`));
    const slow: string[] = [];
    list.forEach((p, i) => {
      const st = parseStat(parts[i]);
      out.set(p, st);
      if (st?.type === 'symlink' && st.linkTarget === undefined) slow.push(p);
    });
    // Targets longer than 59 bytes live in a data block instead of the inode (at most one block).
    const readable = slow.filter((p) => out.get(p)!.size <= 4096);
    if (readable.length) {
      const data = await this.dumpMany(readable, 4096);
      for (const p of readable) out.get(p)!.linkTarget = data.get(p)?.toString('utf8').replace(/\0.*$/s, '');
    }
    return out;
  }

  async stat(p: string): Promise<Ext4Stat | null> {
    return (await this.statMany([p])).get(normalize(p)) ?? null;
  }

  /** Dumps regular files (no symlink resolution) to temp files in one debugfs run; larger than maxBytes reads as null. */
  private async dumpMany(paths: string[], maxBytes = MAX_GUEST_FILE_BYTES): Promise<Map<string, Buffer | null>> {
    const out = new Map<string, Buffer | null>();
    if (paths.length === 0) return out;
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmrestore-dump-'));
    try {
      const targets = paths.map((_, i) => path.join(dir, String(i)));
      await this.debugfs(paths.map((p, i) => `dump ${q(p)} ${q(targets[i])}`));
      await Promise.all(
        paths.map(async (p, i) => {
          const st = await fsp.stat(targets[i]).catch(() => null);
          out.set(p, st && st.size <= maxBytes ? await fsp.readFile(targets[i]) : null);
        }),
      );
      return out;
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * Resolves the final-component symlinks of each path, as open(2) would, with every path visited on
   * the way (`hops`, the given path first). null when dangling, missing, looping or unsafe.
   */
  async resolveMany(paths: string[]): Promise<Map<string, ResolvedPath | null>> {
    const result = new Map<string, ResolvedPath | null>();
    let pending = new Map<string, string[]>(paths.map((p) => [normalize(p), [normalize(p)]]));
    for (let hop = 0; hop <= MAX_SYMLINK_HOPS && pending.size; hop++) {
      const stats = await this.statMany([...pending.values()].map((h) => h[h.length - 1]));
      const next = new Map<string, string[]>();
      for (const [orig, hops] of pending) {
        const cur = hops[hops.length - 1];
        const st = stats.get(cur) ?? null;
        if (!st) result.set(orig, null);
        else if (st.type !== 'symlink') result.set(orig, { path: cur, stat: st, hops });
        else if (st.linkTarget === undefined) result.set(orig, null);
        else {
          const to = normalize(path.posix.resolve(path.posix.dirname(cur), st.linkTarget));
          // A target debugfs cannot be given safely is treated as dangling.
          if (!isSafeGuestPath(to) || hops.includes(to)) result.set(orig, null);
          else next.set(orig, [...hops, to]);
        }
      }
      pending = next;
    }
    for (const orig of pending.keys()) result.set(orig, null);
    return result;
  }

  /**
   * Reads regular files following symlinks, with the path they resolved to and the hops on the way.
   * Missing, dangling and non-regular paths map to null. Files over maxBytes (default
   * MAX_GUEST_FILE_BYTES) are not read: they come back with `content: null` and `tooLarge`.
   * Keys are the given paths.
   */
  async readResolved(paths: string[], maxBytes = MAX_GUEST_FILE_BYTES): Promise<Map<string, ResolvedFile | null>> {
    const resolved = await this.resolveMany(paths);
    const regular = [...resolved.values()].filter((r) => r?.stat.type === 'regular' && r.stat.size <= maxBytes).map((r) => r!.path);
    const data = await this.dumpMany([...new Set(regular)], maxBytes);
    const out = new Map<string, ResolvedFile | null>();
    for (const p of paths) {
      const r = resolved.get(normalize(p));
      if (!r || r.stat.type !== 'regular') {
        out.set(p, null);
        continue;
      }
      const content = data.get(r.path) ?? null;
      if (content === null && r.stat.size <= maxBytes) out.set(p, null);
      else out.set(p, { ...r, content, tooLarge: content === null });
    }
    return out;
  }

  /** Reads files, following symlinks; missing, too large and non-regular files read as null. */
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
    const { parts } = await this.debugfs([`ls -p ${q(st.path)}`]);
    const entries: { name: string; type: Ext4FileType }[] = [];
    // Names are printed raw, so one holding a newline spans lines: join until the entry is complete.
    const lines: string[] = [];
    for (const line of parts[0].split('\n')) {
      const open = lines.length > 0 && !/\/\d*\/$/.test(lines[lines.length - 1]);
      if (open) lines[lines.length - 1] += `\n${line}`;
      else if (/^\/\d+\/\d+\//.test(line)) lines.push(line);
    }
    for (const line of lines) {
      const m = /^\/(\d+)\/(\d+)\/\d+\/\d+\/([\s\S]*)\/\d*\/$/.exec(line);
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

/**
 * Makes an ext4 filesystem from a directory tree straight into a disk image at an offset
 * (`mke2fs -E offset=… -d TREE`), so no partition image is copied and nothing is mounted.
 */
export async function makeExt4FromTree(
  image: string,
  fs: {
    offsetBytes: number;
    sizeBytes: number;
    tree: string;
    uuid: string;
    label?: string;
    /** Seed of the directory hash (a UUID), for a filesystem that comes out the same on every build. */
    hashSeed?: string;
    timeoutMs?: number;
  },
): Promise<void> {
  await run(
    'mke2fs',
    [
      '-q',
      '-t',
      'ext4',
      '-F',
      '-U',
      fs.uuid,
      ...(fs.label === undefined ? [] : ['-L', fs.label]),
      '-E',
      `root_owner=0:0,offset=${fs.offsetBytes}${fs.hashSeed === undefined ? '' : `,hash_seed=${fs.hashSeed}`}`,
      '-d',
      fs.tree,
      image,
      `${fs.sizeBytes / 1024}k`,
    ],
    { env: { LC_ALL: 'C' }, timeoutMs: fs.timeoutMs ?? 900_000 },
  );
}
