/**
 * The uploader's write window: Put Page calls in flight, at most `concurrency` from the oldest one not yet
 * acknowledged (later ones that completed out of order count too), and none reaching past the stored
 * checkpoint + window. That bounds what a resume can re-send, even when one slow write holds the offset
 * back or the process dies.
 */
import type { UploadCheckpoint } from './pageblob-checkpoint';

/** Contiguous source bytes queued for one Put Page call. */
export interface PageRun {
  start: number;
  length: number;
  pieces: Buffer[];
}

interface WriteEntry {
  start: number;
  done: boolean;
}

export interface WriteWindowOptions {
  concurrency: number;
  maxWrite: number;
  /** Bytes past the durable checkpoint that writes may reach. */
  windowBytes: number;
  checkpoint: UploadCheckpoint;
  /** Assemble each write in a reused SharedArrayBuffer (for checksum workers that read it in place). */
  sharedBuffers: boolean;
  send(offset: number, body: Buffer): Promise<void>;
  /** Where the uploader has queued up to when no write is outstanding. */
  queuedOffset(): number;
  /** After each acknowledged write. */
  onWritten(): void;
  throwIfAborted(): void;
  /** Records the first failure and aborts every call in flight. */
  fail(err: unknown): void;
  firstError(): unknown;
}

export class WriteWindow {
  bytesSent = 0;
  pagesSent = 0;
  readonly inflight = new Set<Promise<void>>();
  private readonly order: WriteEntry[] = [];
  // With hashing on workers, each write is assembled in a shared buffer the worker reads in place;
  // there are never more than `concurrency` of them, reused from write to write.
  private readonly freeSlots: Buffer[] = [];

  constructor(private readonly o: WriteWindowOptions) {}

  /** The offset below which every queued write has been acknowledged. */
  contiguousOffset(): number {
    while (this.order.length > 0 && this.order[0].done) this.order.shift();
    if (this.order.length > 0) return this.order[0].start;
    return this.o.queuedOffset();
  }

  /** Waits for room in the window, then starts the run's Put Page. */
  async dispatch(run: PageRun): Promise<void> {
    const { o } = this;
    const entry: WriteEntry = { start: run.start, done: false };
    this.order.push(entry);
    for (;;) {
      // A failed write never completes, so check for failure before waiting on the window.
      const failed = o.firstError();
      if (failed !== undefined) throw failed;
      o.throwIfAborted();
      this.contiguousOffset();
      const withinWindow = run.start + run.length <= o.checkpoint.durable + o.windowBytes;
      if (this.order.indexOf(entry) < o.concurrency && withinWindow) break;
      if (!withinWindow) o.checkpoint.advance(() => this.contiguousOffset(), true);
      await Promise.race(this.pendingCalls());
    }
    let slot: Buffer | undefined;
    let body: Buffer;
    if (o.sharedBuffers) {
      slot = this.freeSlots.pop() ?? Buffer.from(new SharedArrayBuffer(o.maxWrite));
      let at = 0;
      for (const piece of run.pieces) at += piece.copy(slot, at);
      body = slot.subarray(0, run.length);
    } else {
      body = run.pieces.length === 1 ? run.pieces[0] : Buffer.concat(run.pieces, run.length);
    }
    const p: Promise<void> = o.send(run.start, body).then(
      () => {
        entry.done = true;
        this.bytesSent += body.length;
        this.pagesSent += 1;
        try {
          o.onWritten();
        } catch (err) {
          o.fail(err);
        }
      },
      (err: unknown) => o.fail(err),
    );
    const tracked = p.finally(() => {
      this.inflight.delete(tracked);
      if (slot) this.freeSlots.push(slot);
    });
    this.inflight.add(tracked);
  }

  /** The Put Page calls in flight and the checkpoint call, if one runs. */
  pendingCalls(): Promise<void>[] {
    const running = this.o.checkpoint.running;
    return running ? [...this.inflight, running] : [...this.inflight];
  }
}
