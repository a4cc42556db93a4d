import { FailureType, RestoreError } from '../domain/errors';
import { readChunk } from './chunks';
import { blockLength, type RestorePoint } from './format';
import { getRestorePoint, loadAllRestorePoints } from './restore-points';

export interface VerifyOptions {
  /** Only this restore point (id or unique prefix); default all. */
  restorePointId?: string;
  /** Chunk reads in flight; default 4. */
  concurrency?: number;
}

export interface VerifyProblem {
  restorePointId: string;
  vmName: string;
  diskIndex: number;
  offset: number;
  chunk: string;
  problem: 'missing' | 'corrupt';
}

export interface VerifyResult {
  ok: boolean;
  restorePointsChecked: number;
  /** Distinct chunks read; a chunk shared by many blocks is read once. */
  chunksChecked: number;
  bytesChecked: number;
  /** One entry per block that refers to a bad chunk, ordered by restore point, disk and offset. */
  problems: VerifyProblem[];
}

const DEFAULT_VERIFY_CONCURRENCY = 4;

/** Reads and hashes every chunk the selected restore points refer to. */
export async function verifyRepository(repoDir: string, opts: VerifyOptions = {}): Promise<VerifyResult> {
  const concurrency = opts.concurrency ?? DEFAULT_VERIFY_CONCURRENCY;
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
    throw new RestoreError(FailureType.InvalidRequest, `concurrency ${concurrency} must be a positive integer`);
  }
  const restorePoints: RestorePoint[] =
    opts.restorePointId !== undefined ? [await getRestorePoint(repoDir, opts.restorePointId)] : await loadAllRestorePoints(repoDir);

  // Distinct chunks first, so shared chunks are read once and memory grows with chunks, not blocks.
  const chunkLengths = new Map<string, number>();
  for (const rp of restorePoints) {
    for (const disk of rp.disks) {
      disk.blocks.forEach((hash, i) => {
        if (hash !== null && !chunkLengths.has(hash)) chunkLengths.set(hash, blockLength(disk, rp.blockSize, i));
      });
    }
  }

  const badChunks = new Map<string, 'missing' | 'corrupt'>();
  let chunksChecked = 0;
  let bytesChecked = 0;
  const queue = chunkLengths.entries();
  const worker = async (): Promise<void> => {
    for (let next = queue.next(); !next.done; next = queue.next()) {
      const [hash, length] = next.value;
      const result = await readChunk(repoDir, hash, length);
      chunksChecked++;
      if (result.status === 'ok') {
        bytesChecked += result.data.length;
      } else {
        badChunks.set(hash, result.status);
        if (result.status === 'corrupt') bytesChecked += result.bytesRead;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(1, chunkLengths.size)) }, worker));

  const problems: VerifyProblem[] = [];
  if (badChunks.size > 0) {
    const ordered = restorePoints.slice().sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    for (const rp of ordered) {
      for (const disk of rp.disks.slice().sort((a, b) => a.index - b.index)) {
        disk.blocks.forEach((hash, i) => {
          const problem = hash === null ? undefined : badChunks.get(hash);
          if (problem === undefined || hash === null) return;
          problems.push({
            restorePointId: rp.id,
            vmName: rp.vm.name,
            diskIndex: disk.index,
            offset: i * rp.blockSize,
            chunk: hash,
            problem,
          });
        });
      }
    }
  }
  return {
    ok: problems.length === 0,
    restorePointsChecked: restorePoints.length,
    chunksChecked,
    bytesChecked,
    problems,
  };
}
