/** The page writer: coalesces page writes and clears in ascending order and sends them with bounded concurrency. */
import { createHash } from 'node:crypto';
import type { PageBlobClient } from '@azure/storage-blob';
import { FailureType, RestoreError } from '../domain/errors';
import { alignUp, assertPageWrite, throwIfAborted } from './page-write';
import type { PageRange } from './pageblob-verify';
import { SECTOR_SIZE } from './vhd';

/** What the page writer needs of a PageBlobClient. */
export type PageWriterClient = Pick<PageBlobClient, 'uploadPages' | 'clearPages'>;

export class PageWriter {
  uploadedBytes = 0;
  clearedBytes = 0;
  pageWrites = 0;
  readonly ranges: PageRange[] = [];
  private pendingWrite: { start: number; buf: Buffer; length: number } | null = null;
  private pendingClear: { start: number; length: number } | null = null;
  private readonly inflight = new Set<Promise<void>>();
  private readonly free: Buffer[] = [];
  private firstError: unknown;
  private failed = false;

  constructor(
    private readonly client: PageWriterClient,
    /** Writes end at or before this offset: the start of the footer. */
    private readonly limit: number,
    private readonly maxWrite: number,
    private readonly concurrency: number,
    private readonly ac: AbortController,
  ) {}

  /** Queues `data` for blob offset `offset` (sector-aligned); a short last sector is padded with zeros. */
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.pendingClear) await this.flush();
    let at = offset;
    let rest = data;
    while (rest.length > 0) {
      const p = this.pendingWrite;
      if (p && (p.start + p.length !== at || p.length === this.maxWrite)) await this.flush();
      if (!this.pendingWrite) this.pendingWrite = { start: at, buf: this.free.pop() ?? Buffer.allocUnsafe(this.maxWrite), length: 0 };
      const w = this.pendingWrite;
      const take = Math.min(rest.length, this.maxWrite - w.length);
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

  /** Queues a clear of [offset, offset + length), rounded up to whole sectors. */
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

  async flush(): Promise<void> {
    const w = this.pendingWrite;
    const c = this.pendingClear;
    this.pendingWrite = null;
    this.pendingClear = null;
    if (w) await this.dispatch(w.start, w.length, w.buf);
    if (c) await this.dispatch(c.start, c.length, null);
  }

  private async dispatch(start: number, length: number, buf: Buffer | null): Promise<void> {
    while (this.inflight.size >= this.concurrency && !this.failed) await Promise.race(this.inflight);
    if (this.failed) throw this.firstError;
    throwIfAborted(this.ac.signal);
    if (buf) assertPageWrite(start, length, this.limit);
    else if (start % SECTOR_SIZE !== 0 || length % SECTOR_SIZE !== 0 || start + length > this.limit || length <= 0) {
      throw new RestoreError(FailureType.AzureLimit, `page clear at ${start} of ${length} bytes is not aligned or runs into the footer`);
    }
    this.ranges.push({ start, end: start + length - 1 });
    const signal = this.ac.signal;
    const send = async (): Promise<void> => {
      if (buf) {
        const body = buf.subarray(0, length);
        const md5 = createHash('md5').update(body).digest();
        await this.client.uploadPages(body, start, length, { abortSignal: signal, transactionalContentMD5: md5 });
        this.uploadedBytes += length;
      } else {
        await this.client.clearPages(start, length, { abortSignal: signal });
        this.clearedBytes += length;
      }
      this.pageWrites += 1;
    };
    const p = send().then(
      () => undefined,
      (err: unknown) => {
        if (!this.failed) {
          this.failed = true;
          this.firstError = err;
          this.ac.abort(err);
        }
      },
    );
    const tracked: Promise<void> = p.finally(() => {
      this.inflight.delete(tracked);
      if (buf) this.free.push(buf);
    });
    this.inflight.add(tracked);
  }

  /** Sends what is queued and waits for every call; throws the first failure. */
  async finish(): Promise<void> {
    await this.flush();
    await Promise.all(this.inflight);
    if (this.failed) throw this.firstError;
  }

  async abandon(): Promise<void> {
    await Promise.allSettled(this.inflight);
  }
}
