import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { FailureType, RestoreError } from '../domain/errors';
import { ChunkWriter, sha256Hex } from './chunks';
import { blockCount } from './format';
import { isErrno, syncDirectory } from './files';

/**
 * A disk being read into the repository block by block, with its block map staged on disk so that a
 * retried read resumes where the last durable checkpoint left it:
 *   staging/<import id>/disk-<n>.json   { offset, blocks, stats, done }
 *   staging/<import id>/import.json     { importId, workflowId }  (whose staging it is, for the sweeper)
 * Blocks equal to the parent restore point's block at the same index are recognised by their digest
 * and not written again; chunks already in the repository are shared as by every import.
 */

/** Chunk writes in flight; each holds one block buffer. */
const WRITES_IN_FLIGHT = 16;

export interface StagedDiskStats {
  bytesRead: number;
  chunksWritten: number;
  bytesWritten: number;
  chunksReused: number;
  zeroBlocks: number;
  /** Blocks taken from the parent without reading (changed-block tracking said unchanged). */
  blocksKept: number;
}

export interface StagedDiskState {
  capacityBytes: number;
  blockSize: number;
  /** Every block below this offset is in `blocks` and its chunk is durable. */
  offset: number;
  blocks: (string | null)[];
  stats: StagedDiskStats;
  done: boolean;
  /** Whatever the caller wants back on a retry after the disk was finished. */
  result?: unknown;
}

const emptyStats = (): StagedDiskStats => ({
  bytesRead: 0,
  chunksWritten: 0,
  bytesWritten: 0,
  chunksReused: 0,
  zeroBlocks: 0,
  blocksKept: 0,
});

export const stagingDir = (repoDir: string, importId: string): string =>
  path.join(repoDir, 'staging', importId.replace(/[^A-Za-z0-9._@-]/g, '_'));

export const stagedDiskPath = (repoDir: string, importId: string, diskIndex: number): string =>
  path.join(stagingDir(repoDir, importId), `disk-${diskIndex}.json`);

export async function readStagedDisk(repoDir: string, importId: string, diskIndex: number): Promise<StagedDiskState | null> {
  const file = stagedDiskPath(repoDir, importId, diskIndex);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return null;
    throw err;
  }
  try {
    return JSON.parse(text) as StagedDiskState;
  } catch (err) {
    throw new RestoreError(FailureType.RepositoryCorrupt, `staged block map ${file} is damaged: ${(err as Error).message}`);
  }
}

/** Who a staging folder belongs to; written before its first block map. */
export interface StagingOwner {
  importId: string;
  workflowId: string;
}

const ownerPath = (repoDir: string, importId: string): string => path.join(stagingDir(repoDir, importId), 'import.json');

/** Records the import's workflow in its staging folder (creating it), so a sweep can tell whether it is dead. */
export async function recordStagingOwner(repoDir: string, owner: StagingOwner): Promise<void> {
  const file = ownerPath(repoDir, owner.importId);
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file, JSON.stringify(owner));
}

/** Every staging folder in the repository with its owner; a folder without import.json names only its import. */
export async function listStaging(repoDir: string): Promise<Array<{ dir: string; owner: StagingOwner | null; name: string }>> {
  const root = path.join(repoDir, 'staging');
  let names: string[];
  try {
    names = await fs.readdir(root);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw err;
  }
  const out: Array<{ dir: string; owner: StagingOwner | null; name: string }> = [];
  for (const name of names.sort()) {
    const dir = path.join(root, name);
    let owner: StagingOwner | null = null;
    try {
      const parsed = JSON.parse(await fs.readFile(path.join(dir, 'import.json'), 'utf8')) as Partial<StagingOwner>;
      if (typeof parsed.importId === 'string' && typeof parsed.workflowId === 'string')
        owner = { importId: parsed.importId, workflowId: parsed.workflowId };
    } catch {
      // No (or a damaged) owner file: the folder name is the import id, which defaults to the workflow id.
    }
    out.push({ dir, owner, name });
  }
  return out;
}

export async function removeStaging(repoDir: string, importId: string): Promise<void> {
  await fs.rm(stagingDir(repoDir, importId), { recursive: true, force: true });
}

export class StagedDisk {
  private readonly writer: ChunkWriter;
  private readonly zeroBlock: Buffer;
  private readonly pending = new Map<string, Promise<void>>();
  private readonly failures: unknown[] = [];
  readonly state: StagedDiskState;

  private constructor(
    private readonly repoDir: string,
    private readonly importId: string,
    private readonly diskIndex: number,
    state: StagedDiskState,
    private readonly parentBlocks: (string | null)[] | null,
  ) {
    this.writer = new ChunkWriter(repoDir);
    this.zeroBlock = Buffer.alloc(state.blockSize);
    this.state = state;
  }

  /**
   * Opens the staged state of a disk (or starts it). The parent's block map is used only when it has
   * the same block count, i.e. the disk kept its size.
   */
  static async open(opts: {
    repoDir: string;
    importId: string;
    diskIndex: number;
    capacityBytes: number;
    blockSize: number;
    parentBlocks: (string | null)[] | null;
  }): Promise<StagedDisk> {
    const count = blockCount(opts.capacityBytes, opts.blockSize);
    const staged = await readStagedDisk(opts.repoDir, opts.importId, opts.diskIndex);
    const usable =
      staged && staged.capacityBytes === opts.capacityBytes && staged.blockSize === opts.blockSize && staged.blocks.length === count;
    const state: StagedDiskState = usable
      ? staged
      : {
          capacityBytes: opts.capacityBytes,
          blockSize: opts.blockSize,
          offset: 0,
          blocks: new Array<string | null>(count).fill(null),
          stats: emptyStats(),
          done: false,
        };
    const parent = opts.parentBlocks && opts.parentBlocks.length === count ? opts.parentBlocks : null;
    return new StagedDisk(opts.repoDir, opts.importId, opts.diskIndex, state, parent);
  }

  get hasParent(): boolean {
    return this.parentBlocks !== null;
  }

  blockLength(blockIndex: number): number {
    return Math.min(this.state.blockSize, this.state.capacityBytes - blockIndex * this.state.blockSize);
  }

  /** A block read from the source: a zero block is not stored; one equal to the parent's is not written again. */
  async take(blockIndex: number, data: Buffer): Promise<void> {
    const { stats, blocks } = this.state;
    stats.bytesRead += data.length;
    if (data.equals(data.length === this.zeroBlock.length ? this.zeroBlock : this.zeroBlock.subarray(0, data.length))) {
      blocks[blockIndex] = null;
      stats.zeroBlocks++;
      return;
    }
    const hash = sha256Hex(data);
    blocks[blockIndex] = hash;
    if (this.parentBlocks?.[blockIndex] === hash || this.pending.has(hash)) {
      stats.chunksReused++;
      return;
    }
    const write = (async () => {
      if (await this.writer.has(hash, data.length)) {
        stats.chunksReused++;
        return;
      }
      await this.writer.write(hash, data);
      stats.chunksWritten++;
      stats.bytesWritten += data.length;
    })();
    this.pending.set(hash, write);
    write.then(
      () => this.pending.delete(hash),
      (err: unknown) => {
        this.pending.delete(hash);
        this.failures.push(err);
      },
    );
    if (this.pending.size >= WRITES_IN_FLIGHT) await Promise.race(this.pending.values()).catch(() => undefined);
    if (this.failures.length > 0) throw this.failures[0];
  }

  /** A block the source reports unchanged since the parent: the parent's chunk (or zero) without a read. */
  keep(blockIndex: number): void {
    if (!this.parentBlocks) throw new Error('keep() needs a parent block map');
    const hash = this.parentBlocks[blockIndex];
    this.state.blocks[blockIndex] = hash;
    if (hash === null) this.state.stats.zeroBlocks++;
    else this.state.stats.chunksReused++;
    this.state.stats.blocksKept++;
  }

  /** Waits for the chunk writes in flight; the stats count every block taken once this returns. */
  async flush(): Promise<void> {
    await Promise.allSettled(this.pending.values());
    if (this.failures.length > 0) throw this.failures[0];
  }

  /** Waits for the chunk writes, makes them durable, then records `offset` (and `result` when done). */
  async checkpoint(offset: number, done = false, result?: unknown): Promise<void> {
    await this.flush();
    await this.writer.syncWrittenDirs();
    this.state.offset = offset;
    this.state.done = done;
    this.state.result = result;
    const file = stagedDiskPath(this.repoDir, this.importId, this.diskIndex);
    const dir = path.dirname(file);
    await fs.mkdir(dir, { recursive: true });
    const temp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
    const handle = await fs.open(temp, 'wx');
    try {
      await handle.writeFile(JSON.stringify(this.state));
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temp, file);
    await syncDirectory(dir);
  }
}

/**
 * Cuts a byte stream that starts at `fromOffset` into the disk's blocks, one fresh buffer per block
 * (the chunk writer holds on to it). Ends at `toOffset`; a stream that ends early is an error.
 */
export async function* blocksOf(
  stream: AsyncIterable<Buffer>,
  fromOffset: number,
  toOffset: number,
  blockSize: number,
  describe: string,
): AsyncGenerator<{ blockIndex: number; data: Buffer }> {
  if (fromOffset % blockSize !== 0) throw new Error(`blocksOf: offset ${fromOffset} is not on a block boundary`);
  let offset = fromOffset;
  let block: Buffer | null = null;
  let filled = 0;
  const next = () => Buffer.allocUnsafe(Math.min(blockSize, toOffset - offset));
  for await (const piece of stream) {
    let pos = 0;
    while (pos < piece.length) {
      if (offset >= toOffset) throw new RestoreError(FailureType.InvalidRequest, `${describe}: more bytes than the ${toOffset} expected`);
      block ??= next();
      const take = Math.min(piece.length - pos, block.length - filled);
      piece.copy(block, filled, pos, pos + take);
      filled += take;
      pos += take;
      if (filled === block.length) {
        const blockIndex = Math.floor(offset / blockSize);
        offset += block.length;
        const done = block;
        block = null;
        filled = 0;
        yield { blockIndex, data: done };
      }
    }
  }
  if (offset + filled !== toOffset) {
    throw new RestoreError(FailureType.InvalidRequest, `${describe}: ended after byte ${offset + filled}, expected ${toOffset}`);
  }
}
