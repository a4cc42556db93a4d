import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
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
import { ByteReader, openDiskImage, openDiskImageStream, type DiskImage } from './formats';
import { MAX_DESCRIPTOR_BYTES, parseManifest, parseOvf, type ManifestEntry } from './formats/ovf';
import { TarReader } from './formats/tar';
import type { ExtentOptions, StoredBlock } from './formats/image';
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

/** A disk the envelope declares without a file: all zeros. */
function blankDisk(label: string, capacityBytes: number): DiskImage {
  return {
    path: label,
    format: 'raw',
    subformat: 'blank',
    capacityBytes,

    extents: async function* () {
      yield { offset: 0, length: capacityBytes, data: null };
    },
    close: async () => undefined,
  };
}

function checkDigest(
  file: string,
  expected: ManifestEntry,
  actual: Partial<Record<ManifestEntry['algorithm'], string>>,
  manifest: string,
): void {
  const got = actual[expected.algorithm];
  if (got === undefined)
    throw new RestoreError(
      FailureType.InvalidRequest,
      `manifest ${manifest}: ${file} was not read, so its ${expected.algorithm} cannot be checked`,
    );
  if (got !== expected.hex) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `manifest ${manifest}: ${file} has ${expected.algorithm.toUpperCase()} ${got}, but the manifest says ${expected.hex}; the file is damaged or was changed`,
    );
  }
}

async function hashFile(file: string, algorithm: string): Promise<string> {
  const reader = ByteReader.ofFile(file);
  const hash = reader.digest(algorithm);
  await reader.drain();
  return hash.digest('hex');
}

/**
 * Imports an OVF (descriptor, manifest and disk files in one folder). The manifest's digests, when there
 * is one, are checked before any disk is read.
 */
export async function importOvfRestorePoint(repoDir: string, ovfPath: string, opts: ImportOptions = {}): Promise<ImportResult> {
  const file = path.resolve(ovfPath);
  const stat = await fs.stat(file).catch(() => null);
  if (!stat?.isFile()) throw new RestoreError(FailureType.InvalidRequest, `OVF descriptor ${file} not found`);
  if (stat.size > MAX_DESCRIPTOR_BYTES)
    throw new RestoreError(FailureType.InvalidRequest, `OVF descriptor ${file} is ${stat.size} bytes, more than ${MAX_DESCRIPTOR_BYTES}`);
  const text = await fs.readFile(file, 'utf8');
  const envelope = parseOvf(text, file);
  const dir = path.dirname(file);
  const manifestPath = path.join(dir, `${path.basename(file, path.extname(file))}.mf`);
  const manifestText = await fs.readFile(manifestPath, 'utf8').catch(() => null);
  if (manifestText !== null) {
    const manifest = parseManifest(manifestText, manifestPath);
    for (const [name, entry] of manifest) {
      const target = path.resolve(dir, name);
      if (path.dirname(target) !== dir)
        throw new RestoreError(FailureType.InvalidRequest, `manifest ${manifestPath}: '${name}' is not a file next to it`);
      const exists = await fs.stat(target).then(
        (s) => s.isFile(),
        () => false,
      );
      if (!exists)
        throw new RestoreError(FailureType.InvalidRequest, `manifest ${manifestPath}: ${name} is listed but not found in ${dir}`);
      checkDigest(name, entry, { [entry.algorithm]: await hashFile(target, entry.algorithm) }, manifestPath);
    }
  }
  return importVm(
    repoDir,
    {
      vm: envelope.vm,
      openDisk: (index) => {
        const disk = envelope.disks[index];
        return disk.href === null
          ? Promise.resolve(blankDisk(`${file} disk ${index}`, disk.capacityBytes))
          : openDiskImage(path.join(dir, disk.href));
      },
    },
    opts,
  );
}

/**
 * Imports an OVA in one pass: the OVF descriptor first (as the OVF specification requires), then the
 * manifest and the disk files in References order, each disk streamed straight into the repository while
 * its digests are computed; the manifest is checked before the restore point is saved.
 */
export async function importOvaRestorePoint(repoDir: string, ovaPath: string, opts: ImportOptions = {}): Promise<ImportResult> {
  const archive = path.resolve(ovaPath);
  const stat = await fs.stat(archive).catch(() => null);
  if (!stat?.isFile()) throw new RestoreError(FailureType.InvalidRequest, `OVA ${archive} not found`);
  const fail = (what: string) => new RestoreError(FailureType.InvalidRequest, `OVA ${archive}: ${what}`);
  const tar = new TarReader(ByteReader.ofFile(archive), archive);
  const first = await tar.next();
  if (!first || !first.name.toLowerCase().endsWith('.ovf'))
    throw fail(`the first member must be the OVF descriptor (found ${first ? `'${first.name}'` : 'nothing'})`);
  if (first.size > MAX_DESCRIPTOR_BYTES) throw fail(`descriptor ${first.name} is ${first.size} bytes, more than ${MAX_DESCRIPTOR_BYTES}`);
  const ovfBytes = await first.body.readExact(first.size);
  if (!ovfBytes) throw fail(`descriptor ${first.name} is truncated`);
  const envelope = parseOvf(ovfBytes.toString('utf8'), `${archive}:${first.name}`);
  const digests = new Map<string, Partial<Record<ManifestEntry['algorithm'], string>>>();
  digests.set(first.name, {
    sha1: createHash('sha1').update(ovfBytes).digest('hex'),
    sha256: createHash('sha256').update(ovfBytes).digest('hex'),
    sha512: createHash('sha512').update(ovfBytes).digest('hex'),
  });
  const manifestName = `${first.name.replace(/\.ovf$/i, '')}.mf`;
  let manifest: Map<string, ManifestEntry> | null = null;
  const referenced = new Set(envelope.disks.map((d) => d.href).filter((h): h is string => h !== null));

  /** Reads members up to `want` (or the end), taking in the manifest and skipping certificates on the way. */
  const advance = async (want: string | null) => {
    for (;;) {
      const member = await tar.next();
      if (!member) {
        if (want) throw fail(`member '${want}' is missing (the disks must follow the descriptor in References order)`);
        return null;
      }
      if (member.name === want) return member;
      if (member.name === manifestName) {
        const body = await member.body.readExact(Math.min(member.size, MAX_DESCRIPTOR_BYTES));
        if (!body) throw fail(`manifest ${member.name} is truncated`);
        manifest = parseManifest(body.toString('utf8'), `${archive}:${member.name}`);
        continue;
      }
      if (referenced.has(member.name) && !digests.has(member.name)) {
        throw fail(`member '${member.name}' comes before '${want}'; the disks must be in References order`);
      }
      // Certificates and files no disk refers to are read past, and digested in case the manifest lists them.
      const sha1 = member.body.digest('sha1');
      const sha256 = member.body.digest('sha256');
      await member.body.drain();
      digests.set(member.name, { sha1: sha1.digest('hex'), sha256: sha256.digest('hex') });
    }
  };

  // Disks are read in the order their files appear in References, which is the order of the archive.
  const order = envelope.disks
    .map((d) => d.index)
    .sort((a, b) => {
      const rank = (i: number) => (envelope.disks[i].href === null ? -1 : envelope.files.indexOf(envelope.disks[i].href!));
      return rank(a) - rank(b);
    });
  return importVm(
    repoDir,
    {
      vm: envelope.vm,
      diskOrder: order,
      openDisk: async (index) => {
        const disk = envelope.disks[index];
        if (disk.href === null) return blankDisk(`${archive} disk ${index}`, disk.capacityBytes);
        if (digests.has(disk.href)) throw fail(`disk ${index} uses file '${disk.href}', which an earlier disk already read`);
        const member = await advance(disk.href);
        const sha1 = member!.body.digest('sha1');
        const sha256 = member!.body.digest('sha256');
        const sha512 = member!.body.digest('sha512');
        const label = `${archive}:${disk.href}`;
        const image = await openDiskImageStream(member!.body, label, member!.size);
        let complete = false;
        return {
          ...image,
          extents: (from?: number, to?: number, extentOpts?: ExtentOptions) => {
            const extents = image.extents(from, to, extentOpts);
            return (async function* () {
              yield* extents;
              complete = true;
            })();
          },
          close: async () => {
            // After a failed read the import fails anyway; the rest of the archive is not worth reading.
            if (!complete) return;
            if (!(await member!.body.drain())) throw fail(`member '${disk.href}' is truncated`);
            digests.set(disk.href!, { sha1: sha1.digest('hex'), sha256: sha256.digest('hex'), sha512: sha512.digest('hex') });
            await image.close();
          },
        };
      },
      beforeSave: async () => {
        await advance(null);
        const checked = manifest as Map<string, ManifestEntry> | null;
        if (!checked) return;
        for (const [name, entry] of checked) {
          const got = digests.get(name);
          if (!got) throw fail(`manifest lists '${name}', which the archive does not hold`);
          checkDigest(name, entry, got, `${archive}:${manifestName}`);
        }
      },
    },
    opts,
  );
}

async function fileExists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}
