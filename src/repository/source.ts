import type { RestorePoint, RestorePointSummary } from './format';
import { readDiskBlocks, type DiskBlock, type ReadDiskBlocksOptions } from './reader';
import { getRestorePoint, listRestorePoints } from './restore-points';

/**
 * Where restores read restore points and disk blocks from: the local directory, or the repository host's
 * data mover over HTTPS (src/repository/remote). Whichever it is, every block a reader yields has been
 * checked against its sha256 in this process.
 */
export interface RepositorySource {
  /** A directory or an https:// URL, for messages. */
  readonly location: string;
  listRestorePoints(): Promise<RestorePointSummary[]>;
  /** By id or by a prefix that matches exactly one id. */
  getRestorePoint(idOrPrefix: string): Promise<RestorePoint>;
  /** A disk's blocks in offset order from `opts.fromOffset`, with the contract of `readDiskBlocks`. */
  readDiskBlocks(restorePoint: RestorePoint, diskIndex: number, opts?: ReadDiskBlocksOptions): AsyncIterable<DiskBlock>;
}

export function localRepository(repoDir: string): RepositorySource {
  return {
    location: repoDir,
    listRestorePoints: () => listRestorePoints(repoDir),
    getRestorePoint: (idOrPrefix) => getRestorePoint(repoDir, idOrPrefix),
    readDiskBlocks: (rp, diskIndex, opts) => readDiskBlocks(repoDir, rp, diskIndex, opts),
  };
}
