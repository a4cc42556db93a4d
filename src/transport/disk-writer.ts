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

/**
 * Writes a disk's blocks at their offsets into a file-backed target. The target is sized to the
 * disk's capacity first, as a datastore does when it allocates a virtual disk.
 */
export async function writeDiskToFile(opts: FileWriteOptions): Promise<WriteProgress> {
  const fh = await open(opts.targetPath, 'r+');
  const limiter = new ByteRateLimiter(opts.throttleBytesPerSecond ?? 0);
  const progress: WriteProgress = { checkpointOffset: 0, bytesWritten: 0, bytesSkippedZero: 0 };
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
        await writeFully(fh, block.data, block.offset);
        progress.bytesWritten += block.length;
        sinceCheckpoint += block.length;
      } else if (opts.targetIsZeroed) {
        progress.bytesSkippedZero += block.length;
      } else {
        for (let off = 0; off < block.length; off += ZERO.length) {
          const n = Math.min(ZERO.length, block.length - off);
          await writeFully(fh, ZERO.subarray(0, n), block.offset + off);
        }
        progress.bytesWritten += block.length;
        sinceCheckpoint += block.length;
      }
      if (sinceCheckpoint >= opts.checkpointBytes) {
        await fh.datasync();
        progress.checkpointOffset = block.offset + block.length;
        sinceCheckpoint = 0;
        opts.onCheckpoint?.({ ...progress });
      } else if (!block.data) {
        // Skipped zeros need no flush, so the checkpoint can move past them for free.
        if (sinceCheckpoint === 0) progress.checkpointOffset = block.offset + block.length;
      }
    }
    await fh.datasync();
    progress.checkpointOffset = opts.capacityBytes;
    opts.onCheckpoint?.({ ...progress });
    return progress;
  } finally {
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
