/**
 * The upload's durable checkpoint: the offset below which every non-zero byte is in the blob, stored in the
 * blob's metadata with a synchronous call (UPLOAD_CHECKPOINT_METADATA_KEY), one call at a time; and the
 * bytes issued above it, which are what a resume from it would send again.
 */
import type { PageBlobClient } from '@azure/storage-blob';
import { UPLOAD_CHECKPOINT_METADATA_KEY } from './pageblob-ownership';

export class UploadCheckpoint {
  /** The checkpoint the blob's metadata is known to hold. */
  durable: number;
  /** The metadata call in flight, if any. */
  running: Promise<void> | null = null;
  /** Every write issued, by offset. */
  readonly issued = new IssuedBytes();

  constructor(
    private readonly client: Pick<PageBlobClient, 'setMetadata'>,
    /** The owner metadata every setMetadata call repeats (it replaces the whole set). */
    private readonly ownerMetadata: Record<string, string>,
    private readonly signal: AbortSignal,
    start: number,
    /** How many issued bytes a new checkpoint must leave behind before an unforced one is stored. */
    private readonly stride: number,
    private readonly onError: (err: unknown) => void,
  ) {
    this.durable = start;
  }

  store(at: number): Promise<void> {
    return this.client
      .setMetadata({ ...this.ownerMetadata, [UPLOAD_CHECKPOINT_METADATA_KEY]: String(at) }, { abortSignal: this.signal })
      .then(() => {
        this.durable = Math.max(this.durable, at);
        this.issued.dropBelow(this.durable);
      });
  }

  /** Stores `offset()` when it has moved on enough (or `force`), unless a call is already running. */
  advance(offset: () => number, force: boolean): void {
    if (this.running) return;
    const at = offset();
    if (at <= this.durable || (!force && this.issued.above(this.durable) - this.issued.above(at) < this.stride)) return;
    this.running = this.store(at)
      .catch(this.onError)
      .finally(() => {
        this.running = null;
      });
  }
}

/**
 * The bytes of the writes an upload has issued, by offset (writes are issued in ascending order and never
 * overlap): how much a resume from a given offset would send again. Zero ranges the upload skipped cost a
 * resume nothing, so its window is counted in these bytes, not in offsets.
 */
export class IssuedBytes {
  private starts: number[] = [];
  private ends: number[] = [];
  /** Bytes issued before each write. */
  private before: number[] = [];
  private total = 0;
  private head = 0;

  add(start: number, end: number): void {
    this.starts.push(start);
    this.ends.push(end);
    this.before.push(this.total);
    this.total += end - start;
  }

  /** Bytes issued at or above offset `at`. */
  above(at: number): number {
    let lo = this.head;
    let hi = this.ends.length;
    // The first write that ends past `at`.
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid] <= at) lo = mid + 1;
      else hi = mid;
    }
    if (lo === this.ends.length) return 0;
    return this.total - this.before[lo] - Math.max(0, at - this.starts[lo]);
  }

  /** Forgets the writes wholly below `at` (a stored checkpoint: no resume starts below it). */
  dropBelow(at: number): void {
    while (this.head < this.ends.length && this.ends[this.head] <= at) this.head++;
    if (this.head > 1024 && this.head * 2 > this.ends.length) {
      this.starts = this.starts.slice(this.head);
      this.ends = this.ends.slice(this.head);
      this.before = this.before.slice(this.head);
      this.head = 0;
    }
  }
}
