import * as fs from 'node:fs/promises';
import { FailureType, RestoreError } from '../domain/errors';
import { ChunkWriter } from './chunks';
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
import { loadAllRestorePoints, saveRestorePoint } from './restore-points';
import { readVmJson } from './vm-json';
import { openDiskImage, type DiskImage } from './formats';
import type { StoredBlock } from './workers';
import type { VmConfig } from '../domain/vm';
import { sharedImportWorkers } from './workers';

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

/** Blocks being hashed or written; each holds a block-sized slice of what the image reader returned. */
const BLOCKS_IN_FLIGHT = 16;

/** A VM to import: its config, and each disk's image opened on demand, in disk order. */
export interface ImportSource {
  vm: VmConfig;
  openDisk(index: number): Promise<DiskImage>;
  /** Disk indexes in the order their images must be read (an OVA holds them in References order). */
  diskOrder?: number[];
  /** Runs after every disk was read and before the restore point is saved (e.g. manifest checks). */
  beforeSave?(): Promise<void>;
}

/**
 * Imports the disk images described by a vm.json (any supported format) as a new restore point. Chunks are
 * content-addressed, so an import of a VM that already has restore points writes only the blocks that changed.
 */
export async function importRestorePoint(repoDir: string, vmJsonPath: string, opts: ImportOptions = {}): Promise<ImportResult> {
  checkBlockSize(opts.blockSize ?? DEFAULT_BLOCK_SIZE);
  const source = await readVmJson(vmJsonPath);
  return importVm(
    repoDir,
    {
      vm: source.vm,
      openDisk: (index) => openDiskImage(source.diskImagePaths[index], { expectedFormat: source.diskFormats[index] }),
    },
    opts,
  );
}

function checkBlockSize(blockSize: number): void {
  if (!Number.isSafeInteger(blockSize) || blockSize < SECTOR_SIZE || blockSize > MAX_BLOCK_SIZE || blockSize % SECTOR_SIZE !== 0) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `blockSize ${blockSize} must be a multiple of ${SECTOR_SIZE} from ${SECTOR_SIZE} to ${MAX_BLOCK_SIZE}`,
    );
  }
}

/** Imports a VM whose disks come from any image source (vm.json, OVF, OVA) as a new restore point. */
export async function importVm(repoDir: string, source: ImportSource, opts: ImportOptions = {}): Promise<ImportResult> {
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
  checkBlockSize(blockSize);
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
  const order = source.diskOrder ?? source.vm.disks.map((d) => d.index);
  for (const vmDisk of order.map((i) => source.vm.disks.find((d) => d.index === i)!)) {
    const image = await source.openDisk(vmDisk.index);
    let blocks: (string | null)[];
    try {
      if (image.capacityBytes !== vmDisk.capacityBytes) {
        throw new RestoreError(
          FailureType.InvalidRequest,
          `disk ${vmDisk.index} image ${image.path} holds ${image.capacityBytes} bytes, but the VM config says ${vmDisk.capacityBytes}`,
        );
      }
      blocks = await importDisk(repoDir, writer, image, blockSize, stats, (diskBytesRead) =>
        opts.onProgress?.({
          diskIndex: vmDisk.index,
          diskBytesRead,
          diskCapacityBytes: vmDisk.capacityBytes,
          bytesRead: stats.bytesRead,
          totalBytes,
        }),
      );
    } finally {
      await image.close();
    }
    disks.push({ index: vmDisk.index, capacityBytes: vmDisk.capacityBytes, blocks });
    stats.disks++;
  }
  await source.beforeSave?.();
  disks.sort((a, b) => a.index - b.index);
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

/**
 * Cuts an image's extents into blocks: zero extents become zero blocks without a byte looked at, data
 * blocks are hashed and stored unless all zeros. Whole blocks inside one extent are never copied.
 */
async function importDisk(
  repoDir: string,
  writer: ChunkWriter,
  image: DiskImage,
  blockSize: number,
  stats: ImportStats,
  onProgress: (diskBytesRead: number) => void,
): Promise<(string | null)[]> {
  const capacityBytes = image.capacityBytes;
  const workers = sharedImportWorkers();
  const zeroBlock = Buffer.alloc(blockSize);
  const blocks: (string | null)[] = new Array<string | null>(blockCount(capacityBytes, blockSize)).fill(null);
  // Identical blocks whose chunk is still being written share that write; later ones find the file.
  const pendingChunks = new Map<string, Promise<void>>();
  const writeFailures: unknown[] = [];

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

  // Blocks are hashed on the workers and then stored; a fixed number in flight bounds the memory held.
  const blocksInFlight = new Set<Promise<void>>();
  /** `done` runs once nothing refers to `data` any more. */
  const takeBlock = async (blockIndex: number, data: Buffer | null, done?: () => void): Promise<void> => {
    if (data === null || data.equals(data.length === blockSize ? zeroBlock : zeroBlock.subarray(0, data.length))) {
      stats.zeroBlocks++;
      done?.();
      return;
    }
    const job = workers.sha256(data).then((hash) => {
      blocks[blockIndex] = hash;
      storeBlock(hash, data);
      return pendingChunks.get(hash);
    });
    const tracked: Promise<void> = job.then(
      () => {
        blocksInFlight.delete(tracked);
        done?.();
      },
      (error: unknown) => {
        blocksInFlight.delete(tracked);
        writeFailures.push(error);
      },
    );
    blocksInFlight.add(tracked);
    if (blocksInFlight.size >= BLOCKS_IN_FLIGHT) await Promise.race(blocksInFlight);
    if (writeFailures.length > 0) throw writeFailures[0];
  };

  const syncs: Promise<void>[] = [];
  // A block that spans extents is assembled here; a fresh buffer for each, since writes hold on to it.
  let partial: Buffer | null = null;
  let partialHasData = false;
  let expected = 0;
  // Readers that inflate on the workers store whole blocks there too; the rest is hashed and stored here.
  for await (const extent of image.extents(0, capacityBytes, { store: { repoDir, blockSize } })) {
    if (extent.offset !== expected || extent.length <= 0 || extent.offset + extent.length > capacityBytes) {
      throw new RestoreError(
        FailureType.InvalidRequest,
        `disk image ${image.path}: reader returned ${extent.offset}+${extent.length} where ${expected} was next (capacity ${capacityBytes})`,
      );
    }
    // The reader may reuse the extent's memory once every block cut from it is hashed and stored.
    let holds = 1;
    const letGo = () => {
      if (--holds === 0) extent.release?.();
    };
    const stored = new Map<number, StoredBlock>();
    for (const b of extent.stored ?? []) stored.set(b.blockIndex, b);
    // Chunks the reader stored are counted once synced and named; the disk is done only after all of them.
    const synced = extent.synced;
    if (synced) {
      const counted = synced.then((blocks) => {
        for (const b of blocks) {
          if (b.hash === null) continue;
          if (b.written) {
            writer.noteWritten(b.hash);
            stats.chunksWritten++;
            stats.bytesWritten += Math.min(blockSize, capacityBytes - b.blockIndex * blockSize);
          } else stats.chunksReused++;
        }
      });
      counted.catch((error: unknown) => writeFailures.push(error));
      syncs.push(counted);
    }
    for (let pos = 0; pos < extent.length; ) {
      const at = extent.offset + pos;
      const blockIndex = Math.floor(at / blockSize);
      const blockStart = blockIndex * blockSize;
      const blockLen = Math.min(blockSize, capacityBytes - blockStart);
      const take = Math.min(extent.length - pos, blockStart + blockLen - at);
      const done = at === blockStart && take === blockLen ? stored.get(blockIndex) : undefined;
      if (done) {
        blocks[blockIndex] = done.hash;
        if (done.hash === null) stats.zeroBlocks++;
        else if (synced) {
          // Counted above, once synced.
        } else if (done.written) {
          writer.noteWritten(done.hash);
          stats.chunksWritten++;
          stats.bytesWritten += blockLen;
        } else stats.chunksReused++;
      } else if (at === blockStart && take === blockLen) {
        holds++;
        await takeBlock(blockIndex, extent.data && extent.data.subarray(pos, pos + take), letGo);
      } else {
        partial ??= Buffer.allocUnsafe(blockLen);
        const within = at - blockStart;
        if (extent.data) {
          extent.data.copy(partial, within, pos, pos + take);
          partialHasData = true;
        } else partial.fill(0, within, within + take);
        if (within + take === blockLen) {
          await takeBlock(blockIndex, partialHasData ? partial : null);
          partial = null;
          partialHasData = false;
        }
      }
      pos += take;
    }
    letGo();
    expected = extent.offset + extent.length;
    stats.bytesRead += extent.length;
    onProgress(expected);
  }
  if (expected !== capacityBytes) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `disk image ${image.path} ended at ${expected} bytes of ${capacityBytes}; was it changed during the import?`,
    );
  }
  await Promise.all(blocksInFlight);
  await Promise.allSettled(pendingChunks.values());
  await Promise.allSettled(syncs);
  if (writeFailures.length > 0) throw writeFailures[0];
  return blocks;
}

async function fileExists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}
