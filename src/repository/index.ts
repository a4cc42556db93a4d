/**
 * Backup repository on a local directory:
 *   chunks/<2 hex>/<sha256 hex>      block contents, content-addressed, shared by all restore points
 *   restore-points/<id>.json         VM config + per-disk block map (null = all-zero block, not stored)
 * Workers on other hosts read it through the repository host's data mover (src/repository/remote).
 */
export { DEFAULT_BLOCK_SIZE, type RestorePoint, type RestorePointDisk, type RestorePointSummary } from './format';
export { importOvaRestorePoint, importOvfRestorePoint } from './import-ovf';
export {
  importRestorePoint,
  importVm,
  type ImportSource,
  type ImportOptions,
  type ImportProgress,
  type ImportResult,
  type ImportStats,
} from './importer';
export {
  DEFAULT_READ_CONCURRENCY,
  diskLayout,
  readDiskBlocks,
  type DiskBlock,
  type DiskLayout,
  type ReadDiskBlocksOptions,
} from './reader';
export { getRestorePoint, listRestorePoints } from './restore-points';
export { localRepository, type RepositorySource } from './source';
export { openRepository } from './open';
export { verifyRepository, type VerifyOptions, type VerifyProblem, type VerifyResult } from './verify';
