import * as fs from 'node:fs/promises';
import { FailureType, RestoreError } from '../domain/errors';
import { ChunkWriter, sha256Hex } from './chunks';
import {
  DEFAULT_BLOCK_SIZE,
  FORMAT_VERSION,
  MAX_BLOCK_SIZE,
  SECTOR_SIZE,
  blockCount,
  newRestorePointId,
  restorePointPath,
  type RestorePoint,
  type RestorePointDisk,
} from './format';
import { loadAllRestorePoints, saveRestorePoint } from './restorePoints';
import { readVmJson } from './vmJson';

export interface ImportProgress {
  diskIndex: number;
  diskBytesRead: number;
  diskCapacityBytes: number;
  /** Over all disks of the VM. */
  bytesRead: number;
  totalBytes: number;
}

export interface ImportOptions {
  /** Multiple of 512; default 1 MiB. */
  blockSize?: number;
  onProgress?: (progress: ImportProgress) => void;
}

export interface ImportStats {
  disks: number;
  bytesRead: number;
  chunksWritten: number;
  bytesWritten: number;
  /** Non-zero blocks whose chunk was already stored (by a parent, another VM, or an identical block). */
  chunksReused: number;
  zeroBlocks: number;
}

export interface ImportResult {
  restorePointId: string;
  parentId: string | null;
  stats: ImportStats;
}

/** Large sequential reads: several blocks per read, never less than one block. */
const READ_SEGMENT_BYTES = 16 * 1024 * 1024;
/** Chunk writes in flight; each holds a block-sized slice of a read segment. */
const WRITES_IN_FLIGHT = 16;

/**
 * Imports raw disk images described by a vm.json as a new restore point. Chunks are content-addressed,
 * so an import of a VM that already has restore points writes only the blocks that changed.
 */
export async function importRestorePoint(repoDir: string, vmJsonPath: string, opts: ImportOptions = {}): Promise<ImportResult> {
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
  if (!Number.isSafeInteger(blockSize) || blockSize < SECTOR_SIZE || blockSize > MAX_BLOCK_SIZE || blockSize % SECTOR_SIZE !== 0) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `blockSize ${blockSize} must be a multiple of ${SECTOR_SIZE} from ${SECTOR_SIZE} to ${MAX_BLOCK_SIZE}`,
    );
  }
  const source = await readVmJson(vmJsonPath);
  const existing = await loadAllRestorePoints(repoDir);
  const parent = existing.find((rp) => rp.vm.name === source.vm.name) ?? null;

  const writer = new ChunkWriter(repoDir);
  const stats: ImportStats = {
    disks: 0,
    bytesRead: 0,
    chunksWritten: 0,
    bytesWritten: 0,
    chunksReused: 0,
    zeroBlocks: 0,
  };
  const totalBytes = source.vm.disks.reduce((sum, d) => sum + d.capacityBytes, 0);
  const disks: RestorePointDisk[] = [];
  for (const vmDisk of source.vm.disks) {
    const blocks = await importDisk(writer, source.diskImagePaths[vmDisk.index], vmDisk.capacityBytes, blockSize, stats, (diskBytesRead) =>
      opts.onProgress?.({
        diskIndex: vmDisk.index,
        diskBytesRead,
        diskCapacityBytes: vmDisk.capacityBytes,
        bytesRead: stats.bytesRead,
        totalBytes,
      }),
    );
    disks.push({ index: vmDisk.index, capacityBytes: vmDisk.capacityBytes, blocks });
    stats.disks++;
  }
  await writer.syncWrittenDirs();

  const createdAt = new Date();
  let id = newRestorePointId(createdAt);
  while (await fileExists(restorePointPath(repoDir, id))) id = newRestorePointId(createdAt);
  const restorePoint: RestorePoint = {
    formatVersion: FORMAT_VERSION,
    id,
    createdAt: createdAt.toISOString(),
    parentId: parent?.id ?? null,
    vm: source.vm,
    blockSize,
    disks,
  };
  await saveRestorePoint(repoDir, restorePoint);
  return { restorePointId: id, parentId: restorePoint.parentId, stats };
}

async function importDisk(
  writer: ChunkWriter,
  imagePath: string,
  capacityBytes: number,
  blockSize: number,
  stats: ImportStats,
  onSegment: (diskBytesRead: number) => void,
): Promise<(string | null)[]> {
  const zeroBlock = Buffer.alloc(blockSize);
  const segmentBytes = Math.max(1, Math.floor(READ_SEGMENT_BYTES / blockSize)) * blockSize;
  const blocks: (string | null)[] = new Array<string | null>(blockCount(capacityBytes, blockSize)).fill(null);
  // Identical blocks whose chunk is still being written share that write; later ones find the file.
  const pendingChunks = new Map<string, Promise<void>>();
  const writeFailures: unknown[] = [];
  let diskBytesRead = 0;

  const handle = await fs.open(imagePath, 'r');
  try {
    const readSegment = async (offset: number): Promise<Buffer> => {
      const length = Math.min(segmentBytes, capacityBytes - offset);
      const segment = Buffer.allocUnsafe(length);
      let filled = 0;
      while (filled < length) {
        const { bytesRead } = await handle.read(segment, filled, length - filled, offset + filled);
        if (bytesRead === 0) {
          throw new RestoreError(
            FailureType.InvalidRequest,
            `disk image ${imagePath} ended at ${offset + filled} bytes while importing ${capacityBytes}; was it changed during the import?`,
          );
        }
        filled += bytesRead;
      }
      return segment;
    };

    const storeBlock = (hash: string, data: Buffer): void => {
      if (pendingChunks.has(hash)) {
        stats.chunksReused++;
        return;
      }
      const pending = (async () => {
        if (await writer.has(hash, data.length)) {
          stats.chunksReused++;
          return;
        }
        await writer.write(hash, data);
        stats.chunksWritten++;
        stats.bytesWritten += data.length;
      })();
      pendingChunks.set(hash, pending);
      pending.then(
        () => pendingChunks.delete(hash),
        (error: unknown) => {
          pendingChunks.delete(hash);
          writeFailures.push(error);
        },
      );
    };

    // Double buffering: the next segment is read while this one is hashed and written.
    let nextRead: Promise<Buffer> | null = readSegment(0);
    for (let segmentOffset = 0; nextRead; segmentOffset += segmentBytes) {
      const segment: Buffer = await nextRead;
      const following = segmentOffset + segmentBytes;
      nextRead = following < capacityBytes ? readSegment(following) : null;
      // A failed read-ahead is reported by the await above on the next round, never as unhandled.
      nextRead?.catch(() => undefined);

      for (let within = 0; within < segment.length; within += blockSize) {
        const data = segment.subarray(within, Math.min(within + blockSize, segment.length));
        const blockIndex = (segmentOffset + within) / blockSize;
        if (data.equals(data.length === blockSize ? zeroBlock : zeroBlock.subarray(0, data.length))) {
          stats.zeroBlocks++;
          continue;
        }
        const hash = sha256Hex(data);
        blocks[blockIndex] = hash;
        storeBlock(hash, data);
        if (pendingChunks.size >= WRITES_IN_FLIGHT) await Promise.race(pendingChunks.values()).catch(() => undefined);
        if (writeFailures.length > 0) throw writeFailures[0];
      }
      diskBytesRead += segment.length;
      stats.bytesRead += segment.length;
      onSegment(diskBytesRead);
    }
    await Promise.allSettled(pendingChunks.values());
    if (writeFailures.length > 0) throw writeFailures[0];
  } finally {
    await handle.close();
  }
  return blocks;
}

async function fileExists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}
