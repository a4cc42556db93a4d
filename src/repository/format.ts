import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { FailureType, RestoreError } from '../domain/errors';
import type { VmConfig } from '../domain/vm';

export const FORMAT_VERSION = 1;
export const DEFAULT_BLOCK_SIZE = 1024 * 1024;
export const SECTOR_SIZE = 512;
export const MAX_BLOCK_SIZE = 64 * 1024 * 1024;

/** Block map of one disk: blocks[i] is the sha256 hex of block i, or null for an all-zero block. */
export interface RestorePointDisk {
  index: number;
  capacityBytes: number;
  blocks: (string | null)[];
}

export interface RestorePoint {
  formatVersion: typeof FORMAT_VERSION;
  id: string;
  /** ISO 8601 timestamp. */
  createdAt: string;
  /** Previous restore point of the same VM; its chunks are shared, not copied. */
  parentId: string | null;
  vm: VmConfig;
  blockSize: number;
  disks: RestorePointDisk[];
}

export interface RestorePointSummary {
  id: string;
  createdAt: string;
  vmName: string;
  parentId: string | null;
  diskCount: number;
  /** Sum of disk capacities. */
  capacityBytes: number;
  /** Bytes in non-zero blocks, as a restore has to write them. */
  nonZeroBytes: number;
  /** Bytes of the distinct chunks this restore point references (shared chunks counted once). */
  storedBytes: number;
}

const CHUNK_HASH = /^[0-9a-f]{64}$/;
const RESTORE_POINT_ID = /^rp-\d{14}-[0-9a-f]{6}$/;

export const restorePointsDir = (repoDir: string): string => path.join(repoDir, 'restore-points');
export const chunksDir = (repoDir: string): string => path.join(repoDir, 'chunks');
export const restorePointPath = (repoDir: string, id: string): string => path.join(restorePointsDir(repoDir), `${id}.json`);
export const chunkPath = (repoDir: string, hash: string): string => path.join(chunksDir(repoDir), hash.slice(0, 2), hash);

export function isChunkHash(value: unknown): value is string {
  return typeof value === 'string' && CHUNK_HASH.test(value);
}

export function isRestorePointId(value: string): boolean {
  return RESTORE_POINT_ID.test(value);
}

/** rp-<yyyymmddHHMMss UTC>-<6 hex>: sorts by creation second, random tail keeps ids unique. */
export function newRestorePointId(at: Date): string {
  const stamp = at.toISOString().replace(/[-:T]/g, '').slice(0, 14);
  return `rp-${stamp}-${randomBytes(3).toString('hex')}`;
}

export function blockCount(capacityBytes: number, blockSize: number): number {
  return Math.ceil(capacityBytes / blockSize);
}

export function blockLength(disk: RestorePointDisk, blockSize: number, blockIndex: number): number {
  return Math.min(blockSize, disk.capacityBytes - blockIndex * blockSize);
}

export function findDisk(restorePoint: RestorePoint, diskIndex: number): RestorePointDisk {
  const disk = restorePoint.disks.find((d) => d.index === diskIndex);
  if (!disk) {
    const known = restorePoint.disks.map((d) => d.index).join(', ') || 'none';
    throw new RestoreError(
      FailureType.InvalidRequest,
      `restore point ${restorePoint.id} VM '${restorePoint.vm.name}' has no disk ${diskIndex} (disks: ${known})`,
    );
  }
  return disk;
}

/**
 * The one failure of a block whose chunk is missing or does not match its hash, locally or through the data
 * mover: not retryable, and it names the VM, disk and offset.
 */
export function badChunkError(rp: RestorePoint, diskIndex: number, offset: number, hash: string, what: string): RestoreError {
  const where = `restore point ${rp.id} VM '${rp.vm.name}' disk ${diskIndex} at offset ${offset}`;
  return new RestoreError(FailureType.RepositoryCorrupt, `${where}: chunk ${hash} ${what}`);
}

/** Newest first: createdAt, then id, both descending. */
export function compareNewestFirst(a: { createdAt: string; id: string }, b: { createdAt: string; id: string }): number {
  if (a.createdAt !== b.createdAt) return a.createdAt < b.createdAt ? 1 : -1;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isPositiveInt = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 0;

/**
 * Checks a parsed restore point file before anything trusts it: block hashes become file paths and
 * block counts drive reads, so a damaged file must fail here, not halfway through a restore.
 */
export function validateRestorePoint(raw: unknown, file: string, expectedId?: string): RestorePoint {
  const fail = (what: string): never => {
    throw new RestoreError(FailureType.RepositoryCorrupt, `restore point file ${file} is damaged: ${what}`);
  };
  if (!isRecord(raw)) return fail('not a JSON object');
  if (raw.formatVersion !== FORMAT_VERSION) {
    return fail(`formatVersion ${JSON.stringify(raw.formatVersion)} is not supported (expected ${FORMAT_VERSION})`);
  }
  if (typeof raw.id !== 'string' || !isRestorePointId(raw.id)) return fail(`id ${JSON.stringify(raw.id)} is invalid`);
  if (expectedId !== undefined && raw.id !== expectedId) return fail(`id '${raw.id}' does not match the file name`);
  if (typeof raw.createdAt !== 'string' || Number.isNaN(Date.parse(raw.createdAt))) {
    return fail(`createdAt ${JSON.stringify(raw.createdAt)} is not a timestamp`);
  }
  if (raw.parentId !== null && (typeof raw.parentId !== 'string' || !isRestorePointId(raw.parentId))) {
    return fail(`parentId ${JSON.stringify(raw.parentId)} is invalid`);
  }
  const vm = raw.vm;
  if (!isRecord(vm) || typeof vm.name !== 'string' || !Array.isArray(vm.disks)) {
    return fail('vm is missing its name or disks');
  }
  const blockSize = raw.blockSize;
  if (!isPositiveInt(blockSize) || blockSize % SECTOR_SIZE !== 0) return fail(`blockSize ${JSON.stringify(blockSize)} is invalid`);
  if (!Array.isArray(raw.disks)) return fail('disks is not an array');
  for (const [i, disk] of (raw.disks as unknown[]).entries()) {
    if (!isRecord(disk)) return fail(`disks[${i}] is not an object`);
    if (!Number.isSafeInteger(disk.index) || (disk.index as number) < 0) return fail(`disks[${i}].index is invalid`);
    const capacity = disk.capacityBytes;
    if (!isPositiveInt(capacity) || capacity % SECTOR_SIZE !== 0) {
      return fail(`disks[${i}].capacityBytes ${JSON.stringify(capacity)} is invalid`);
    }
    const expectedBlocks = blockCount(capacity, blockSize);
    if (!Array.isArray(disk.blocks) || disk.blocks.length !== expectedBlocks) {
      return fail(`disks[${i}].blocks does not have ${expectedBlocks} entries`);
    }
    for (const [b, block] of (disk.blocks as unknown[]).entries()) {
      if (block !== null && !isChunkHash(block)) {
        return fail(`disks[${i}].blocks[${b}] ${JSON.stringify(block)} is not a sha256 hex digest`);
      }
    }
  }
  return raw as unknown as RestorePoint;
}
