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
import { Worker } from 'node:worker_threads';
import * as zlib from 'node:zlib';
import type { StoredBlock } from './formats/image';

const { createHash } = crypto;

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
${storeBlocks.toString()}
${finishStored.toString()}
parentPort.on('message', (m) => {
  try {
    if (m.kind === 'sha256') {
      const view = new Uint8Array(m.buffer, m.offset, m.length);
      parentPort.postMessage({ id: m.id, digest: createHash('sha256').update(view).digest('hex') });
      return;
    }
    const out = m.out || new SharedArrayBuffer(m.outputBytes);
    const failed = inflateInto(zlib, { ...m, input: new Uint8Array(m.input, m.inputOffset, m.inputLength) }, new Uint8Array(out, 0, m.outputBytes));
    if (failed) {
      parentPort.postMessage({ id: m.id, failed });
      return;
    }
    if (!m.store) {
      parentPort.postMessage({ id: m.id, out });
      return;
    }
    // The syncs wait on the libuv pool while this worker inflates the next batch; the reply goes once they are done.
    finishStored(fs, storeBlocks({ crypto, fs, path }, m.store, new Uint8Array(out, 0, m.outputBytes))).then(
      (stored) => parentPort.postMessage({ id: m.id, out, stored }),
      (err) => parentPort.postMessage({ id: m.id, error: String((err && err.message) || err) }),
    );
  } catch (err) {
    parentPort.postMessage({ id: m.id, error: String((err && err.message) || err) });
  }
});
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
  mods: { crypto: typeof crypto; fs: typeof fs; path: typeof path },
  target: StoreTarget,
  data: Uint8Array,
): StoredBlock[] {
  const { crypto: c, fs: f, path: p } = mods;
  const out: StoredBlock[] = [];
  const end = target.offset + data.length;
  let index = Math.ceil(target.offset / target.blockSize);
  for (; ; index++) {
    const start = index * target.blockSize;
    const length = Math.min(target.blockSize, target.capacityBytes - start);
    if (length <= 0 || start + length > end) break;
    const block = data.subarray(start - target.offset, start - target.offset + length);
    // Zero test 8 bytes at a time over an aligned view; the tail (never with 512-byte blocks) byte by byte.
    let zero = true;
    const words = block.byteOffset % 8 === 0 ? new BigUint64Array(block.buffer, block.byteOffset, Math.floor(length / 8)) : null;
    if (words) {
      for (let i = 0; i < words.length; i++)
        if (words[i] !== 0n) {
          zero = false;
          break;
        }
    }
    for (let i = words ? words.length * 8 : 0; zero && i < length; i++) if (block[i] !== 0) zero = false;
    if (zero) {
      out.push({ blockIndex: index, hash: null, written: false });
      continue;
    }
    const hash = c.createHash('sha256').update(block).digest('hex');
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
    out.push({ blockIndex: index, hash, written: false, unsynced: { temp, fd, replace: size >= 0 } });
  }
  return out;
}

/**
 * Makes the new chunks of storeBlocks durable: fdatasync, close, then a hard link under the chunk's name (a
 * name already taken means another writer stored the same chunk first: `written` false), the temp removed.
 * A chunk of the wrong size found under the name is replaced by a rename. Source-stringified like storeBlocks.
 */
async function finishStored(f: typeof fs, blocks: StoredBlock[]): Promise<StoredBlock[]> {
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
      await call((cb) => f.rm(u.temp, { force: true }, cb));
    }
  };
  return Promise.all(blocks.map(finish));
}

interface Job {
  resolve: (reply: Reply) => void;
  reject: (err: Error) => void;
}

interface Reply {
  id: number;
  out?: SharedArrayBuffer;
  digest?: string;
  stored?: StoredBlock[];
  failed?: InflateFailure;
  error?: string;
}

interface PoolWorker {
  worker: Worker;
  pending: Map<number, Job>;
}

export class ImportWorkers {
  private readonly workers: PoolWorker[] = [];
  private nextId = 1;
  private closed = false;

  /** `size` 0 does the work on the calling thread (one core: workers would only add hand-off cost). */
  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 0) throw new Error(`import worker count must be an integer >= 0, got ${size}`);
  }

  private spawn(): PoolWorker {
    const worker = new Worker(WORKER_SOURCE, { eval: true });
    const pw: PoolWorker = { worker, pending: new Map() };
    worker.on('message', (m: Reply) => {
      const job = pw.pending.get(m.id);
      if (!job) return;
      pw.pending.delete(m.id);
      // Idle workers must not keep the process alive; busy ones must, or a reply could be lost.
      if (pw.pending.size === 0) worker.unref();
      if (m.error !== undefined) job.reject(new Error(`import worker: ${m.error}`));
      else job.resolve(m);
    });
    const fail = (err: Error): void => {
      for (const job of pw.pending.values()) job.reject(err);
      pw.pending.clear();
      const i = this.workers.indexOf(pw);
      if (i >= 0) this.workers.splice(i, 1);
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`import worker exited with code ${code}`)));
    worker.unref();
    return pw;
  }

  private send(message: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<Reply> {
    if (this.closed) return Promise.reject(new Error('import workers are closed'));
    while (this.workers.length < this.size) this.workers.push(this.spawn());
    // The least busy worker: grains of random data inflate many times faster than text.
    const pw = this.workers.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
    const id = this.nextId++;
    return new Promise<Reply>((resolve, reject) => {
      pw.pending.set(id, { resolve, reject });
      pw.worker.ref();
      pw.worker.postMessage({ ...message, id }, transfer);
    });
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
  async inflateAndStore(batch: InflateBatch, into?: Buffer, store?: StoreTarget): Promise<{ data: Buffer; stored?: StoredBlock[] }> {
    const outputBytes = batch.lengths.reduce((sum, n) => sum + n, 0);
    if (into && (!(into.buffer instanceof SharedArrayBuffer) || into.byteOffset !== 0 || into.buffer.byteLength < outputBytes)) {
      throw new Error(`inflate output must be a SharedArrayBuffer of at least ${outputBytes} bytes`);
    }
    if (this.size === 0) {
      const out = into ? into.subarray(0, outputBytes) : Buffer.alloc(outputBytes);
      const failed = inflateInto(zlib, batch, out);
      if (failed) throw new InflateError(failed);
      return { data: out, stored: store ? await finishStored(fs, storeBlocks({ crypto, fs, path }, store, out)) : undefined };
    }
    const { sizes, lengths, grainBytes, raw } = batch;
    const input = batch.input.buffer instanceof SharedArrayBuffer ? batch.input : new Uint8Array(batch.input);
    const reply = await this.send(
      {
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
      },
      input === batch.input ? [] : [input.buffer as ArrayBuffer],
    );
    if (reply.failed) throw new InflateError(reply.failed);
    return { data: Buffer.from(reply.out!, 0, outputBytes), stored: reply.stored };
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
    this.closed = true;
    const ws = this.workers.splice(0);
    await Promise.all(ws.map((w) => w.worker.terminate()));
  }
}

let shared: ImportWorkers | undefined;

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
