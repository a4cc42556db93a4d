/**
 * MD5 of Put Page bodies on worker threads. MD5 runs at about 0.6 GB/s on one core and was the
 * largest share of the upload's main-thread time, competing with HTTP and the source reader.
 * Bodies that live in a SharedArrayBuffer are hashed in place; others are copied to the worker.
 */
import { Worker } from 'node:worker_threads';
import os from 'node:os';

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
parentPort.on('message', (m) => {
  try {
    const view = m.shared ? new Uint8Array(m.shared, m.offset, m.length) : m.data;
    parentPort.postMessage({ id: m.id, digest: createHash('md5').update(view).digest() });
  } catch (err) {
    parentPort.postMessage({ id: m.id, error: String(err && err.message || err) });
  }
});
`;

interface Job {
  resolve: (d: Buffer) => void;
  reject: (e: Error) => void;
}

interface PoolWorker {
  worker: Worker;
  pending: Map<number, Job>;
}

export class Md5WorkerPool {
  private readonly workers: PoolWorker[] = [];
  private nextId = 1;
  private turn = 0;
  private closed = false;

  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 1) throw new Error(`md5 worker pool size must be >= 1, got ${size}`);
  }

  private spawn(): PoolWorker {
    const worker = new Worker(WORKER_SOURCE, { eval: true });
    const pw: PoolWorker = { worker, pending: new Map() };
    worker.on('message', (m: { id: number; digest?: Uint8Array; error?: string }) => {
      const job = pw.pending.get(m.id);
      if (!job) return;
      pw.pending.delete(m.id);
      // Idle workers must not keep the process alive; busy ones must, or a digest could be lost.
      if (pw.pending.size === 0) worker.unref();
      if (m.error !== undefined || !m.digest) job.reject(new Error(`md5 worker: ${m.error ?? 'no digest'}`));
      else job.resolve(Buffer.from(m.digest.buffer, m.digest.byteOffset, m.digest.byteLength));
    });
    const fail = (err: Error): void => {
      for (const job of pw.pending.values()) job.reject(err);
      pw.pending.clear();
      const i = this.workers.indexOf(pw);
      if (i >= 0) this.workers.splice(i, 1);
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`md5 worker exited with code ${code}`)));
    worker.unref();
    return pw;
  }

  /** MD5 of `data`; zero-copy when `data` is a view on a SharedArrayBuffer. */
  digest(data: Uint8Array): Promise<Buffer> {
    if (this.closed) return Promise.reject(new Error('md5 worker pool is closed'));
    while (this.workers.length < this.size) this.workers.push(this.spawn());
    const pw = this.workers[this.turn++ % this.workers.length];
    const id = this.nextId++;
    return new Promise<Buffer>((resolve, reject) => {
      pw.pending.set(id, { resolve, reject });
      pw.worker.ref();
      if (data.buffer instanceof SharedArrayBuffer) {
        pw.worker.postMessage({ id, shared: data.buffer, offset: data.byteOffset, length: data.byteLength });
      } else {
        pw.worker.postMessage({ id, data });
      }
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    const ws = this.workers.splice(0);
    await Promise.all(ws.map((w) => w.worker.terminate()));
  }
}

let shared: Md5WorkerPool | undefined;

/** Workers worth using here: none on a single core, where they would only add hand-off cost. */
export function defaultMd5Workers(): number {
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return cores > 1 ? Math.min(2, cores - 1) : 0;
}

/** The process-wide pool of defaultMd5Workers() workers, created on first use. */
export function sharedMd5Pool(): Md5WorkerPool {
  shared ??= new Md5WorkerPool(Math.max(1, defaultMd5Workers()));
  return shared;
}
