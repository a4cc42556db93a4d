import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { chunkPath } from './format';
import { isErrno, syncDirectory } from './files';

export function sha256Hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export type ChunkReadResult =
  | { status: 'ok'; data: Buffer }
  | { status: 'missing' }
  | { status: 'corrupt'; reason: string; bytesRead: number };

/**
 * Reads a chunk and checks it against its name. The expected length comes from the block map, so a
 * truncated or padded file is caught from its size before it is read. `into` (at least that long) takes
 * the bytes instead of a new buffer; `verify: false` leaves the hash to the reader on the other side.
 */
export async function readChunk(
  repoDir: string,
  hash: string,
  expectedLength: number,
  opts: { into?: Buffer; verify?: boolean } = {},
): Promise<ChunkReadResult> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(chunkPath(repoDir, hash), 'r');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return { status: 'missing' };
    throw err;
  }
  try {
    const { size } = await handle.stat();
    if (size !== expectedLength) {
      return { status: 'corrupt', reason: `size ${size} bytes, expected ${expectedLength}`, bytesRead: 0 };
    }
    const data = opts.into ? opts.into.subarray(0, expectedLength) : Buffer.allocUnsafe(expectedLength);
    let filled = 0;
    while (filled < expectedLength) {
      const { bytesRead } = await handle.read(data, filled, expectedLength - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    if (filled !== expectedLength) {
      return {
        status: 'corrupt',
        reason: `file ended after ${filled} bytes, expected ${expectedLength}`,
        bytesRead: filled,
      };
    }
    if (opts.verify !== false && sha256Hex(data) !== hash) return { status: 'corrupt', reason: 'sha256 mismatch', bytesRead: filled };
    return { status: 'ok', data };
  } finally {
    await handle.close();
  }
}

/** Writes chunks into the store; remembers fan-out directories it has already created. */
export class ChunkWriter {
  private readonly knownDirs = new Set<string>();
  private readonly dirsWritten = new Set<string>();

  constructor(private readonly repoDir: string) {}

  /** True when a chunk of this hash and length is already stored, so the block can share it. */
  async has(hash: string, length: number): Promise<boolean> {
    try {
      const stat = await fs.stat(chunkPath(this.repoDir, hash));
      // A wrong size means a damaged chunk: report absent so the import rewrites it.
      return stat.isFile() && stat.size === length;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false;
      throw err;
    }
  }

  /** Temp file, fdatasync, rename: a crash leaves either the whole chunk or none under its name. */
  async write(hash: string, data: Buffer): Promise<void> {
    const finalPath = chunkPath(this.repoDir, hash);
    const dir = path.dirname(finalPath);
    if (!this.knownDirs.has(dir)) {
      await fs.mkdir(dir, { recursive: true });
      this.knownDirs.add(dir);
    }
    const tempPath = `${finalPath}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    const handle = await fs.open(tempPath, 'wx');
    try {
      let written = 0;
      while (written < data.length) {
        const { bytesWritten } = await handle.write(data, written, data.length - written, written);
        written += bytesWritten;
      }
      await handle.datasync();
    } catch (err) {
      await handle.close().catch(() => undefined);
      await fs.rm(tempPath, { force: true });
      throw err;
    }
    await handle.close();
    try {
      await fs.rename(tempPath, finalPath);
      this.dirsWritten.add(dir);
    } catch (err) {
      await fs.rm(tempPath, { force: true });
      throw err;
    }
  }

  /** A chunk another thread wrote and synced under this store: its directory entry is made durable with ours. */
  noteWritten(hash: string): void {
    this.dirsWritten.add(path.dirname(chunkPath(this.repoDir, hash)));
  }

  /** Makes the renames of all chunks written so far durable, before a restore point refers to them. */
  async syncWrittenDirs(): Promise<void> {
    for (const dir of this.dirsWritten) await syncDirectory(dir);
    this.dirsWritten.clear();
  }
}
