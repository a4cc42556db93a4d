import { createHash } from 'node:crypto';

/**
 * One change a firmware conversion made to a disk: the path (a guest file, or a sector range of the
 * disk), what happened and why, digests of the bytes before and after and a few changed lines. File
 * contents are never recorded, only lines we wrote ourselves (grub.cfg, fstab options).
 */
export interface BootChange {
  /** Guest path (`/boot/grub/grub.cfg`), NTFS path (`C:\bootmgr`) or disk range (`disk sectors 0-0 (MBR)`). */
  path: string;
  action: 'edit' | 'create' | 'remove';
  /** Why, in words a user understands. */
  description: string;
  /** `sha256:<hex>` of the bytes before; null when the path did not exist. */
  sha256Before: string | null;
  /** `sha256:<hex>` of the bytes after; null when the path was removed. */
  sha256After: string | null;
  /** At most DIFF_LINES changed lines (`- old`, `+ new`), each at most DIFF_LINE_CHARS long. */
  diff: string[];
}

export interface BootConversionResult {
  changes: BootChange[];
  /** What the conversion could not do or the user must know (the restore goes on). */
  warnings: string[];
}

export const DIFF_LINES = 6;
export const DIFF_LINE_CHARS = 120;

export function sha256Of(content: string | Buffer | null): string | null {
  if (content === null) return null;
  return `sha256:${createHash('sha256').update(content).digest('hex')}`;
}

/** The lines only in `before` (`- `) and only in `after` (`+ `), in order, cut to the limits. */
export function lineDiff(before: string | null, after: string | null): string[] {
  const a = before === null ? [] : before.split('\n');
  const b = after === null ? [] : after.split('\n');
  const inA = new Set(a);
  const inB = new Set(b);
  const lines = [...a.filter((l) => !inB.has(l)).map((l) => `- ${l}`), ...b.filter((l) => !inA.has(l)).map((l) => `+ ${l}`)];
  const cut = lines.slice(0, DIFF_LINES).map((l) => (l.length > DIFF_LINE_CHARS ? `${l.slice(0, DIFF_LINE_CHARS - 3)}...` : l));
  if (lines.length > DIFF_LINES) cut.push(`(${lines.length - DIFF_LINES} more changed lines)`);
  return cut;
}

/** A change of a sector range, described in words (its bytes are boot code or table entries). */
export function sectorChange(
  firstLba: number,
  lastLba: number,
  what: string,
  description: string,
  before: Buffer,
  after: Buffer,
  diff: string[],
): BootChange {
  return {
    path: `disk sectors ${firstLba}-${lastLba} (${what})`,
    action: 'edit',
    description,
    sha256Before: sha256Of(before),
    sha256After: sha256Of(after),
    diff,
  };
}
