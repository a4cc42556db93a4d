/**
 * The import's CPU work on worker threads: inflating batches of compressed grains and hashing blocks.
 * On the main thread, zlib's per-chunk callbacks, the buffers they allocate, the copies that join grains
 * into blocks and sha256 took most of the import's time while it also had to read, parse and write.
 * Inflated batches come back in a SharedArrayBuffer, so hashing them on a worker copies nothing.
 */
import { createHash } from 'node:crypto';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import * as zlib from 'node:zlib';

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const zlib = require('node:zlib');
${inflateInto.toString()}
parentPort.on('message', (m) => {
  try {
    if (m.kind === 'sha256') {
      const view = new Uint8Array(m.buffer, m.offset, m.length);
      parentPort.postMessage({ id: m.id, digest: createHash('sha256').update(view).digest('hex') });
      return;
    }
    const out = m.out || new SharedArrayBuffer(m.outputBytes);
    const failed = inflateInto(zlib, { ...m, input: new Uint8Array(m.input, m.inputOffset, m.inputLength) }, new Uint8Array(out, 0, m.outputBytes));
    parentPort.postMessage(failed ? { id: m.id, failed } : { id: m.id, out });
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

interface Job {
  resolve: (reply: Reply) => void;
  reject: (err: Error) => void;
}

interface Reply {
  id: number;
  out?: SharedArrayBuffer;
  digest?: string;
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
    const outputBytes = batch.lengths.reduce((sum, n) => sum + n, 0);
    if (into && (!(into.buffer instanceof SharedArrayBuffer) || into.byteOffset !== 0 || into.buffer.byteLength < outputBytes)) {
      throw new Error(`inflate output must be a SharedArrayBuffer of at least ${outputBytes} bytes`);
    }
    if (this.size === 0) {
      const out = into ? into.subarray(0, outputBytes) : Buffer.alloc(outputBytes);
      const failed = inflateInto(zlib, batch, out);
      if (failed) throw new InflateError(failed);
      return out;
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
      },
      input === batch.input ? [] : [input.buffer as ArrayBuffer],
    );
    if (reply.failed) throw new InflateError(reply.failed);
    return Buffer.from(reply.out!, 0, outputBytes);
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
