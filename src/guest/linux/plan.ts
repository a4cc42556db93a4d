import path from 'node:path';
import { Ext4Volume, MAX_GUEST_FILE_BYTES, describePath, isSafeGuestPath, type Ext4Op, type Ext4Stat } from './ext4';
import { guestChange, type GuestChange } from '../types';

// Planning context: cached reads (nothing changes until apply) and the list of planned edits.

/** Directories preparation lists (netplan, boot entries) hold a handful of files. */
const MAX_DIR_ENTRIES = 1024;

export interface FileRef {
  /** The path preparation asked for. */
  intended: string;
  /** Where the content lives after following symlinks; an allowed edit is written there. */
  path: string;
  /** Paths visited from `intended` to `path` (one entry when no symlink was followed). */
  hops: string[];
  text: string;
  bytes: Buffer;
  stat: Ext4Stat;
}

/**
 * The symlink rule for edits. Preparation reads through guest symlinks (os-release is usually one), but
 * writes only to the file it means to change:
 * - a file under /etc is edited only when the path itself is a regular file: a symlink there (say
 *   /etc/default/grub -> /etc/shadow, or -> ../../root/x) is left alone with a warning;
 * - a boot loader file under /boot may be a symlink (EL on UEFI links /boot/grub2/grubenv into the ESP)
 *   and is edited at its target only when every hop of the link stays inside /boot;
 * - no directory on the way to any path preparation writes, creates or removes may be a symlink (checked
 *   for every operation just before applying; such operations are dropped with a warning);
 * - writes replace the directory entry (new inode), so a hard link to another file is never written
 *   through, and links preparation creates or removes are themselves the object changed.
 */
export function followAllowed(ref: FileRef): boolean {
  if (ref.hops.length === 1) return true;
  return ref.intended.startsWith('/boot/') && ref.hops.every((h) => h.startsWith('/boot/'));
}

/** One planned write with the change record it produces, so both are dropped together. */
interface PlannedOp {
  op: Ext4Op;
  change: GuestChange;
}

export class Plan {
  readonly planned: PlannedOp[] = [];
  readonly warnings: string[] = [];
  private files = new Map<string, FileRef | null>();
  private stats = new Map<string, Ext4Stat | null>();
  private warned = new Set<string>();

  constructor(readonly vol: Ext4Volume) {}

  get changes(): GuestChange[] {
    return this.planned.map((p) => p.change);
  }

  get ops(): Ext4Op[] {
    return this.planned.map((p) => p.op);
  }

  warn(message: string): void {
    if (this.warned.has(message)) return;
    this.warned.add(message);
    this.warnings.push(message);
  }

  async prefetch(paths: string[]): Promise<void> {
    const todo = paths.filter((p) => !this.files.has(p));
    if (!todo.length) return;
    const safe = todo.filter((p) => {
      if (isSafeGuestPath(p)) return true;
      this.files.set(p, null);
      this.warn(`${describePath(p)}: not a path that can be read safely; skipped`);
      return false;
    });
    for (const [p, r] of await this.vol.readResolved(safe)) {
      if (r && r.content === null) {
        this.warn(`${p}: ${r.stat.size} bytes, over the ${MAX_GUEST_FILE_BYTES}-byte limit for configuration files; not read or changed`);
        this.files.set(p, null);
        continue;
      }
      this.files.set(
        p,
        r
          ? { intended: normalizePath(p), path: r.path, hops: r.hops, text: r.content!.toString('utf8'), bytes: r.content!, stat: r.stat }
          : null,
      );
    }
  }

  async file(p: string): Promise<FileRef | null> {
    await this.prefetch([p]);
    return this.files.get(p) ?? null;
  }

  async text(p: string): Promise<string | null> {
    return (await this.file(p))?.text ?? null;
  }

  /** lstat (the last component is not followed). */
  async lstatMany(paths: string[]): Promise<void> {
    const todo = paths.map(normalizePath).filter((p) => !this.stats.has(p));
    if (!todo.length) return;
    for (const p of todo.filter((x) => !isSafeGuestPath(x))) this.stats.set(p, null);
    for (const [p, st] of await this.vol.statMany(todo.filter(isSafeGuestPath))) this.stats.set(p, st);
  }

  async lstat(p: string): Promise<Ext4Stat | null> {
    await this.lstatMany([p]);
    return this.stats.get(normalizePath(p)) ?? null;
  }

  /** Directory entries whose names can be used in a path; others are skipped with a warning. */
  async list(dir: string) {
    let entries = await this.vol.list(dir);
    if (!entries) return null;
    if (entries.length > MAX_DIR_ENTRIES) {
      this.warn(`${dir} holds ${entries.length} entries; only the first ${MAX_DIR_ENTRIES} are looked at`);
      entries = entries.slice(0, MAX_DIR_ENTRIES);
    }
    return entries.filter((e) => {
      if (!e.name.includes('/') && isSafeGuestPath(`${dir}/${e.name}`)) return true;
      this.warn(`${dir}: entry ${describePath(e.name)} has a name that cannot be handled safely; skipped`);
      return false;
    });
  }

  /** Rewrites a file when the content differs, under the symlink rule (see followAllowed). */
  edit(ref: FileRef, after: string, description: string): void {
    if (ref.text === after) return;
    if (!followAllowed(ref)) {
      this.warn(
        `${ref.intended} is a symlink to ${describePath(ref.hops[1] ?? ref.path)}; not followed, left unchanged (wanted: ${description})`,
      );
      return;
    }
    const via = ref.hops.length > 1 ? ` (through the symlink ${ref.intended})` : '';
    this.planned.push({
      op: { op: 'write', path: ref.path, content: after },
      change: guestChange({
        path: ref.path,
        action: 'edit',
        description: description + via,
        before: ref.bytes,
        after,
        diffBefore: ref.text,
        diffAfter: after,
      }),
    });
  }

  /** Writes a file of our own at p (replacing whatever entry is there, a symlink included, without following it). */
  async create(p: string, content: string | Buffer, mode: number, description: string): Promise<void> {
    const before = await this.entryBytes(p);
    if (before !== null && Buffer.from(content).equals(before)) return;
    this.planned.push({
      op: { op: 'write', path: p, content, mode },
      change: guestChange({ path: p, action: 'create', description, before, after: content }),
    });
  }

  async remove(p: string, description: string): Promise<void> {
    const before = await this.entryBytes(p);
    this.planned.push({
      op: { op: 'rm', path: p },
      change: guestChange({ path: p, action: 'remove', description, before, after: null }),
    });
  }

  async symlink(p: string, target: string, description: string): Promise<void> {
    const st = await this.lstat(p);
    const before = await this.entryBytes(p);
    this.planned.push({
      op: { op: 'symlink', path: p, target },
      change: guestChange({
        path: p,
        action: 'symlink',
        description,
        before,
        after: `-> ${target}`,
        diffBefore: st?.type === 'symlink' ? `-> ${st.linkTarget ?? '?'}` : null,
        diffAfter: `-> ${target}`,
      }),
    });
  }

  /** What the entry at p holds now, without following a final symlink: bytes of a file, `-> target` of a link. */
  private async entryBytes(p: string): Promise<Buffer | null> {
    const st = await this.lstat(p);
    if (!st) return null;
    if (st.type === 'symlink') return Buffer.from(`-> ${st.linkTarget ?? '?'}`);
    if (st.type !== 'regular') return Buffer.from(`(${st.type})`);
    const f = await this.file(p);
    return f && f.hops.length === 1 ? f.bytes : Buffer.from(`(regular file, ${st.size} bytes)`);
  }

  /**
   * Drops every planned operation below a symlinked directory (the symlink rule), with a warning each.
   * Runs once, just before the operations are applied.
   */
  async enforceNoDirectorySymlinks(): Promise<void> {
    const ancestors = new Set<string>();
    for (const { op } of this.planned) {
      for (let d = path.posix.dirname(normalizePath(op.path)); d !== '/'; d = path.posix.dirname(d)) ancestors.add(d);
    }
    await this.lstatMany([...ancestors]);
    const kept: PlannedOp[] = [];
    for (const p of this.planned) {
      let linked: string | null = null;
      for (let d = path.posix.dirname(normalizePath(p.op.path)); d !== '/' && !linked; d = path.posix.dirname(d)) {
        if (this.stats.get(d)?.type === 'symlink') linked = d;
      }
      if (!linked) {
        kept.push(p);
        continue;
      }
      const target = this.stats.get(linked)?.linkTarget ?? '?';
      this.warn(
        `${p.op.path}: directory ${linked} is a symlink to ${describePath(target)}; not followed, left unchanged (wanted: ${p.change.description})`,
      );
    }
    this.planned.splice(0, this.planned.length, ...kept);
  }
}

function normalizePath(p: string): string {
  const n = path.posix.normalize('/' + p);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}
