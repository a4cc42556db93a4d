import { createHash } from 'node:crypto';

/**
 * One edit guest preparation made inside a disk image, kept in the activity result (and so in workflow
 * history) to show what a restore changed. Guest file contents never go in here: only the path, what
 * changed and why, digests of the bytes before and after, and a short diff of the changed lines with
 * anything that looks like a secret masked.
 */
export interface GuestChange {
  /** Guest path (`/etc/fstab`) or registry value (`HKLM\SYSTEM\ControlSet001\Services\Dhcp\Start`). */
  path: string;
  /** What happened to the path. */
  action: GuestChangeAction;
  /** Why, in words a user understands. */
  description: string;
  /** `sha256:<hex>` of the content (file bytes, symlink target or registry value data) before; null if absent. */
  sha256Before: string | null;
  /** The same after the change; null when the path was removed. */
  sha256After: string | null;
  /** At most DIFF_MAX_LINES changed lines (`- old`, `+ new`), each cut to DIFF_MAX_LINE_CHARS, secrets masked. */
  diff: string[];
}

export type GuestChangeAction = 'edit' | 'create' | 'remove' | 'symlink' | 'set-value' | 'delete-value';

/** What preparation did and what it could not do; both go into the activity and restore results. */
export interface GuestPreparationResult {
  changes: GuestChange[];
  /** Things left alone or not possible (a symlink not followed, a marker missing); the restore goes on. */
  warnings: string[];
}

export const DIFF_MAX_LINES = 6;
export const DIFF_MAX_LINE_CHARS = 120;
/** Beyond this many lines on each side the diff falls back to prefix/suffix trimming (no LCS table). */
const LCS_MAX_CELLS = 250_000;

export function sha256Of(content: string | Buffer | null): string | null {
  if (content === null) return null;
  return `sha256:${createHash('sha256').update(content).digest('hex')}`;
}

const MASK = '***';

/**
 * Masks what looks like a secret in one line: values of password/secret/token/key-like settings, crypt
 * hashes (`$6$...`), private key material, bearer tokens, URL credentials, JWTs and long base64/hex runs.
 */
export function maskSecrets(line: string): string {
  if (/-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----|PRIVATE KEY/i.test(line)) return `${MASK} (private key material)`;
  return (
    line
      // name=value, name: value, name value for secret-looking names (key=, passwd:, client_secret=, ...).
      .replace(
        /\b([\w.-]*(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|psk|credential|auth\w*|key))(\s*[=:]\s*|\s+)("[^"]*"|'[^']*'|\S+)/gi,
        (_m, name: string, sep: string) => `${name}${sep}${MASK}`,
      )
      // crypt(3) hashes: $1$, $5$, $6$, $y$, $2b$ ...
      .replace(/\$(?:[0-9a-z]{1,2}|2[abxy]?)\$[^\s:'"]+/gi, MASK)
      .replace(/\b(Bearer|Basic)\s+\S+/gi, `$1 ${MASK}`)
      .replace(/(\w+:\/\/[^/\s:@]*:)[^@\s/]+@/g, `$1${MASK}@`)
      .replace(/\beyJ[\w-]+\.[\w-]+\.[\w-]+/g, MASK)
      .replace(/\b(sig|signature)=[^&\s]+/gi, `$1=${MASK}`)
      // Long base64 or hex runs (keys, hashes, tokens); UUIDs are short dashed groups and stay.
      .replace(/[A-Za-z0-9+/]{32,}={0,2}/g, MASK)
      // grub.pbkdf2.sha512.10000.<salt>.<hash> and similar dotted hash forms.
      .replace(/\bgrub\.pbkdf2\.\S+/g, MASK)
  );
}

function cut(line: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = line.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '?');
  return clean.length > DIFF_MAX_LINE_CHARS ? `${clean.slice(0, DIFF_MAX_LINE_CHARS)}…` : clean;
}

/** Changed lines between two texts, as `- old` / `+ new`, in order, without context lines. */
function changedLines(before: string, after: string): string[] {
  const a = before.split('\n');
  const b = after.split('\n');
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA--;
    endB--;
  }
  const midA = a.slice(start, endA);
  const midB = b.slice(start, endB);
  if (midA.length * midB.length > LCS_MAX_CELLS) return [...midA.map((l) => `- ${l}`), ...midB.map((l) => `+ ${l}`)];
  // Longest common subsequence over the middle, so unchanged lines between two edits stay out.
  const n = midA.length;
  const m = midB.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = midA[i] === midB[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out: string[] = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && midA[i] === midB[j]) {
      i++;
      j++;
    } else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) {
      out.push(`- ${midA[i++]}`);
    } else {
      out.push(`+ ${midB[j++]}`);
    }
  }
  return out;
}

/** The short, masked diff of a change; texts are guest data and never stored whole. */
export function shortDiff(before: string | null, after: string | null): string[] {
  const lines =
    before !== null && after !== null
      ? changedLines(before, after)
      : [...(before ?? '').split('\n').map((l) => `- ${l}`), ...(after ?? '').split('\n').map((l) => `+ ${l}`)].filter((l) => l.length > 2);
  const shown = lines.slice(0, DIFF_MAX_LINES).map((l) => cut(maskSecrets(l)));
  if (lines.length > DIFF_MAX_LINES) shown.push(`[${lines.length - DIFF_MAX_LINES} more changed lines not recorded]`);
  return shown;
}

export interface ChangeInput {
  path: string;
  action: GuestChangeAction;
  description: string;
  /** Bytes or text before/after (null: absent); only their digests are kept. */
  before: string | Buffer | null;
  after: string | Buffer | null;
  /** Text for the diff, when the content is text worth diffing; omitted for binary or copied content. */
  diffBefore?: string | null;
  diffAfter?: string | null;
}

export function guestChange(c: ChangeInput): GuestChange {
  const withDiff = c.diffBefore !== undefined || c.diffAfter !== undefined;
  return {
    path: c.path,
    action: c.action,
    description: c.description,
    sha256Before: sha256Of(c.before),
    sha256After: sha256Of(c.after),
    diff: withDiff ? shortDiff(c.diffBefore ?? null, c.diffAfter ?? null) : [],
  };
}
