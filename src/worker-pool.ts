import { Worker } from 'node:worker_threads';

/** What every reply of a pool worker carries: the id it answers, and an error (message and system code) if it failed. */
export interface PoolReply {
  id: number;
  error?: string;
  code?: string;
}

interface PoolWorker<R> {
  worker: Worker;
  pending: Map<number, { resolve: (reply: R) => void; reject: (err: Error) => void }>;
}

/**
 * Worker threads started from source text, each job posted to the least busy one. A message may be answered
 * more than once (one id per reply, see post); idle workers do not keep the process alive, busy ones do, so
 * no reply is lost. A worker that dies fails the jobs it held and is replaced on the next post.
 */
export class WorkerPool<R extends PoolReply> {
  private readonly workers: PoolWorker<R>[] = [];
  private nextId = 1;
  private closed = false;

  /** `name` goes into errors ("<name> worker: ..."); `source` is the worker's script (eval). */
  constructor(
    private readonly name: string,
    private readonly source: string,
    readonly size: number,
  ) {
    if (!Number.isInteger(size) || size < 1) throw new Error(`${name} worker count must be an integer >= 1, got ${size}`);
  }

  private spawn(): PoolWorker<R> {
    const worker = new Worker(this.source, { eval: true });
    const pw: PoolWorker<R> = { worker, pending: new Map() };
    worker.on('message', (m: R) => {
      const job = pw.pending.get(m.id);
      if (!job) return;
      pw.pending.delete(m.id);
      if (pw.pending.size === 0) worker.unref();
      if (m.error !== undefined) job.reject(Object.assign(new Error(`${this.name} worker: ${m.error}`), m.code ? { code: m.code } : {}));
      else job.resolve(m);
    });
    const fail = (err: Error): void => {
      for (const job of pw.pending.values()) job.reject(err);
      pw.pending.clear();
      const i = this.workers.indexOf(pw);
      if (i >= 0) this.workers.splice(i, 1);
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`${this.name} worker exited with code ${code}`)));
    worker.unref();
    return pw;
  }

  /**
   * Posts `message` to the least busy worker with a new reply id in each field of `names` (default just
   * `id`); the worker must answer each of them once. One promise per name, in that order.
   */
  post(message: Record<string, unknown>, transfer: ArrayBuffer[] = [], names: string[] = ['id']): Promise<R>[] {
    if (this.closed) return names.map(() => Promise.reject(new Error(`${this.name} workers are closed`)));
    while (this.workers.length < this.size) this.workers.push(this.spawn());
    const pw = this.workers.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
    const ids = names.map(() => this.nextId++);
    const replies = ids.map((id) => new Promise<R>((resolve, reject) => pw.pending.set(id, { resolve, reject })));
    pw.worker.ref();
    pw.worker.postMessage({ ...message, ...Object.fromEntries(names.map((n, i) => [n, ids[i]])) }, transfer);
    return replies;
  }

  async close(): Promise<void> {
    this.closed = true;
    const ws = this.workers.splice(0);
    await Promise.all(ws.map((w) => w.worker.terminate()));
  }
}
