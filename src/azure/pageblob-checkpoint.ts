/**
 * The upload's durable checkpoint: the offset below which every non-zero byte is in the blob, stored in the
 * blob's metadata with a synchronous call (UPLOAD_CHECKPOINT_METADATA_KEY), one call at a time.
 */
import type { PageBlobClient } from '@azure/storage-blob';
import { UPLOAD_CHECKPOINT_METADATA_KEY } from './pageblob-ownership';

export class UploadCheckpoint {
  /** The checkpoint the blob's metadata is known to hold. */
  durable: number;
  /** The metadata call in flight, if any. */
  running: Promise<void> | null = null;

  constructor(
    private readonly client: Pick<PageBlobClient, 'setMetadata'>,
    /** The owner metadata every setMetadata call repeats (it replaces the whole set). */
    private readonly ownerMetadata: Record<string, string>,
    private readonly signal: AbortSignal,
    start: number,
    /** How far the offset must move on before an unforced checkpoint is stored. */
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
      });
  }

  /** Stores `offset()` when it has moved on enough (or `force`), unless a call is already running. */
  advance(offset: () => number, force: boolean): void {
    if (this.running) return;
    const at = offset();
    if (at <= this.durable || (!force && at - this.durable < this.stride)) return;
    this.running = this.store(at)
      .catch(this.onError)
      .finally(() => {
        this.running = null;
      });
  }
}
