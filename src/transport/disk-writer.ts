import { open, stat } from 'node:fs/promises';
import type { DiskBlock } from '../repository';
import { ByteRateLimiter } from './throttle';

export interface WriteProgress {
  /** Everything below this offset is durably on the target (fsynced). */
  checkpointOffset: number;
  bytesWritten: number;
  bytesSkippedZero: number;
}

export interface FileWriteOptions {
  /** Local path of the target: the flat extent on an NFS mount or SAN volume, or a hot-added device. */
  targetPath: string;
  capacityBytes: number;
  blocks: AsyncIterable<DiskBlock>;
  /** Bytes between durable checkpoints (fsync + progress callback). */
  checkpointBytes: number;
  throttleBytesPerSecond?: number;
  /** The target reads zeros where nothing is written, so zero blocks are skipped (holes). */
  targetIsZeroed: boolean;
  signal?: AbortSignal;
  onCheckpoint?: (p: WriteProgress) => void;
}

const ZERO = Buffer.alloc(1024 * 1024);
/** Block writes in flight on the libuv pool: page-cache copies of one disk then use more than one core. */
const WRITES_IN_FLIGHT = 4;

/**
 * Writes a disk's blocks at their offsets into a file-backed target. The target is sized to the
 * disk's capacity first, as a datastore does when it allocates a virtual disk. Writes overlap (up to
 * WRITES_IN_FLIGHT), and so does each checkpoint's fdatasync with the writes after it: a checkpoint covers
 * the blocks taken before it started, once their writes are done and synced, so it claims nothing that is
 * not durable. A block's buffer goes back to its reader (release) once its write is done.
 */
export async function writeDiskToFile(opts: FileWriteOptions): Promise<WriteProgress> {
  const fh = await open(opts.targetPath, 'r+');
  const limiter = new ByteRateLimiter(opts.throttleBytesPerSecond ?? 0);
  const progress: WriteProgress = { checkpointOffset: 0, bytesWritten: 0, bytesSkippedZero: 0 };
  const writes = new Set<Promise<void>>();
  let failure: { error: unknown } | null = null;
  let syncing: Promise<void> | null = null;
  const issue = (buf: Buffer, position: number, done?: () => void): void => {
    const write: Promise<void> = writeFully(fh, buf, position).then(
      () => {
        writes.delete(write);
        done?.();
      },
      (error: unknown) => {
        writes.delete(write);
        failure ??= { error };
      },
    );
    writes.add(write);
  };
  /** Waits until at most `max` writes are in flight; throws the first write failure. */
  const settle = async (max: number): Promise<void> => {
    while (writes.size > max) await Promise.race(writes);
    if (failure) throw failure.error;
  };
  /** Syncs the writes issued so far, then reports `upTo` as durable (with the counters as they were). */
  const checkpoint = (upTo: number): Promise<void> => {
    const before = [...writes];
    const reported: WriteProgress = { ...progress, checkpointOffset: upTo };
    const task = (async () => {
      await Promise.all(before);
      if (failure) throw failure.error;
      await fh.datasync();
      progress.checkpointOffset = upTo;
      opts.onCheckpoint?.(reported);
    })();
    // Awaited before the next checkpoint or at the end; a failure must not go unhandled meanwhile.
    task.catch(() => undefined);
    return task;
  };
  try {
    const st = await stat(opts.targetPath);
    // A block device (a hot-added disk) has its size; only a file is grown.
    if (st.isFile() && st.size < opts.capacityBytes) await fh.truncate(opts.capacityBytes);
    let sinceCheckpoint = 0;
    let first = true;
    for await (const block of opts.blocks) {
      if (first) {
        progress.checkpointOffset = block.offset;
        first = false;
      }
      opts.signal?.throwIfAborted();
      if (block.data) {
        await limiter.take(block.length, opts.signal);
        await settle(WRITES_IN_FLIGHT - 1);
        issue(block.data, block.offset, block.release);
        progress.bytesWritten += block.length;
        sinceCheckpoint += block.length;
      } else if (opts.targetIsZeroed) {
        progress.bytesSkippedZero += block.length;
      } else {
        for (let off = 0; off < block.length; off += ZERO.length) {
          await settle(WRITES_IN_FLIGHT - 1);
          issue(ZERO.subarray(0, Math.min(ZERO.length, block.length - off)), block.offset + off);
        }
        progress.bytesWritten += block.length;
        sinceCheckpoint += block.length;
      }
      if (sinceCheckpoint >= opts.checkpointBytes) {
        // One checkpoint at a time: the next waits for the one before, so they are reported in order.
        await syncing;
        syncing = checkpoint(block.offset + block.length);
        sinceCheckpoint = 0;
      }
    }
    await settle(0);
    await syncing;
    await fh.datasync();
    progress.checkpointOffset = opts.capacityBytes;
    opts.onCheckpoint?.({ ...progress });
    return progress;
  } finally {
    await Promise.allSettled([...writes, syncing]);
    await fh.close();
  }
}

async function writeFully(fh: import('node:fs/promises').FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    done += bytesWritten;
  }
}
