/**
 * The import's CPU work on worker threads: inflating batches of compressed grains and hashing blocks.
 * On the main thread, zlib's per-chunk callbacks, the buffers they allocate, the copies that join grains
 * into blocks and sha256 took most of the import's time while it also had to read, parse and write.
 * Inflated batches come back in a SharedArrayBuffer, so hashing them on a worker copies nothing.
 * A batch may also be stored by the worker that inflated it (zero check, sha256, chunk write and
 * fdatasync with synchronous calls): on a loaded machine every hand-off between threads waits for a
 * core, and a chunk written from the main thread took seven of them (hash, stat, open, write, sync,
 * close, rename).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import os from 'node:os';
import * as path from 'node:path';
import { WorkerPool, type PoolReply } from '../worker-pool';
import * as zlib from 'node:zlib';

export interface StoredBlock {
  blockIndex: number;
  hash: string | null;
  /** False when a chunk of that hash was already there (or another writer stored it first). */
  written: boolean;
  /** Inside the worker only: a new chunk in `temp`, not yet synced, `fd` open; `replace` a damaged one. */
  unsynced?: { temp: string; fd: number; replace: boolean };
}

const { createHash } = crypto;
/** New chunks a worker holds written but not yet synced; past it, it waits before taking the next batch to store. */
const UNSYNCED_LIMIT = 96;

// The functions below are sent as source text; a transpiler that keeps function names calls __name in them.
const WORKER_SOURCE = `
const __name = (fn) => fn;
const { parentPort } = require('node:worker_threads');
const crypto = require('node:crypto');
const { createHash } = crypto;
const fs = require('node:fs');
const path = require('node:path');
const zlib = require('node:zlib');
${inflateInto.toString()}
${readRange.toString()}
${storeBlocks.toString()}
${finishStored.toString()}
// Chunks written but not yet synced and named (bounded, so fds and the pool's queue stay bounded), and their hashes,
// so that a block equal to one still being synced is not written again.
const UNSYNCED_LIMIT = ${UNSYNCED_LIMIT};
const pendingNames = new Set();
let unsynced = 0;
const belowLimit = [];
let chain = Promise.resolve();
parentPort.on('message', (m) => {
  chain = chain.then(() => handle(m));
});
async function handle(m) {
  try {
    if (m.kind === 'sha256') {
      const view = new Uint8Array(m.buffer, m.offset, m.length);
      parentPort.postMessage({ id: m.id, digest: createHash('sha256').update(view).digest('hex') });
      return;
    }
    if (m.store) while (unsynced >= UNSYNCED_LIMIT) await new Promise((resolve) => belowLimit.push(resolve));
    const out = m.out || new SharedArrayBuffer(m.outputBytes);
    if (m.kind === 'read') {
      const filled = readRange(fs, m.file, m.fileOffset, new Uint8Array(out, 0, m.outputBytes));
      if (filled < m.outputBytes) {
        parentPort.postMessage({ id: m.id, short: filled });
        storedNothing(m);
        return;
      }
    } else {
      const failed = inflateInto(zlib, { ...m, input: new Uint8Array(m.input, m.inputOffset, m.inputLength) }, new Uint8Array(out, 0, m.outputBytes));
      if (failed) {
        parentPort.postMessage({ id: m.id, failed });
        storedNothing(m);
        return;
      }
    }
    if (!m.store) {
      parentPort.postMessage({ id: m.id, out });
      return;
    }
    // Written, not yet synced: the buffer goes back at once; the syncs and names follow on the libuv pool while this
    // worker takes the next batch, and their outcome is a second reply.
    const stored = storeBlocks({ crypto, fs, path, pending: pendingNames }, m.store, new Uint8Array(out, 0, m.outputBytes));
    const count = stored.filter((b) => b.unsynced).length;
    unsynced += count;
    parentPort.postMessage({ id: m.id, out, stored: stored.map((b) => ({ blockIndex: b.blockIndex, hash: b.hash, written: false })) });
    finishStored(fs, stored, pendingNames)
      .then(
        (done) => parentPort.postMessage({ id: m.syncId, stored: done }),
        (err) => parentPort.postMessage({ id: m.syncId, error: String((err && err.message) || err) }),
      )
      .finally(() => {
        unsynced -= count;
        while (unsynced < UNSYNCED_LIMIT && belowLimit.length > 0) belowLimit.shift()();
      });
  } catch (err) {
    parentPort.postMessage({ id: m.id, error: String((err && err.message) || err) });
    storedNothing(m);
  }
}
// A storing job always gets its second reply; one that stored nothing gets it at once.
function storedNothing(m) {
  if (m.syncId) parentPort.postMessage({ id: m.syncId, stored: [] });
}
`;

/** Grains to inflate, their deflate streams back to back in `input`. */
export interface InflateBatch {
  /** Read by a worker while the batch is in flight: the caller must not change it until the promise settles. */
  input: Uint8Array;
  /** Compressed bytes of each grain, in order. */
  sizes: number[];
  /** Bytes each grain contributes to the output (a grain at the end of the disk may be cut short). */
  lengths: number[];
  /** Most a grain may inflate to; more is an error (a deflate bomb). */
  grainBytes: number;
  /** Raw deflate (qcow2) or with a zlib header (VMDK). */
  raw: boolean;
}

export interface InflateFailure {
  /** Which grain of the batch. */
  index: number;
  message: string;
}

/** The first grain of a batch that does not inflate, and why. */
export class InflateError extends Error {
  constructor(readonly failure: InflateFailure) {
    super(failure.message);
  }
}

/**
 * Inflates every grain of the batch into `out` at the sum of the lengths before it; bytes a grain does not
 * fill are zeroed (`out` may be a reused buffer). Runs inside the workers (from its source text) and on the calling thread without them,
 * so it uses nothing but its arguments.
 */
function inflateInto(
  z: typeof zlib,
  batch: Pick<InflateBatch, 'input' | 'sizes' | 'lengths' | 'grainBytes' | 'raw'>,
  out: Uint8Array,
): InflateFailure | null {
  // One output chunk larger than a grain: zlib then hands back a single buffer, nothing joined.
  const opts = { maxOutputLength: batch.grainBytes, finishFlush: z.constants.Z_SYNC_FLUSH, chunkSize: batch.grainBytes + 1024 };
  let inAt = 0;
  let outAt = 0;
  for (let i = 0; i < batch.sizes.length; i++) {
    const src = batch.input.subarray(inAt, inAt + batch.sizes[i]);
    let grain: Uint8Array;
    try {
      grain = batch.raw ? z.inflateRawSync(src, opts) : z.inflateSync(src, opts);
    } catch (err) {
      return { index: i, message: `does not inflate: ${(err as Error).message}` };
    }
    if (grain.length > batch.grainBytes) {
      return { index: i, message: `inflates to ${grain.length} bytes, more than the ${batch.grainBytes} it holds` };
    }
    const take = Math.min(grain.length, batch.lengths[i]);
    out.set(take === grain.length ? grain : grain.subarray(0, take), outAt);
    if (take < batch.lengths[i]) out.fill(0, outAt + take, outAt + batch.lengths[i]);
    inAt += batch.sizes[i];
    outAt += batch.lengths[i];
  }
  return null;
}

/**
 * Reads `out.length` bytes of `file` from `fileOffset` into `out`; returns how many it got (fewer: the file
 * ended early). Source-stringified like inflateInto.
 */
function readRange(f: typeof fs, file: string, fileOffset: number, out: Uint8Array): number {
  const fd = f.openSync(file, 'r');
  try {
    let filled = 0;
    while (filled < out.length) {
      const n = f.readSync(fd, out, filled, out.length - filled, fileOffset + filled);
      if (n === 0) break;
      filled += n;
    }
    return filled;
  } finally {
    f.closeSync(fd);
  }
}

/** Where the worker stores the whole blocks of a batch: the repository, its block size, the batch's disk offset. */
export interface StoreTarget {
  repoDir: string;
  blockSize: number;
  /** Disk offset of the batch's first byte. */
  offset: number;
  capacityBytes: number;
}

/**
 * Stores every whole block of `data` (the disk from `target.offset`): zero blocks are only reported, the
 * others hashed and, unless a chunk of that hash is there, written to a temp file left open for
 * finishStored to sync and move into place.
 * Like inflateInto, it runs from its source text in the workers, so it uses nothing but its arguments.
 */
function storeBlocks(
  mods: { crypto: typeof crypto; fs: typeof fs; path: typeof path; pending: Set<string> },
  target: StoreTarget,
  data: Uint8Array,
): StoredBlock[] {
  const { crypto: c, fs: f, path: p } = mods;
  const ZEROS = Buffer.alloc(Math.min(target.blockSize, 1024 * 1024));
  const out: StoredBlock[] = [];
  const end = target.offset + data.length;
  let index = Math.ceil(target.offset / target.blockSize);
  for (; ; index++) {
    const start = index * target.blockSize;
    const length = Math.min(target.blockSize, target.capacityBytes - start);
    if (length <= 0 || start + length > end) break;
    const block = data.subarray(start - target.offset, start - target.offset + length);
    // Zero test by memcmp against a zero buffer, 1 MiB at a time (a scan in script is several times slower,
    // and a flat or raw image brings its holes as zeros to look at).
    let zero = true;
    const bytes = Buffer.from(block.buffer, block.byteOffset, length);
    for (let at = 0; zero && at < length; at += ZEROS.length) {
      const n = Math.min(ZEROS.length, length - at);
      zero = bytes.compare(ZEROS, 0, n, at, at + n) === 0;
    }
    if (zero) {
      out.push({ blockIndex: index, hash: null, written: false });
      continue;
    }
    const hash = c.createHash('sha256').update(block).digest('hex');
    if (mods.pending.has(hash)) {
      // Being synced by this thread for an earlier batch: the same chunk, taking its name there.
      out.push({ blockIndex: index, hash, written: false });
      continue;
    }
    const dir = p.join(target.repoDir, 'chunks', hash.slice(0, 2));
    const final = p.join(dir, hash);
    let size = -1;
    try {
      size = f.statSync(final).size;
    } catch {
      // Not stored yet.
    }
    if (size === length) {
      out.push({ blockIndex: index, hash, written: false });
      continue;
    }
    f.mkdirSync(dir, { recursive: true });
    const temp = `${final}.tmp-${process.pid}-${c.randomBytes(4).toString('hex')}`;
    const fd = f.openSync(temp, 'wx');
    try {
      for (let at = 0; at < length; ) at += f.writeSync(fd, block, at, length - at, at);
    } catch (err) {
      f.closeSync(fd);
      f.rmSync(temp, { force: true });
      throw err;
    }
    mods.pending.add(hash);
    out.push({ blockIndex: index, hash, written: false, unsynced: { temp, fd, replace: size >= 0 } });
  }
  return out;
}

/**
 * Makes the new chunks of storeBlocks durable: fdatasync, close, then a hard link under the chunk's name (a
 * name already taken means another writer stored the same chunk first: `written` false), the temp removed.
 * A chunk of the wrong size found under the name is replaced by a rename. Source-stringified like storeBlocks.
 */
async function finishStored(f: typeof fs, blocks: StoredBlock[], pending: Set<string>): Promise<StoredBlock[]> {
  const call = (fn: (cb: (err: NodeJS.ErrnoException | null) => void) => void): Promise<void> =>
    new Promise((resolve, reject) => fn((err) => (err ? reject(err) : resolve())));
  const finish = async (b: StoredBlock): Promise<StoredBlock> => {
    const u = b.unsynced;
    if (!u) return b;
    const final = u.temp.slice(0, u.temp.lastIndexOf('.tmp-'));
    try {
      try {
        await call((cb) => f.fdatasync(u.fd, cb));
      } finally {
        await call((cb) => f.close(u.fd, cb));
      }
      let written = true;
      if (u.replace) await call((cb) => f.rename(u.temp, final, cb));
      else {
        try {
          await call((cb) => f.link(u.temp, final, cb));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          written = false;
        }
      }
      return { blockIndex: b.blockIndex, hash: b.hash, written };
    } finally {
      pending.delete(b.hash!);
      await call((cb) => f.rm(u.temp, { force: true }, cb));
    }
  };
  return Promise.all(blocks.map(finish));
}

interface Reply extends PoolReply {
  out?: SharedArrayBuffer;
  digest?: string;
  stored?: StoredBlock[];
  failed?: InflateFailure;
  /** A read that found the file shorter: the bytes it got. */
  short?: number;
}

export class ImportWorkers {
  private readonly pool: WorkerPool<Reply> | null;

  /** `size` 0 does the work on the calling thread (one core: workers would only add hand-off cost). */
  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 0) throw new Error(`import worker count must be an integer >= 0, got ${size}`);
    // The least busy worker takes each batch: grains of random data inflate many times faster than text.
    this.pool = size > 0 ? new WorkerPool<Reply>('import', WORKER_SOURCE, size) : null;
  }

  private send(message: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<Reply> {
    return this.post(message, transfer, false).reply;
  }

  /** Posts to the least busy worker; `storing` also asks for the second reply (see the worker's handle()). */
  private post(
    message: Record<string, unknown>,
    transfer: ArrayBuffer[],
    storing: boolean,
  ): { reply: Promise<Reply>; synced?: Promise<Reply> } {
    const [reply, synced] = this.pool!.post(message, transfer, storing ? ['id', 'syncId'] : ['id']);
    return { reply, synced };
  }

  /** The stored blocks of a storing job: as written (names pending), and once synced and named. */
  private async stored(posted: {
    reply: Promise<Reply>;
    synced?: Promise<Reply>;
  }): Promise<{ reply: Reply; synced: Promise<StoredBlock[]> }> {
    const synced = posted.synced!.then((r) => r.stored!);
    // Awaited by the caller's caller; a failure must not go unhandled before that.
    synced.catch(() => undefined);
    return { reply: await posted.reply, synced };
  }

  /**
   * The batch's grains inflated into one buffer of the sum of `lengths`: the start of `into` when given (a
   * Buffer over a SharedArrayBuffer, to reuse its memory), else a new SharedArrayBuffer. Rejects with an
   * InflateError naming the first grain that fails. A worker reads `input` in place when it lives in a
   * SharedArrayBuffer, otherwise a copy.
   */
  async inflate(batch: InflateBatch, into?: Buffer): Promise<Buffer> {
    return (await this.inflateAndStore(batch, into)).data;
  }

  /**
   * inflate(), and with `store` every whole block of the output hashed and stored in the repository by the
   * same worker; `stored` lists them (their chunks are durable, the directory entries not yet: see
   * ChunkWriter.noteWritten).
   */
  async inflateAndStore(
    batch: InflateBatch,
    into?: Buffer,
    store?: StoreTarget,
  ): Promise<{ data: Buffer; stored?: StoredBlock[]; synced?: Promise<StoredBlock[]> }> {
    const outputBytes = batch.lengths.reduce((sum, n) => sum + n, 0);
    if (into && (!(into.buffer instanceof SharedArrayBuffer) || into.byteOffset !== 0 || into.buffer.byteLength < outputBytes)) {
      throw new Error(`inflate output must be a SharedArrayBuffer of at least ${outputBytes} bytes`);
    }
    if (this.size === 0) {
      const out = into ? into.subarray(0, outputBytes) : Buffer.alloc(outputBytes);
      const failed = inflateInto(zlib, batch, out);
      if (failed) throw new InflateError(failed);
      if (!store) return { data: out };
      const stored = await finishStored(fs, storeBlocks({ crypto, fs, path, pending: mainPending }, store, out), mainPending);
      return { data: out, stored, synced: Promise.resolve(stored) };
    }
    const { sizes, lengths, grainBytes, raw } = batch;
    const input = batch.input.buffer instanceof SharedArrayBuffer ? batch.input : new Uint8Array(batch.input);
    const message = {
      kind: 'inflate',
      input: input.buffer,
      inputOffset: input.byteOffset,
      inputLength: input.byteLength,
      out: into?.buffer,
      sizes,
      lengths,
      grainBytes,
      raw,
      outputBytes,
      store,
    };
    const transfer = input === batch.input ? [] : [input.buffer as ArrayBuffer];
    const posted = this.post(message, transfer, store !== undefined);
    const { reply, synced } = store ? await this.stored(posted) : { reply: await posted.reply, synced: undefined };
    if (reply.failed) throw new InflateError(reply.failed);
    return { data: Buffer.from(reply.out!, 0, outputBytes), stored: reply.stored, synced };
  }

  /**
   * `length` bytes of `file` from `fileOffset`, read by a worker into the start of `into` (a Buffer over a
   * SharedArrayBuffer, as for inflate) or a new SharedArrayBuffer, with every whole block stored as by
   * inflateAndStore when `store` is given. Needs workers (size > 0). `short` is set when the file ended first.
   */
  async readAndStore(
    file: string,
    fileOffset: number,
    length: number,
    into?: Buffer,
    store?: StoreTarget,
  ): Promise<{ data: Buffer; stored?: StoredBlock[]; synced?: Promise<StoredBlock[]>; short?: number }> {
    if (this.size === 0) throw new Error('readAndStore needs import workers');
    if (into && (!(into.buffer instanceof SharedArrayBuffer) || into.byteOffset !== 0 || into.buffer.byteLength < length)) {
      throw new Error(`read output must be a SharedArrayBuffer of at least ${length} bytes`);
    }
    const posted = this.post({ kind: 'read', file, fileOffset, outputBytes: length, out: into?.buffer, store }, [], store !== undefined);
    const { reply, synced } = store ? await this.stored(posted) : { reply: await posted.reply, synced: undefined };
    if (reply.short !== undefined) return { data: Buffer.alloc(0), short: reply.short };
    return { data: Buffer.from(reply.out!, 0, length), stored: reply.stored, synced };
  }

  /** sha256 hex of `data`; read in place when it lives in a SharedArrayBuffer, otherwise from a copy. */
  async sha256(data: Uint8Array): Promise<string> {
    if (this.size === 0) return createHash('sha256').update(data).digest('hex');
    const view = data.buffer instanceof SharedArrayBuffer ? data : new Uint8Array(data);
    const reply = await this.send(
      { kind: 'sha256', buffer: view.buffer, offset: view.byteOffset, length: view.byteLength },
      view === data ? [] : [view.buffer as ArrayBuffer],
    );
    return reply.digest!;
  }

  async close(): Promise<void> {
    await this.pool?.close();
  }
}

let shared: ImportWorkers | undefined;
/** Chunks being synced by the calling thread when there are no workers (see storeBlocks). */
const mainPending = new Set<string>();

/** One worker per core, none on a single core. */
export function defaultImportWorkers(): number {
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return cores > 1 ? Math.min(4, cores) : 0;
}

/** The process-wide workers, started on first use; VMRESTORE_IMPORT_WORKERS overrides their number. */
export function sharedImportWorkers(): ImportWorkers {
  const configured = process.env.VMRESTORE_IMPORT_WORKERS;
  shared ??= new ImportWorkers(configured !== undefined && configured !== '' ? Number(configured) : defaultImportWorkers());
  return shared;
}
