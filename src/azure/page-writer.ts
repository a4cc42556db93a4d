/**
 * The one Put Page engine, used by the uploader and the blob-image editor: writes and clears checked
 * against Azure's rules, sent with bounded concurrency, each write with its MD5 (hashed on worker threads
 * in place when a pool is given), acknowledged in order so a caller knows the offset below which
 * everything has landed, the first failure aborting every call in flight.
 *
 * The uploader hands it whole runs (`send`) and gates them on its resume window; the editor hands it
 * scattered pieces (`write`, `clear`), which it coalesces into runs of up to `maxWrite`.
 */
import { createHash } from 'node:crypto';
import type { PageBlobClient } from '@azure/storage-blob';
import { FailureType, RestoreError } from '../domain/errors';
import type { Md5WorkerPool } from './pageblob-md5';
import { alignUp, assertPageWrite, throwIfAborted } from './page-write';
import type { PageRange } from './pageblob-verify';
import { SECTOR_SIZE } from './vhd';

/** What the page writer needs of a PageBlobClient. */
export type PageWriterClient = Pick<PageBlobClient, 'uploadPages'> & Partial<Pick<PageBlobClient, 'clearPages'>>;

/** Contiguous source bytes for one Put Page call. */
export interface PageRun {
  start: number;
  length: number;
  pieces: Buffer[];
}

/** A condition on where a write may reach (the uploader's resume window past its stored checkpoint). */
export interface WriteGate {
  /** Whether a write of [start, end) may start now. */
  allows(start: number, end: number): boolean;
  /** The write of [start, end) starts. */
  admit(start: number, end: number): void;
  /** Called while a write waits on the gate, so the gate can move on (store a checkpoint). */
  blocked(): void;
  /** A call the gate itself has in flight, raced with the writes while waiting. */
  running(): Promise<void> | null;
}

export interface PageWriterOptions {
  client: PageWriterClient;
  /** Writes end at or before this offset. */
  limit: number;
  maxWrite: number;
  concurrency: number;
  /** Aborted on the first failure; every call listens on it. */
  ac: AbortController;
  /** Per-write MD5 (default); 'none' sends without. */
  checksum?: 'md5' | 'none';
  /** Hashes on these workers, each write assembled in a reused SharedArrayBuffer they read in place. */
  md5Pool?: Md5WorkerPool;
  gate?: WriteGate;
  /** Keep the list of ranges sent (the editor reports them; an upload of a large disk need not). */
  recordRanges?: boolean;
  /** After each acknowledged write or clear. */
  onWritten?: () => void;
  /** Checks the caller's own cancellation before each call starts. */
  throwIfAborted?: () => void;
  /** Told the first failure of a call, before the abort that follows it. */
  onFailure?: (err: unknown) => void;
}

interface Entry {
  start: number;
  done: boolean;
}

export class PageWriter {
  /** Payload bytes of acknowledged writes. */
  bytesSent = 0;
  clearedBytes = 0;
  /** Acknowledged Put Page and Clear Page calls. */
  pagesSent = 0;
  /** Every range written or cleared, in the order sent (with `recordRanges`). */
  readonly ranges: PageRange[] = [];
  readonly inflight = new Set<Promise<void>>();
  private readonly order: Entry[] = [];
  private readonly freeSlots: Buffer[] = [];
  private readonly freeBuffers: Buffer[] = [];
  private pendingWrite: { start: number; buf: Buffer; length: number } | null = null;
  private pendingClear: { start: number; length: number } | null = null;
  private firstError: unknown;
  private failed = false;

  constructor(private readonly o: PageWriterOptions) {}

  /** The first failure of a call, if one failed. */
  get failure(): unknown {
    return this.firstError;
  }

  /** Records the first failure and aborts every call in flight. */
  fail(err: unknown): void {
    if (this.failed) return;
    this.failed = true;
    this.firstError = err;
    this.o.onFailure?.(err);
    this.o.ac.abort(err);
  }

  /** The offset below which every call sent has been acknowledged; `queued` when none is outstanding. */
  contiguousOffset(queued: number): number {
    while (this.order.length > 0 && this.order[0].done) this.order.shift();
    return this.order.length > 0 ? this.order[0].start : queued;
  }

  /** The calls in flight, and the gate's own call, if one runs. */
  pendingCalls(): Promise<void>[] {
    const running = this.o.gate?.running();
    return running ? [...this.inflight, running] : [...this.inflight];
  }

  /**
   * Waits for room (concurrency, the gate), then starts the run's Put Page. The pieces must stay unchanged
   * until it completes; `done` is called once it has settled.
   */
  async send(run: PageRun, done?: () => void): Promise<void> {
    const { o } = this;
    const entry = await this.room(run.start, run.start + run.length);
    o.gate?.admit(run.start, run.start + run.length);
    assertPageWrite(run.start, run.length, o.limit);
    if (run.length > o.maxWrite) throw new RestoreError(FailureType.AzureLimit, `page write of ${run.length} bytes exceeds ${o.maxWrite}`);
    let slot: Buffer | undefined;
    let body: Buffer;
    if (o.md5Pool) {
      slot = this.freeSlots.pop() ?? Buffer.from(new SharedArrayBuffer(o.maxWrite));
      let at = 0;
      for (const piece of run.pieces) at += piece.copy(slot, at);
      body = slot.subarray(0, run.length);
    } else {
      body = run.pieces.length === 1 ? run.pieces[0] : Buffer.concat(run.pieces, run.length);
    }
    if (o.recordRanges) this.ranges.push({ start: run.start, end: run.start + run.length - 1 });
    this.track(entry, this.upload(run.start, body), body.length, false, () => {
      if (slot) this.freeSlots.push(slot);
      done?.();
    });
  }

  /** Queues a copy of `data` for blob offset `offset` (sector-aligned), coalesced with adjacent writes; a short last sector is padded with zeros. */
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.pendingClear) await this.flush();
    let at = offset;
    let rest = data;
    while (rest.length > 0) {
      const p = this.pendingWrite;
      if (p && (p.start + p.length !== at || p.length === this.o.maxWrite)) await this.flush();
      this.pendingWrite ??= { start: at, buf: this.freeBuffers.pop() ?? Buffer.allocUnsafe(this.o.maxWrite), length: 0 };
      const w = this.pendingWrite;
      const take = Math.min(rest.length, this.o.maxWrite - w.length);
      rest.copy(w.buf, w.length, 0, take);
      w.length += take;
      at += take;
      rest = rest.subarray(take);
    }
    const w = this.pendingWrite;
    if (w && w.length % SECTOR_SIZE !== 0) {
      // Only the disk's last sector can be short, so nothing can follow it.
      const padded = alignUp(w.length, SECTOR_SIZE);
      w.buf.fill(0, w.length, padded);
      w.length = padded;
    }
  }

  /** Queues a clear of [offset, offset + length), rounded up to whole sectors, coalesced with adjacent clears. */
  async clear(offset: number, length: number): Promise<void> {
    if (this.pendingWrite) await this.flush();
    const len = alignUp(length, SECTOR_SIZE);
    const c = this.pendingClear;
    if (c && c.start + c.length === offset) {
      c.length += len;
      return;
    }
    if (c) await this.flush();
    this.pendingClear = { start: offset, length: len };
  }

  /** Sends the coalesced write or clear that is queued. */
  async flush(): Promise<void> {
    const w = this.pendingWrite;
    const c = this.pendingClear;
    this.pendingWrite = null;
    this.pendingClear = null;
    if (w) await this.send({ start: w.start, length: w.length, pieces: [w.buf.subarray(0, w.length)] }, () => this.freeBuffers.push(w.buf));
    if (c) await this.sendClear(c.start, c.length);
  }

  /** Sends what is queued and waits for every call; throws the first failure. */
  async finish(): Promise<void> {
    await this.flush();
    await Promise.all(this.inflight);
    if (this.failed) throw this.firstError;
  }

  /** Waits for the calls in flight to settle, after a failure or abort. */
  async abandon(): Promise<void> {
    await Promise.allSettled(this.pendingCalls());
  }

  private async sendClear(start: number, length: number): Promise<void> {
    const { o } = this;
    const entry = await this.room(start, null);
    if (start % SECTOR_SIZE !== 0 || length % SECTOR_SIZE !== 0 || start + length > o.limit || length <= 0) {
      throw new RestoreError(FailureType.AzureLimit, `page clear at ${start} of ${length} bytes is not aligned or runs into the footer`);
    }
    if (!o.client.clearPages) throw new Error('this page writer cannot clear pages');
    if (o.recordRanges) this.ranges.push({ start, end: start + length - 1 });
    const cleared = o.client.clearPages(start, length, { abortSignal: o.ac.signal }).then(() => undefined);
    this.track(entry, cleared, length, true);
  }

  /** Takes a place in the order, then waits until it is among the first `concurrency` and the gate allows `end`. */
  private async room(start: number, end: number | null): Promise<Entry> {
    // (A clear passes `end: null`: it sends nothing a resume would send again.)
    const { o } = this;
    const entry: Entry = { start, done: false };
    this.order.push(entry);
    for (;;) {
      // A failed call never completes, so check for failure before waiting for room.
      if (this.failed) throw this.firstError;
      o.throwIfAborted?.();
      throwIfAborted(o.ac.signal);
      this.contiguousOffset(0);
      const allowed = end === null || !o.gate || o.gate.allows(start, end);
      // At most `concurrency` from the oldest unacknowledged call: a slow write holds later ones back.
      if (this.order.indexOf(entry) < o.concurrency && allowed) return entry;
      if (!allowed) o.gate!.blocked();
      await Promise.race(this.pendingCalls());
    }
  }

  private async upload(offset: number, body: Buffer): Promise<void> {
    const { o } = this;
    let md5: Buffer | undefined;
    if ((o.checksum ?? 'md5') === 'md5') {
      md5 = o.md5Pool && body.buffer instanceof SharedArrayBuffer ? await o.md5Pool.digest(body) : createHash('md5').update(body).digest();
    }
    await o.client.uploadPages(body, offset, body.length, { abortSignal: o.ac.signal, transactionalContentMD5: md5 });
  }

  private track(entry: Entry, call: Promise<void>, bytes: number, clear: boolean, release?: () => void): void {
    const p = call.then(
      () => {
        entry.done = true;
        if (clear) this.clearedBytes += bytes;
        else this.bytesSent += bytes;
        this.pagesSent += 1;
        try {
          this.o.onWritten?.();
        } catch (err) {
          this.fail(err);
        }
      },
      (err: unknown) => this.fail(err),
    );
    const tracked: Promise<void> = p.finally(() => {
      this.inflight.delete(tracked);
      release?.();
    });
    this.inflight.add(tracked);
  }
}
