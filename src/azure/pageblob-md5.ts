/**
 * MD5 of Put Page bodies on worker threads. MD5 runs at about 0.6 GB/s on one core and was the
 * largest share of the upload's main-thread time, competing with HTTP and the source reader.
 * Bodies that live in a SharedArrayBuffer are hashed in place; others are copied to the worker.
 */
import os from 'node:os';
import { WorkerPool, type PoolReply } from '../worker-pool';

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

interface Md5Reply extends PoolReply {
  digest?: Uint8Array;
}

export class Md5WorkerPool {
  private readonly pool: WorkerPool<Md5Reply>;

  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 1) throw new Error(`md5 worker pool size must be >= 1, got ${size}`);
    this.pool = new WorkerPool<Md5Reply>('md5', WORKER_SOURCE, size);
  }

  /** MD5 of `data`; zero-copy when `data` is a view on a SharedArrayBuffer. */
  async digest(data: Uint8Array): Promise<Buffer> {
    const message =
      data.buffer instanceof SharedArrayBuffer ? { shared: data.buffer, offset: data.byteOffset, length: data.byteLength } : { data };
    const [reply] = this.pool.post(message);
    const { digest } = await reply;
    if (!digest) throw new Error('md5 worker: no digest');
    return Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength);
  }

  close(): Promise<void> {
    return this.pool.close();
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
