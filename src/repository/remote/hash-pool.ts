import { createHash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
parentPort.on('message', ({ id, bytes }) => {
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  parentPort.postMessage({ id, sha256, bytes }, [bytes.buffer]);
});
`;

/** Below this a block is hashed where it arrived: handing it to a thread would cost more. */
const INLINE_BYTES = 64 * 1024;

/**
 * SHA-256 of received blocks on worker threads, so hashing runs beside TLS decryption and parsing instead of
 * after them. Buffers are transferred, not copied, and come back as the same memory.
 */
export class HashPool {
  private workers: Worker[] = [];
  private next = 0;
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (r: { sha256: string; data: Buffer }) => void; reject: (e: Error) => void }>();

  constructor(private readonly size = Math.max(1, Math.min(4, availableParallelism()))) {}

  /** The block's digest, and the block itself (its memory, handed back by the thread). */
  hash(data: Buffer): Promise<{ sha256: string; data: Buffer }> {
    // A buffer that shares its memory (a pool slice) cannot be transferred whole.
    if (data.length < INLINE_BYTES || data.byteOffset !== 0 || data.buffer.byteLength !== data.length) {
      return Promise.resolve({ sha256: createHash('sha256').update(data).digest('hex'), data });
    }
    if (this.workers.length === 0) this.start();
    const id = this.seq++;
    const worker = this.workers[this.next++ % this.workers.length];
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      // Busy workers keep the process alive until the reply is in; idle ones must not.
      if (this.waiting.size === 1) for (const w of this.workers) w.ref();
      const bytes = new Uint8Array(data.buffer, 0, data.length);
      worker.postMessage({ id, bytes }, [data.buffer as ArrayBuffer]);
    });
  }

  close(): void {
    for (const w of this.workers) void w.terminate();
    this.workers = [];
    for (const { reject } of this.waiting.values()) reject(new Error('hash pool closed'));
    this.waiting.clear();
  }

  private start(): void {
    for (let i = 0; i < this.size; i++) {
      const worker = new Worker(WORKER_SOURCE, { eval: true });
      worker.unref();
      worker.on('message', ({ id, sha256, bytes }: { id: number; sha256: string; bytes: Uint8Array }) => {
        const w = this.waiting.get(id);
        this.waiting.delete(id);
        if (this.waiting.size === 0) for (const x of this.workers) x.unref();
        w?.resolve({ sha256, data: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) });
      });
      worker.on('error', (err) => {
        for (const { reject } of this.waiting.values()) reject(err);
        this.waiting.clear();
      });
      this.workers.push(worker);
    }
  }
}
