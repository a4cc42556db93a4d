import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { FailureType, RestoreError } from '../domain/errors';
import {
  blockLength,
  compareNewestFirst,
  restorePointPath,
  restorePointsDir,
  validateRestorePoint,
  type RestorePoint,
  type RestorePointSummary,
} from './format';
import { isErrno, syncDirectory } from './files';

const KNOWN_IDS_IN_MESSAGES = 5;

/** Ids of all restore points in the repository, oldest first; empty when the repository has none yet. */
async function listRestorePointIds(repoDir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await fs.readdir(restorePointsDir(repoDir));
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw err;
  }
  return names
    .filter((name) => name.endsWith('.json') && !name.startsWith('.'))
    .map((name) => name.slice(0, -'.json'.length))
    .sort();
}

async function loadRestorePoint(repoDir: string, id: string): Promise<RestorePoint> {
  const file = restorePointPath(repoDir, id);
  const text = await fs.readFile(file, 'utf8');
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new RestoreError(FailureType.RepositoryCorrupt, `restore point file ${file} is damaged: ${(err as Error).message}`);
  }
  return checkVmMatchesDisks(validateRestorePoint(raw, file, id), file);
}

const GUEST_OS = ['linux', 'windows'];
const FIRMWARE = ['bios', 'efi'];
const PROVISIONING = ['thin', 'thick'];

/**
 * The VM config and the block maps are two lists of the same disks; a restore sizes VMs, blobs and
 * transports from one and reads data through the other, so they must agree exactly (count, indexes
 * 0…n-1, capacities) before anything trusts either.
 */
export function checkVmMatchesDisks(rp: RestorePoint, file: string): RestorePoint {
  const fail = (what: string): never => {
    throw new RestoreError(FailureType.RepositoryCorrupt, `restore point file ${file} is damaged: ${what}`);
  };
  const vm = rp.vm as unknown as Record<string, unknown>;
  if (typeof vm.name !== 'string' || vm.name.trim() === '') fail('vm.name is empty');
  if (!GUEST_OS.includes(vm.guestOs as string)) fail(`vm.guestOs ${JSON.stringify(vm.guestOs)} is not one of ${GUEST_OS.join(', ')}`);
  if (!FIRMWARE.includes(vm.firmware as string)) fail(`vm.firmware ${JSON.stringify(vm.firmware)} is not one of ${FIRMWARE.join(', ')}`);
  if (!Number.isSafeInteger(vm.cpus) || (vm.cpus as number) < 1) fail(`vm.cpus ${JSON.stringify(vm.cpus)} is not a positive integer`);
  if (!Number.isSafeInteger(vm.memoryMiB) || (vm.memoryMiB as number) < 1) {
    fail(`vm.memoryMiB ${JSON.stringify(vm.memoryMiB)} is not a positive integer`);
  }
  if (!Array.isArray(vm.nics) || !vm.nics.every((n) => typeof (n as { network?: unknown })?.network === 'string')) {
    fail('vm.nics is not a list of NICs with a network name');
  }
  const vmDisks = rp.vm.disks;
  if (vmDisks.length === 0) fail('vm.disks is empty');
  if (vmDisks.length !== rp.disks.length) {
    fail(`vm.disks lists ${vmDisks.length} disks but the restore point holds block maps for ${rp.disks.length}`);
  }
  vmDisks.forEach((d, i) => {
    const where = `vm.disks[${i}]`;
    if (typeof d !== 'object' || d === null) return fail(`${where} is not an object`);
    if (d.index !== i) fail(`${where}.index ${JSON.stringify(d.index)} should be ${i} (indexes run 0…${vmDisks.length - 1})`);
    if (typeof d.label !== 'string') fail(`${where}.label is not a string`);
    if (!PROVISIONING.includes(d.provisioning)) fail(`${where}.provisioning ${JSON.stringify(d.provisioning)} is not thin or thick`);
    const data = rp.disks.filter((x) => x.index === i);
    if (data.length !== 1) fail(`disk ${i} has ${data.length} block maps (expected exactly one)`);
    if (data[0].capacityBytes !== d.capacityBytes) {
      fail(`${where}.capacityBytes ${JSON.stringify(d.capacityBytes)} differs from its block map's ${data[0].capacityBytes}`);
    }
  });
  return rp;
}

/** All restore points, newest first. */
export async function loadAllRestorePoints(repoDir: string): Promise<RestorePoint[]> {
  const ids = await listRestorePointIds(repoDir);
  const points = await Promise.all(ids.map((id) => loadRestorePoint(repoDir, id)));
  return points.sort(compareNewestFirst);
}

export function summarizeRestorePoint(rp: RestorePoint): RestorePointSummary {
  let capacityBytes = 0;
  let nonZeroBytes = 0;
  let storedBytes = 0;
  const seen = new Set<string>();
  for (const disk of rp.disks) {
    capacityBytes += disk.capacityBytes;
    disk.blocks.forEach((hash, i) => {
      if (hash === null) return;
      const length = blockLength(disk, rp.blockSize, i);
      nonZeroBytes += length;
      if (!seen.has(hash)) {
        seen.add(hash);
        storedBytes += length;
      }
    });
  }
  return {
    id: rp.id,
    createdAt: rp.createdAt,
    vmName: rp.vm.name,
    parentId: rp.parentId,
    diskCount: rp.disks.length,
    capacityBytes,
    nonZeroBytes,
    storedBytes,
  };
}

/** Summaries of all restore points in the repository, newest first. */
export async function listRestorePoints(repoDir: string): Promise<RestorePointSummary[]> {
  return (await loadAllRestorePoints(repoDir)).map(summarizeRestorePoint);
}

/** Loads a restore point by its id or by a prefix that matches exactly one id. */
export async function getRestorePoint(repoDir: string, idOrPrefix: string): Promise<RestorePoint> {
  const wanted = idOrPrefix.trim();
  if (wanted === '') {
    throw new RestoreError(FailureType.InvalidRequest, `restore point id is empty (repository ${path.resolve(repoDir)})`);
  }
  const ids = await listRestorePointIds(repoDir);
  if (ids.includes(wanted)) return loadRestorePoint(repoDir, wanted);
  const matches = ids.filter((id) => id.startsWith(wanted));
  if (matches.length === 1) return loadRestorePoint(repoDir, matches[0]);
  if (matches.length > 1) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `restore point prefix '${wanted}' is ambiguous in repository ${path.resolve(repoDir)}: ` +
        `matches ${describeIds(matches)}; give more characters of the id`,
    );
  }
  const known = ids.length === 0 ? 'the repository has no restore points' : `known: ${describeIds(ids.slice().reverse())}`;
  throw new RestoreError(
    FailureType.RestorePointNotFound,
    `restore point '${wanted}' not found in repository ${path.resolve(repoDir)} (${known})`,
  );
}

function describeIds(ids: string[]): string {
  const shown = ids.slice(0, KNOWN_IDS_IN_MESSAGES).join(', ');
  return ids.length > KNOWN_IDS_IN_MESSAGES ? `${shown}, … (${ids.length} in all)` : shown;
}

/** Temp file, fsync, rename, directory fsync: a restore point appears whole, after all of its chunks. */
export async function saveRestorePoint(repoDir: string, rp: RestorePoint): Promise<void> {
  const dir = restorePointsDir(repoDir);
  await fs.mkdir(dir, { recursive: true });
  const finalPath = restorePointPath(repoDir, rp.id);
  const tempPath = path.join(dir, `.${rp.id}.json.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const handle = await fs.open(tempPath, 'wx');
  try {
    await handle.writeFile(JSON.stringify(rp));
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.rename(tempPath, finalPath);
  await syncDirectory(dir);
}
