/**
 * Chunk reads for restores on worker threads: each worker opens, reads and sha256-checks whole chunks
 * with synchronous calls, straight into a slot of a SharedArrayBuffer the reader handed it, so a chunk
 * costs one message each way and no copy. On the main thread the same work was a hash at about 2 GB/s on
 * one core, a fresh 1 MiB buffer per block for the garbage collector, and five hops through the libuv
 * pool (open, stat, read, close, and the hash after them), each waiting for a core on a loaded machine.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import os from 'node:os';
import { WorkerPool, type PoolReply } from '../worker-pool';

/** What a chunk read found; the bytes are in the slot the caller gave. */
export type SlotReadResult = { status: 'ok' } | { status: 'missing' } | { status: 'corrupt'; reason: string; bytesRead: number };

// Sent as source text; a transpiler that keeps function names calls __name in it.
const WORKER_SOURCE = `
const __name = (fn) => fn;
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const { createHash } = require('node:crypto');
${readChunkInto.toString()}
parentPort.on('message', (m) => {
  try {
    const result = readChunkInto(fs, createHash, m.file, m.hash, new Uint8Array(m.buffer, m.offset, m.length));
    parentPort.postMessage({ id: m.id, result });
  } catch (err) {
    parentPort.postMessage({ id: m.id, error: String((err && err.message) || err), code: err && err.code });
  }
});
`;

/**
 * Reads the chunk `file` into `out` (its expected length) and checks it against `hash`. The size is checked
 * from the file before a byte is read, so a truncated or padded chunk costs no read. Runs in the workers
 * from its source text and on the calling thread without them, so it uses nothing but its arguments.
 */
function readChunkInto(f: typeof fs, hash: typeof createHash, file: string, expected: string, out: Uint8Array): SlotReadResult {
  let fd: number;
  try {
    fd = f.openSync(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { status: 'missing' };
    throw err;
  }
  try {
    const size = f.fstatSync(fd).size;
    if (size !== out.length) return { status: 'corrupt', reason: `size ${size} bytes, expected ${out.length}`, bytesRead: 0 };
    let filled = 0;
    while (filled < out.length) {
      const n = f.readSync(fd, out, filled, out.length - filled, filled);
      if (n === 0) break;
      filled += n;
    }
    if (filled !== out.length) {
      return { status: 'corrupt', reason: `file ended after ${filled} bytes, expected ${out.length}`, bytesRead: filled };
    }
    if (hash('sha256').update(out).digest('hex') !== expected) return { status: 'corrupt', reason: 'sha256 mismatch', bytesRead: filled };
    return { status: 'ok' };
  } finally {
    f.closeSync(fd);
  }
}

interface Reply extends PoolReply {
  result?: SlotReadResult;
}

export class ChunkReadWorkers {
  private readonly pool: WorkerPool<Reply> | null;

  /** `size` 0 reads on the calling thread (one core: workers would only add hand-off cost). */
  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 0) throw new Error(`chunk read worker count must be an integer >= 0, got ${size}`);
    this.pool = size > 0 ? new WorkerPool<Reply>('chunk read', WORKER_SOURCE, size) : null;
  }

  /**
   * Reads chunk `file` into `out` and checks its sha256 against `hash`. `out` must be a view of a
   * SharedArrayBuffer when there are workers; the caller must not touch it until the promise settles.
   * Errors other than a missing file (permissions, I/O) reject with the system error's message and code.
   */
  async read(file: string, hash: string, out: Uint8Array): Promise<SlotReadResult> {
    if (!this.pool) return readChunkInto(fs, createHash, file, hash, out);
    if (!(out.buffer instanceof SharedArrayBuffer)) throw new Error('chunk read slot must be a view of a SharedArrayBuffer');
    const [reply] = this.pool.post({ file, hash, buffer: out.buffer, offset: out.byteOffset, length: out.byteLength });
    return (await reply).result!;
  }

  async close(): Promise<void> {
    await this.pool?.close();
  }
}

/** One worker per core (the main thread mostly waits for the writes, which run on the libuv pool); none on one core. */
export function defaultChunkReadWorkers(): number {
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return cores > 1 ? Math.min(4, cores) : 0;
}

let shared: ChunkReadWorkers | undefined;

/** The process-wide chunk readers, started on first use; VMRESTORE_READ_WORKERS overrides their number. */
export function sharedChunkReadWorkers(): ChunkReadWorkers {
  const configured = process.env.VMRESTORE_READ_WORKERS;
  shared ??= new ChunkReadWorkers(configured !== undefined && configured !== '' ? Number(configured) : defaultChunkReadWorkers());
  return shared;
}
