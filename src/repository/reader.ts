import { FailureType, RestoreError } from '../domain/errors';
import { sharedChunkReadWorkers } from './chunk-readers';
import { badChunkError, blockLength, chunkPath, findDisk, type RestorePoint } from './format';

/** One block of a disk; data null means the block is all zeros and nothing was read. */
export interface DiskBlock {
  offset: number;
  length: number;
  data: Buffer | null;
  /**
   * Hands `data`'s memory back to the reader for a later block; the consumer must not touch `data` after
   * calling it. Optional for both sides: a consumer that never calls it keeps its buffers.
   */
  release?: () => void;
}

export interface ReadDiskBlocksOptions {
  /** Resume point; rounded down to a block boundary. */
  fromOffset?: number;
  /** Chunk reads in flight, which is also the number of block buffers held ahead of the consumer. */
  concurrency?: number;
  signal?: AbortSignal;
}

export interface DiskLayout {
  capacityBytes: number;
  blockSize: number;
  blockCount: number;
  nonZeroBytes: number;
  nonZeroBlocks: number;
}

export const DEFAULT_READ_CONCURRENCY = 4;

/** Sizes a restore needs for progress totals: what the disk holds and how much of it is not zeros. */
export function diskLayout(restorePoint: RestorePoint, diskIndex: number): DiskLayout {
  const disk = findDisk(restorePoint, diskIndex);
  let nonZeroBytes = 0;
  let nonZeroBlocks = 0;
  disk.blocks.forEach((hash, i) => {
    if (hash === null) return;
    nonZeroBlocks++;
    nonZeroBytes += blockLength(disk, restorePoint.blockSize, i);
  });
  return {
    capacityBytes: disk.capacityBytes,
    blockSize: restorePoint.blockSize,
    blockCount: disk.blocks.length,
    nonZeroBytes,
    nonZeroBlocks,
  };
}

/** The disk a read names and its options, checked the same way for every source (local or the data mover). */
export function checkedReadOptions(
  rp: RestorePoint,
  diskIndex: number,
  opts: ReadDiskBlocksOptions,
): { disk: ReturnType<typeof findDisk>; fromOffset: number; concurrency: number } {
  const disk = findDisk(rp, diskIndex);
  const fromOffset = opts.fromOffset ?? 0;
  const concurrency = opts.concurrency ?? DEFAULT_READ_CONCURRENCY;
  if (!Number.isSafeInteger(fromOffset) || fromOffset < 0 || fromOffset > disk.capacityBytes) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `fromOffset ${fromOffset} is outside disk ${diskIndex} of restore point ${rp.id} (capacity ${disk.capacityBytes} bytes)`,
    );
  }
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
    throw new RestoreError(FailureType.InvalidRequest, `concurrency ${concurrency} must be a positive integer`);
  }
  return { disk, fromOffset, concurrency };
}

/**
 * Streams a disk of a restore point in offset order, every chunk verified against its hash. Reads run
 * ahead of the consumer by at most `concurrency` chunks, so memory stays bounded whatever the disk size.
 * Chunks are read and checked on the chunk read workers, into buffers over SharedArrayBuffers (checksum
 * workers downstream can read them in place). Each yielded buffer belongs to the consumer until it calls
 * the block's release(); only released buffers are reused.
 */
export async function* readDiskBlocks(
  repoDir: string,
  restorePoint: RestorePoint,
  diskIndex: number,
  opts: ReadDiskBlocksOptions = {},
): AsyncGenerator<DiskBlock, void, undefined> {
  const { disk, fromOffset, concurrency } = checkedReadOptions(restorePoint, diskIndex, opts);
  const { blockSize } = restorePoint;
  const { signal } = opts;
  const readers = sharedChunkReadWorkers();
  // Buffers the consumer released; at most one per read in flight plus one it holds are kept.
  const free: Buffer[] = [];
  const newSlot = (): Buffer => (readers.size > 0 ? Buffer.from(new SharedArrayBuffer(blockSize)) : Buffer.allocUnsafeSlow(blockSize));

  const readVerified = async (blockIndex: number, hash: string): Promise<Buffer> => {
    const offset = blockIndex * blockSize;
    const slot = free.pop() ?? newSlot();
    const data = slot.subarray(0, blockLength(disk, blockSize, blockIndex));
    const result = await readers.read(chunkPath(repoDir, hash), hash, data);
    if (result.status === 'ok') return data;
    const what = result.status === 'missing' ? `is missing (expected ${chunkPath(repoDir, hash)})` : `is corrupt (${result.reason})`;
    throw badChunkError(restorePoint, diskIndex, offset, hash, what);
  };

  const blockTotal = disk.blocks.length;
  // A resume offset at capacity means the disk is done, not "re-send the last partial block".
  const firstBlock = fromOffset === disk.capacityBytes ? blockTotal : Math.floor(fromOffset / blockSize);
  const inFlight = new Map<number, Promise<Buffer>>();
  let nextToSchedule = firstBlock;
  const scheduleReads = (): void => {
    while (inFlight.size < concurrency && nextToSchedule < blockTotal) {
      const hash = disk.blocks[nextToSchedule];
      if (hash !== null) {
        const read = readVerified(nextToSchedule, hash);
        // Read-ahead failures surface when their block's turn comes; ones never reached are dropped.
        read.catch(() => undefined);
        inFlight.set(nextToSchedule, read);
      }
      nextToSchedule++;
    }
  };

  for (let blockIndex = firstBlock; blockIndex < blockTotal; blockIndex++) {
    signal?.throwIfAborted();
    scheduleReads();
    const offset = blockIndex * blockSize;
    const length = blockLength(disk, blockSize, blockIndex);
    const read = inFlight.get(blockIndex);
    if (!read) {
      yield { offset, length, data: null };
      continue;
    }
    const data = await read;
    inFlight.delete(blockIndex);
    signal?.throwIfAborted();
    // Refill before handing the block over, so reads overlap with the consumer's writes.
    scheduleReads();
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      if (free.length <= concurrency) free.push(Buffer.from(data.buffer, data.byteOffset, blockSize));
    };
    yield { offset, length, data, release };
  }
}
