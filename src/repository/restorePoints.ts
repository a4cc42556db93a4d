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
  return validateRestorePoint(raw, file, id);
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
