import { createHash, type Hash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { getRestorePoint, readDiskBlocks } from '../../src/repository';

/**
 * A digest of a disk's bytes that costs a zero check, not a hash, for its zeros: SHA-256 over every
 * 64 KiB window (at its absolute offset) that holds a non-zero byte, each preceded by its offset, and the
 * disk's length at the end. Two disks have the same digest exactly when they have the same length and
 * the same bytes (up to SHA-256 collisions), however their zeros are stored: a restored 8 GiB thin disk
 * with a few MiB of data is compared in the time its file takes to read, not to hash.
 */
const WINDOW = 64 * 1024;
const ZERO = Buffer.alloc(WINDOW);
const READ = 4 * 1024 * 1024;

class SparseDigest {
  private readonly hash: Hash = createHash('sha256');
  private readonly pending = Buffer.alloc(WINDOW);
  private fill = 0;
  /** Absolute offset of the window being filled. */
  private pos = 0;

  private window(win: Buffer): void {
    if (!win.equals(ZERO.subarray(0, win.length))) {
      const at = Buffer.alloc(8);
      at.writeBigUInt64BE(BigInt(this.pos));
      this.hash.update(at).update(win);
    }
    this.pos += win.length;
  }

  update(data: Buffer): void {
    let i = 0;
    if (this.fill > 0) {
      const n = Math.min(WINDOW - this.fill, data.length);
      data.copy(this.pending, this.fill, 0, n);
      this.fill += n;
      i = n;
      if (this.fill < WINDOW) return;
      this.window(this.pending);
      this.fill = 0;
    }
    for (; i + WINDOW <= data.length; i += WINDOW) this.window(data.subarray(i, i + WINDOW));
    if (i < data.length) {
      data.copy(this.pending, 0, i);
      this.fill = data.length - i;
    }
  }

  zeros(length: number): void {
    let left = length;
    if (this.fill > 0) {
      const n = Math.min(WINDOW - this.fill, left);
      this.pending.fill(0, this.fill, this.fill + n);
      this.fill += n;
      left -= n;
      if (this.fill < WINDOW) return;
      this.window(this.pending);
      this.fill = 0;
    }
    const whole = Math.floor(left / WINDOW) * WINDOW;
    this.pos += whole;
    left -= whole;
    if (left > 0) {
      this.pending.fill(0, 0, left);
      this.fill = left;
    }
  }

  digest(): string {
    if (this.fill > 0) this.window(this.pending.subarray(0, this.fill));
    const total = Buffer.alloc(8);
    total.writeBigUInt64BE(BigInt(this.pos));
    return this.hash.update(total).digest('hex');
  }
}

/** The digest of a file's bytes (a raw disk image, a flat extent). */
export async function diskDigest(file: string): Promise<string> {
  const d = new SparseDigest();
  const fh = await fsp.open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(READ);
    for (let offset = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, READ, offset);
      if (bytesRead === 0) break;
      d.update(buf.subarray(0, bytesRead));
      offset += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return d.digest();
}

/** The digest of a backed-up disk as the repository holds it, zero blocks included. */
export async function backedUpDiskDigest(repo: string, restorePointId: string, diskIndex: number): Promise<string> {
  const rp = await getRestorePoint(repo, restorePointId);
  const d = new SparseDigest();
  for await (const b of readDiskBlocks(repo, rp, diskIndex, {})) {
    if (b.data) d.update(b.data);
    else d.zeros(b.length);
  }
  return d.digest();
}

/** The digest of a disk given as pieces in order: bytes, or a count of zero bytes. */
export function digestOfPieces(pieces: Iterable<Buffer | number>): string {
  const d = new SparseDigest();
  for (const p of pieces) {
    if (typeof p === 'number') d.zeros(p);
    else d.update(p);
  }
  return d.digest();
}

/** The digest of bytes in memory. */
export function bufferDigest(data: Buffer): string {
  return digestOfPieces([data]);
}
