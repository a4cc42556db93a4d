/**
 * Upload of a raw disk image to an Azure page blob as a fixed VHD: the hot path of a restore to Azure.
 *
 * The blob is created at its final size (virtual size rounded to 1 MiB, plus the 512-byte footer), so
 * every page nobody writes reads back as zeros. That lets us skip zero data entirely: only 512-byte
 * sectors that hold a non-zero byte are sent, coalesced into Put Page calls of at most 4 MiB, with a
 * bounded number in flight. The footer goes last, so a blob without a valid footer is never mistaken
 * for a finished upload.
 */
import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import type { PageBlobClient } from '@azure/storage-blob';
import { FailureType, RestoreError } from '../domain/errors';
import { blobUrlForRecord } from './blob-url';
import {
  AZURE_LIMITS,
  SECTOR_SIZE,
  VHD_FOOTER_SIZE,
  buildFixedVhdFooter,
  footerProblems,
  formatUuid,
  parseVhdFooter,
  uuidFromRestoreId,
  vhdVirtualSize,
  type VhdFooter,
} from './vhd';
import { Md5WorkerPool, defaultMd5Workers, sharedMd5Pool } from './pageblob-md5';

/** One block of the source disk. `data: null` means the block is known to be all zeros. */
export interface UploadBlock {
  offset: number;
  length: number;
  /**
   * The block's bytes. The uploader keeps a view of this buffer until the write carrying it has
   * completed, so a producer must not reuse or mutate it after yielding.
   */
  data: Buffer | null;
}

export interface UploadProgress {
  /** Everything below this offset is durably in the blob (or is zero); resume from here. */
  contiguousOffset: number;
  /** Payload bytes of completed Put Page calls. */
  bytesSent: number;
  /** Completed Put Page calls. */
  pagesSent: number;
  /** Source bytes at or above the resume point that were zero and so never sent. */
  zeroBytesSkipped: number;
}

export type PageChecksum = 'md5' | 'none';

/** The PageBlobClient calls the uploader makes; a wrapper (for metrics or tests) can stand in. */
export type UploadPageBlobClient = Pick<PageBlobClient, 'url' | 'getProperties' | 'create' | 'uploadPages' | 'setMetadata'>;

export interface UploadFixedVhdOptions {
  blobClient: UploadPageBlobClient;
  /** Source disk capacity in bytes; the VHD virtual size is this rounded up to 1 MiB. */
  capacityBytes: number;
  /**
   * The source disk as contiguous blocks in ascending order that together cover [0, capacity)
   * (a resumed upload may start at any block boundary at or below resumeFromOffset). Offsets are
   * 512-aligned; only the last block may end at an unaligned capacity. As a function it is called once
   * with the offset the upload starts from, so a resumed upload need not read what it will skip.
   */
  blocks: AsyncIterable<UploadBlock> | Iterable<UploadBlock> | ((fromOffset: number) => AsyncIterable<UploadBlock> | Iterable<UploadBlock>);
  /** Seeds the footer UUID, so every attempt of the same restore writes the same footer. */
  restoreId: string;
  /** Distinguishes the disks of one restore in the footer UUID. */
  diskIndex?: number;
  /**
   * Set when this is a later attempt of the same upload: a contiguousOffset reported by an earlier attempt
   * (0 if none arrived). The existing blob is kept and extended from this offset or from the checkpoint the
   * blob's metadata holds, whichever is further. Left unset, the upload starts afresh.
   */
  resumeFromOffset?: number;
  /** Largest Put Page payload; at most Azure's 4 MiB. */
  maxPageWriteBytes?: number;
  /**
   * Zero runs up to this long between data are sent as zeros inside one Put Page instead of splitting
   * it. A filesystem's data is full of short zero gaps (block tails, sparse metadata); splitting at each
   * turns a few hundred 4 MiB writes into tens of thousands of small ones, each a request and a page
   * range for the service to track. 0 sends only sectors holding a non-zero byte. Default 64 KiB.
   */
  mergeZeroGapBytes?: number;
  /**
   * Put Page calls in flight. It also sets the resume window, concurrency × maxPageWriteBytes: no write
   * reaches further than that past the checkpoint stored in the blob's metadata, so a resume re-sends at
   * most the window. Memory held is about (concurrency + 1) × maxPageWriteBytes.
   */
  concurrency?: number;
  /**
   * Per-write integrity check sent with each Put Page. The SDK also offers
   * transactionalContentCrc64, but Azure's CRC-64 is not in Node's crypto and Azurite ignores it,
   * so MD5 is the checksum the service verifies for us.
   */
  checksum?: PageChecksum;
  /**
   * Worker threads that compute the MD5s, so hashing overlaps HTTP and reading on other cores;
   * 0 hashes on the calling thread. Defaults to min(2, cores - 1).
   */
  checksumWorkers?: number;
  /** Timestamp written into the footer; pass a fixed value for byte-identical retries. */
  footerTimestamp?: Date;
  onProgress?: (p: UploadProgress) => void;
  signal?: AbortSignal;
}

export interface UploadFixedVhdResult {
  blobSize: number;
  virtualSize: number;
  /** Payload bytes sent in this attempt, footer included. */
  bytesSent: number;
  zeroBytesSkipped: number;
  /** Put Page calls made in this attempt, footer included. */
  pageWrites: number;
  footer: Buffer;
  /** Offset the upload actually started from (0 when the blob had to be created afresh). */
  resumedFrom: number;
  /** Whether this attempt created (or re-created) the blob. */
  created: boolean;
}

/** The destination blob exists with a size other than the VHD's; we never resize or clobber it. */
export class BlobSizeMismatchError extends RestoreError {
  constructor(
    readonly blobUrl: string,
    readonly expectedSize: number,
    readonly actualSize: number,
  ) {
    super(
      FailureType.AlreadyExists,
      `page blob ${blobUrlForRecord(blobUrl)} already exists with size ${actualSize}, expected ${expectedSize} ` +
        `for this disk; delete it or choose another blob name`,
    );
    this.name = 'BlobSizeMismatchError';
  }
}

/** The destination blob exists and was not made by this restore's disk: it is left exactly as it is. */
export class ForeignBlobError extends RestoreError {
  constructor(
    readonly blobUrl: string,
    readonly owner: string | undefined,
    readonly ours: string,
  ) {
    super(
      FailureType.AlreadyExists,
      owner === undefined
        ? `page blob ${blobUrlForRecord(blobUrl)} already exists and was not created by this restore (no ${VHD_UUID_METADATA_KEY} metadata, ours ${ours}); it is left untouched`
        : `page blob ${blobUrlForRecord(blobUrl)} belongs to another restore (disk uuid ${owner}, ours ${ours}); it is left untouched`,
    );
    this.name = 'ForeignBlobError';
  }
}

/** Metadata key that ties a blob to the restore disk that created it. */
export const VHD_UUID_METADATA_KEY = 'vmrestorediskuuid';
/**
 * Metadata key naming the restore that created the blob (URI-encoded: metadata values are ASCII): what
 * the sweeper matches, never the name alone.
 */
export const VHD_RESTORE_ID_METADATA_KEY = 'vmrestorerestoreid';
/**
 * Metadata key holding the upload's durable checkpoint: every non-zero byte below it is in the blob.
 * It is stored with a synchronous call, unlike a Temporal heartbeat, which the worker sends later and
 * throttled; that is what lets the uploader hold writes to checkpoint + window and so bound a resume.
 */
export const UPLOAD_CHECKPOINT_METADATA_KEY = 'vmrestoreuploadedto';

const DEFAULT_MAX_PAGE_WRITE = AZURE_LIMITS.putPageMaxBytes;
const DEFAULT_CONCURRENCY = 8;
const DEFAULT_MERGE_ZERO_GAP = 64 * 1024;
/** Minimum advance through zero regions between progress callbacks when nothing completes. */
const ZERO_PROGRESS_STRIDE = 256 * 1024 * 1024;
/** Zero regions are first tested in chunks of this size, then sector by sector. */
const ZERO_SCAN_CHUNK = 64 * 1024;
const ZERO = Buffer.alloc(Math.max(AZURE_LIMITS.putPageMaxBytes, ZERO_SCAN_CHUNK));

function limitError(message: string): RestoreError {
  return new RestoreError(FailureType.AzureLimit, message);
}

function inputError(message: string): RestoreError {
  return new RestoreError(FailureType.InvalidRequest, message);
}

/**
 * Checks a Put Page against Azure's rules before it leaves the process. Azurite accepts oversized,
 * straddling writes that Azure refuses, so this is the only place those bugs would be caught in tests.
 */
export function assertPageWrite(offset: number, length: number, blobSize: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0) {
    throw limitError(`page write at ${offset} of ${length} bytes is not a valid range`);
  }
  if (length > AZURE_LIMITS.putPageMaxBytes) {
    throw limitError(`page write of ${length} bytes at ${offset} exceeds Azure's Put Page maximum of 4 MiB`);
  }
  if (offset % SECTOR_SIZE !== 0 || length % SECTOR_SIZE !== 0) {
    throw limitError(`page write at ${offset} of ${length} bytes is not 512-byte aligned`);
  }
  if (offset + length > blobSize) {
    throw limitError(`page write [${offset}, ${offset + length}) runs past the blob end ${blobSize}`);
  }
}

function isSectorZero(d: Buffer, i: number, end: number): boolean {
  if (d[i] !== 0 || d[end - 1] !== 0) return false;
  return d.subarray(i, end).equals(ZERO.subarray(0, end - i));
}

/**
 * Calls `onRun(start, end)` (relative, end exclusive) for each maximal run of sectors in d[from, to)
 * that holds a non-zero byte. `from` is sector-aligned; `to` may end in a partial sector.
 */
function forEachNonZeroRun(d: Buffer, from: number, to: number, onRun: (s: number, e: number) => void): void {
  let runStart = -1;
  let i = from;
  while (i < to) {
    if (runStart < 0 && i + ZERO_SCAN_CHUNK <= to && d[i] === 0) {
      if (d.subarray(i, i + ZERO_SCAN_CHUNK).equals(ZERO.subarray(0, ZERO_SCAN_CHUNK))) {
        i += ZERO_SCAN_CHUNK;
        continue;
      }
    }
    const end = Math.min(i + SECTOR_SIZE, to);
    if (isSectorZero(d, i, end)) {
      if (runStart >= 0) {
        onRun(runStart, i);
        runStart = -1;
      }
    } else if (runStart < 0) {
      runStart = i;
    }
    i = end;
  }
  if (runStart >= 0) onRun(runStart, to);
}

interface PendingRun {
  start: number;
  length: number;
  pieces: Buffer[];
}

interface WriteEntry {
  start: number;
  done: boolean;
}

/** A controller that aborts with `signal`, and a function that detaches it again. */
function linkAbort(signal: AbortSignal | undefined): { ac: AbortController; unlink: () => void } {
  const ac = new AbortController();
  if (!signal) return { ac, unlink: () => undefined };
  if (signal.aborted) ac.abort(signal.reason);
  const onAbort = (): void => ac.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  return { ac, unlink: () => signal.removeEventListener('abort', onAbort) };
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('The upload was aborted', 'AbortError');
}

async function getBlobProps(
  client: UploadPageBlobClient,
  signal: AbortSignal,
): Promise<{ size: number; blobType?: string; metadata: Record<string, string>; etag?: string } | null> {
  try {
    const p = await client.getProperties({ abortSignal: signal });
    return { size: p.contentLength ?? 0, blobType: p.blobType, metadata: p.metadata ?? {}, etag: p.etag };
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) return null;
    throw err;
  }
}

/**
 * Uploads a disk image as a fixed VHD page blob. See UploadFixedVhdOptions for the input contract.
 * Progress reports a contiguousOffset that a caller can persist (for example as Temporal heartbeat
 * details) and pass back as resumeFromOffset; a resumed attempt re-sends at most the writes that
 * were in flight when the previous one stopped.
 */
export async function uploadFixedVhd(opts: UploadFixedVhdOptions): Promise<UploadFixedVhdResult> {
  const { blobClient, capacityBytes, restoreId } = opts;
  const maxWrite = opts.maxPageWriteBytes ?? DEFAULT_MAX_PAGE_WRITE;
  const concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY;
  const mergeGap = opts.mergeZeroGapBytes ?? DEFAULT_MERGE_ZERO_GAP;
  const checksum = opts.checksum ?? 'md5';
  const checksumWorkers = checksum === 'md5' ? (opts.checksumWorkers ?? defaultMd5Workers()) : 0;
  if (!Number.isSafeInteger(checksumWorkers) || checksumWorkers < 0) {
    throw inputError(`checksumWorkers must be a non-negative integer, got ${checksumWorkers}`);
  }

  const virtualSize = vhdVirtualSize(capacityBytes);
  const blobSize = virtualSize + VHD_FOOTER_SIZE;
  if (blobSize > AZURE_LIMITS.pageBlobMaxBytes) {
    throw limitError(`disk of ${capacityBytes} bytes needs a ${blobSize}-byte page blob, over Azure's 8 TiB page blob maximum`);
  }
  if (!Number.isSafeInteger(maxWrite) || maxWrite < SECTOR_SIZE || maxWrite % SECTOR_SIZE !== 0) {
    throw limitError(`maxPageWriteBytes ${maxWrite} must be a positive multiple of 512`);
  }
  if (maxWrite > AZURE_LIMITS.putPageMaxBytes) {
    throw limitError(`maxPageWriteBytes ${maxWrite} exceeds Azure's Put Page maximum of 4 MiB`);
  }
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
    throw inputError(`concurrency must be a positive integer, got ${concurrency}`);
  }
  if (!Number.isSafeInteger(mergeGap) || mergeGap < 0 || mergeGap % SECTOR_SIZE !== 0 || mergeGap > ZERO.length) {
    throw inputError(`mergeZeroGapBytes ${mergeGap} must be a multiple of 512 from 0 to ${ZERO.length}`);
  }
  const requestedResume = opts.resumeFromOffset ?? 0;
  if (!Number.isSafeInteger(requestedResume) || requestedResume < 0 || requestedResume > blobSize) {
    throw inputError(`resumeFromOffset ${requestedResume} is outside the blob [0, ${blobSize}]`);
  }

  const uuid = uuidFromRestoreId(restoreId, opts.diskIndex);
  const uuidText = formatUuid(uuid);
  const ownerMetadata = { [VHD_UUID_METADATA_KEY]: uuidText, [VHD_RESTORE_ID_METADATA_KEY]: encodeURIComponent(restoreId) };
  const footer = buildFixedVhdFooter({ currentSize: virtualSize, uuid, timestamp: opts.footerTimestamp });

  const { ac, unlink } = linkAbort(opts.signal);
  let ownPool: Md5WorkerPool | undefined;
  try {
    const signal = ac.signal;
    // Every in-flight SDK call listens on this signal; the default limit of 10 would warn at concurrency > 10.
    setMaxListeners(Math.max(10, concurrency * 2 + 8), signal);
    const throwIfAborted = (): void => {
      if (opts.signal?.aborted) throw abortReason(opts.signal);
      if (signal.aborted) throw abortReason(signal);
    };
    throwIfAborted();

    let resumeAt = requestedResume;
    let created = false;
    const existing = await getBlobProps(blobClient, signal);
    if (existing) {
      if (existing.blobType && existing.blobType !== 'PageBlob') {
        throw new RestoreError(
          FailureType.AlreadyExists,
          `blob ${blobUrlForRecord(blobClient.url)} already exists as a ${existing.blobType}, not a page blob`,
        );
      }
      if (existing.size !== blobSize) {
        throw new BlobSizeMismatchError(blobUrlForRecord(blobClient.url), blobSize, existing.size);
      }
      const owner = existing.metadata[VHD_UUID_METADATA_KEY];
      // A blob without our disk uuid was not made by this restore: it is never adopted or overwritten.
      if (owner !== uuidText) throw new ForeignBlobError(blobUrlForRecord(blobClient.url), owner, uuidText);
      const stored = Number(existing.metadata[UPLOAD_CHECKPOINT_METADATA_KEY]);
      if (opts.resumeFromOffset !== undefined && owner === uuidText && Number.isSafeInteger(stored) && stored <= blobSize) {
        resumeAt = Math.max(resumeAt, stored);
      }
    }
    // Data at or above the resume point is re-sent; align down so a partial last sector is re-sent whole.
    let start = Math.min(resumeAt - (resumeAt % SECTOR_SIZE), virtualSize);
    if (!existing || start === 0) {
      // (Re)creating zeroes the whole blob, which is what makes skipping zero ranges correct.
      // Conditional, so a blob someone else creates (or replaces ours with) meanwhile is never clobbered.
      const conditions = existing ? { ifMatch: existing.etag } : { ifNoneMatch: '*' };
      try {
        await blobClient.create(blobSize, { abortSignal: signal, conditions, metadata: ownerMetadata });
      } catch (err) {
        const status = (err as { statusCode?: number }).statusCode;
        if (status === 409 || status === 412) throw new ForeignBlobError(blobUrlForRecord(blobClient.url), undefined, uuidText);
        throw err;
      }
      created = true;
      start = 0;
    }

    let bytesSent = 0;
    let pagesSent = 0;
    let scanPos = start;
    let coveredInput = 0;
    let pending = null as PendingRun | null;
    const order: WriteEntry[] = [];
    const inflight = new Set<Promise<void>>();
    let firstError: unknown = undefined;
    let lastReported = -1;
    // The resume window and the checkpoint the blob's metadata is known to hold.
    const window = concurrency * maxWrite;
    const checkpointStride = Math.max(maxWrite, Math.floor(window / 4));
    let durable = start;
    let checkpointing: Promise<void> | null = null;

    const contiguousOffset = (): number => {
      while (order.length > 0 && order[0].done) order.shift();
      if (order.length > 0) return order[0].start;
      if (pending) return pending.start;
      return scanPos;
    };
    const zeroBytesSkipped = (): number => Math.max(0, Math.min(scanPos, capacityBytes) - Math.min(start, capacityBytes) - coveredInput);
    const report = (force: boolean): void => {
      if (!opts.onProgress) return;
      const c = contiguousOffset();
      if (!force && c === lastReported) return;
      lastReported = c;
      opts.onProgress({ contiguousOffset: c, bytesSent, pagesSent, zeroBytesSkipped: zeroBytesSkipped() });
    };

    const fail = (err: unknown): void => {
      firstError ??= err;
      ac.abort(err);
    };
    const storeCheckpoint = (at: number): Promise<void> =>
      blobClient.setMetadata({ ...ownerMetadata, [UPLOAD_CHECKPOINT_METADATA_KEY]: String(at) }, { abortSignal: signal }).then(() => {
        durable = Math.max(durable, at);
      });
    /** Stores contiguousOffset in the blob when it has moved on enough (or `force`), one call at a time. */
    const checkpoint = (force: boolean): void => {
      if (checkpointing) return;
      const at = contiguousOffset();
      if (at <= durable || (!force && at - durable < checkpointStride)) return;
      checkpointing = storeCheckpoint(at)
        .catch(fail)
        .finally(() => {
          checkpointing = null;
        });
    };

    let pool: Md5WorkerPool | undefined;
    if (checksumWorkers > 0) {
      pool = checksumWorkers === defaultMd5Workers() ? sharedMd5Pool() : (ownPool = new Md5WorkerPool(checksumWorkers));
    }
    // With hashing on workers, each write is assembled in a shared buffer the worker reads in place;
    // there are never more than `concurrency` of them, reused from write to write.
    const freeSlots: Buffer[] = [];

    const sendPage = async (offset: number, body: Buffer): Promise<void> => {
      assertPageWrite(offset, body.length, blobSize);
      if (body.length > maxWrite) throw limitError(`page write of ${body.length} bytes exceeds maxPageWriteBytes ${maxWrite}`);
      let md5: Buffer | undefined;
      if (checksum === 'md5') {
        md5 = pool && body.buffer instanceof SharedArrayBuffer ? await pool.digest(body) : createHash('md5').update(body).digest();
      }
      await blobClient.uploadPages(body, offset, body.length, {
        abortSignal: signal,
        transactionalContentMD5: md5,
      });
    };

    const dispatch = async (run: PendingRun): Promise<void> => {
      const entry: WriteEntry = { start: run.start, done: false };
      order.push(entry);
      // At most `concurrency` writes from the oldest unacknowledged one, including later ones that already
      // completed out of order, and none reaching past the stored checkpoint + window: that bounds what a
      // resume can re-send, even when one slow write holds the offset back or the process dies.
      for (;;) {
        // A failed write never completes, so check for failure before waiting on the window.
        if (firstError !== undefined) throw firstError;
        throwIfAborted();
        contiguousOffset();
        const withinWindow = run.start + run.length <= durable + window;
        if (order.indexOf(entry) < concurrency && withinWindow) break;
        if (!withinWindow) checkpoint(true);
        await Promise.race(checkpointing ? [...inflight, checkpointing] : inflight);
      }
      let slot: Buffer | undefined;
      let body: Buffer;
      if (pool) {
        slot = freeSlots.pop() ?? Buffer.from(new SharedArrayBuffer(maxWrite));
        let at = 0;
        for (const piece of run.pieces) at += piece.copy(slot, at);
        body = slot.subarray(0, run.length);
      } else {
        body = run.pieces.length === 1 ? run.pieces[0] : Buffer.concat(run.pieces, run.length);
      }
      const p: Promise<void> = sendPage(run.start, body).then(() => {
        entry.done = true;
        bytesSent += body.length;
        pagesSent += 1;
        try {
          checkpoint(false);
          report(true);
        } catch (err) {
          fail(err);
        }
      }, fail);
      const tracked = p.finally(() => {
        inflight.delete(tracked);
        if (slot) freeSlots.push(slot);
      });
      inflight.add(tracked);
    };

    const flush = async (): Promise<void> => {
      if (!pending) return;
      const run = pending;
      pending = null;
      await dispatch(run);
    };

    /** Queues source bytes [absStart, absStart + piece.length) for writing; piece is sector-aligned. */
    const appendData = async (absStart: number, piece: Buffer): Promise<void> => {
      let at = absStart;
      let rest = piece;
      while (rest.length > 0) {
        if (pending && pending.start + pending.length !== at) {
          // A short zero gap rides along in the same write; a long one ends it.
          const gap = at - (pending.start + pending.length);
          if (gap > 0 && gap <= mergeGap && pending.length + gap < maxWrite) {
            pending.pieces.push(ZERO.subarray(0, gap));
            pending.length += gap;
            coveredInput += gap;
          } else {
            await flush();
          }
        }
        if (pending && pending.length === maxWrite) await flush();
        if (!pending) pending = { start: at, length: 0, pieces: [] };
        const take = Math.min(rest.length, maxWrite - pending.length);
        pending.pieces.push(rest.subarray(0, take));
        pending.length += take;
        at += take;
        rest = rest.subarray(take);
      }
    };

    try {
      let expected: number | undefined;
      let lastZeroReport = start;
      const startedBelowCapacity = start < capacityBytes;
      const source = typeof opts.blocks === 'function' ? opts.blocks(start) : opts.blocks;
      for await (const block of source) {
        if (firstError !== undefined) throw firstError;
        throwIfAborted();
        const { offset, length, data } = block;
        if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0) {
          throw inputError(`block at ${offset} of ${length} bytes is not a valid range`);
        }
        if (expected === undefined) {
          if (offset > start) throw inputError(`first block starts at ${offset}, after the resume point ${start}`);
        } else if (offset !== expected) {
          throw inputError(`block at ${offset} does not follow the previous block, which ended at ${expected}`);
        }
        const end = offset + length;
        if (end > capacityBytes) throw inputError(`block [${offset}, ${end}) runs past the disk capacity ${capacityBytes}`);
        if (offset % SECTOR_SIZE !== 0 || (length % SECTOR_SIZE !== 0 && end !== capacityBytes)) {
          throw inputError(`block [${offset}, ${end}) is not 512-byte aligned`);
        }
        if (data !== null && data.length !== length) {
          throw inputError(`block at ${offset} declares ${length} bytes but carries ${data.length}`);
        }
        expected = end;
        if (end <= start) continue;

        const from = Math.max(offset, start);
        if (data !== null) {
          const runs: [number, number][] = [];
          forEachNonZeroRun(data, from - offset, length, (s, e) => runs.push([s, e]));
          for (const [s, e] of runs) {
            const alignedEnd = e - ((e - s) % SECTOR_SIZE);
            if (alignedEnd > s) await appendData(offset + s, data.subarray(s, alignedEnd));
            if (alignedEnd < e) {
              // The disk ends mid-sector: send that sector padded with zeros.
              const last = Buffer.alloc(SECTOR_SIZE);
              data.copy(last, 0, alignedEnd, e);
              await appendData(offset + alignedEnd, last);
            }
            coveredInput += e - s;
          }
        }
        scanPos = end;
        if (pending && scanPos - (pending.start + pending.length) > mergeGap) await flush();
        if (opts.onProgress && contiguousOffset() - lastZeroReport >= ZERO_PROGRESS_STRIDE) {
          lastZeroReport = contiguousOffset();
          report(false);
        }
      }
      // A short input would otherwise leave silent zeros in the disk, so the blocks must reach capacity.
      if (expected === undefined ? startedBelowCapacity : expected !== capacityBytes) {
        throw inputError(`input ended at ${expected ?? 'the first block'}, before the disk capacity ${capacityBytes}`);
      }
      await flush();
      await Promise.all(inflight);
      if (firstError !== undefined) throw firstError;
      throwIfAborted();
      // Between capacity and the rounded virtual size nothing is written: the blob is zero there.
      scanPos = Math.max(scanPos, virtualSize);
      report(false);

      await sendPage(virtualSize, footer);
      bytesSent += footer.length;
      pagesSent += 1;
      scanPos = blobSize;
      // A retry after this point (say the result was lost with the worker) then has nothing to send.
      await checkpointing;
      await storeCheckpoint(blobSize);
      report(true);
    } catch (err) {
      // Recorded before aborting, so the writes that the abort cancels cannot mask what went wrong.
      firstError ??= err;
      ac.abort(err);
      await Promise.allSettled(checkpointing ? [...inflight, checkpointing] : inflight);
      if (opts.signal?.aborted) throw abortReason(opts.signal);
      throw firstError ?? err;
    }

    return {
      blobSize,
      virtualSize,
      bytesSent,
      zeroBytesSkipped: zeroBytesSkipped(),
      pageWrites: pagesSent,
      footer,
      resumedFrom: start,
      created,
    };
  } finally {
    unlink();
    await ownPool?.close();
  }
}

/** A page range as listPageRanges reports it: inclusive byte offsets. */
export interface PageRange {
  start: number;
  end: number;
}

export interface VerifyUploadedVhdOptions {
  capacityBytes: number;
  /**
   * Where the source has data. When given, every page range must lie inside these (no zero data was
   * written) and every one of them must be covered (nothing was lost). Compared at 512-byte granularity.
   */
  expectedNonZeroRanges?: { offset: number; length: number }[];
  signal?: AbortSignal;
}

export interface VerifyUploadedVhdResult {
  ok: boolean;
  problems: string[];
  /** Written ranges, merged where adjacent. */
  pageRanges: PageRange[];
  footer: VhdFooter | null;
}

/** Merges inclusive ranges that overlap or touch. */
export function mergeRanges(ranges: PageRange[]): PageRange[] {
  const sorted = [...ranges].sort((a, b) => a.start - b.start);
  const out: PageRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end + 1) last.end = Math.max(last.end, r.end);
    else out.push({ start: r.start, end: r.end });
  }
  return out;
}

/** Parts of `a` not covered by `b`; both sorted, merged, inclusive. */
function subtractRanges(a: PageRange[], b: PageRange[]): PageRange[] {
  const out: PageRange[] = [];
  let j = 0;
  for (const r of a) {
    let cur = r.start;
    while (j < b.length && b[j].end < cur) j++;
    let k = j;
    while (cur <= r.end) {
      if (k >= b.length || b[k].start > r.end) {
        out.push({ start: cur, end: r.end });
        break;
      }
      if (b[k].start > cur) out.push({ start: cur, end: b[k].start - 1 });
      cur = Math.max(cur, b[k].end + 1);
      k++;
    }
  }
  return out;
}

function describe(ranges: PageRange[], max = 5): string {
  const shown = ranges.slice(0, max).map((r) => `[${r.start}, ${r.end + 1})`);
  return shown.join(', ') + (ranges.length > max ? ` and ${ranges.length - max} more` : '');
}

/**
 * Checks an uploaded VHD blob: size N MiB + 512, a valid fixed footer of the right size, nothing
 * written in the zero tail, and (optionally) written ranges matching the source's non-zero ranges.
 * Uses listPageRanges, whose ranges are inclusive; the deprecated getPageRanges is off by one.
 */
export async function verifyUploadedVhd(blobClient: PageBlobClient, opts: VerifyUploadedVhdOptions): Promise<VerifyUploadedVhdResult> {
  const problems: string[] = [];
  const virtualSize = vhdVirtualSize(opts.capacityBytes);
  const blobSize = virtualSize + VHD_FOOTER_SIZE;
  const signal = opts.signal;

  const props = await blobClient.getProperties({ abortSignal: signal });
  const size = props.contentLength ?? 0;
  if (props.blobType && props.blobType !== 'PageBlob') problems.push(`blob type is ${props.blobType}, not PageBlob`);
  if (size !== blobSize) problems.push(`blob size ${size} != expected ${blobSize} (${virtualSize} + 512)`);
  if (size % (1024 * 1024) !== VHD_FOOTER_SIZE) problems.push(`blob size ${size} is not N MiB + 512`);

  let footer: VhdFooter | null = null;
  if (size >= VHD_FOOTER_SIZE) {
    const tail = await blobClient.downloadToBuffer(size - VHD_FOOTER_SIZE, VHD_FOOTER_SIZE, { abortSignal: signal });
    footer = parseVhdFooter(tail);
    problems.push(...footerProblems(footer, virtualSize));
  }

  const raw: PageRange[] = [];
  for await (const r of blobClient.listPageRanges(0, undefined, { abortSignal: signal })) {
    raw.push({ start: r.start, end: r.end });
  }
  const pageRanges = mergeRanges(raw);

  const footerRange: PageRange = { start: virtualSize, end: blobSize - 1 };
  if (subtractRanges([footerRange], pageRanges).length > 0) problems.push('the footer page was never written');
  const dataRanges = subtractRanges(pageRanges, [footerRange]);
  const dataEnd = Math.ceil(opts.capacityBytes / SECTOR_SIZE) * SECTOR_SIZE;
  if (dataEnd < virtualSize) {
    const inTail = subtractRanges(dataRanges, [{ start: 0, end: dataEnd - 1 }]);
    if (inTail.length > 0) problems.push(`pages written past the disk capacity, in the zero tail: ${describe(inTail)}`);
  }

  if (opts.expectedNonZeroRanges) {
    const expected = mergeRanges(
      opts.expectedNonZeroRanges
        .filter((r) => r.length > 0)
        .map((r) => ({
          start: r.offset - (r.offset % SECTOR_SIZE),
          end: Math.ceil((r.offset + r.length) / SECTOR_SIZE) * SECTOR_SIZE - 1,
        })),
    );
    const missing = subtractRanges(expected, dataRanges);
    if (missing.length > 0) problems.push(`source data ranges not written: ${describe(missing)}`);
    const extra = subtractRanges(dataRanges, expected);
    if (extra.length > 0) problems.push(`pages written where the source is zero: ${describe(extra)}`);
  }

  return { ok: problems.length === 0, problems, pageRanges, footer };
}

/** The disk uuid a restore's upload stamps into its blob's metadata (and the VHD footer). */
export function vhdOwnerUuid(restoreId: string, diskIndex?: number): string {
  return formatUuid(uuidFromRestoreId(restoreId, diskIndex));
}

export type OwnedBlobState = 'absent' | 'ours' | 'foreign';

/** Whether the blob exists and carries this restore disk's uuid; read before creating or deleting it. */
export async function vhdBlobOwnership(
  blobClient: Pick<PageBlobClient, 'getProperties'>,
  restoreId: string,
  diskIndex: number,
): Promise<{ state: OwnedBlobState; etag?: string; owner?: string }> {
  try {
    const p = await blobClient.getProperties();
    const owner = p.metadata?.[VHD_UUID_METADATA_KEY];
    return { state: owner === vhdOwnerUuid(restoreId, diskIndex) ? 'ours' : 'foreign', etag: p.etag, owner };
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) return { state: 'absent' };
    throw err;
  }
}

/**
 * Deletes the blob only when this restore disk made it (read, check the uuid, delete if the etag is
 * unchanged): compensation never removes a blob the uploader refused as foreign.
 */
export async function deleteOwnedVhdBlob(
  blobClient: Pick<PageBlobClient, 'getProperties' | 'deleteIfExists'>,
  restoreId: string,
  diskIndex: number,
): Promise<OwnedBlobState> {
  const o = await vhdBlobOwnership(blobClient, restoreId, diskIndex);
  if (o.state !== 'ours') return o.state;
  try {
    await blobClient.deleteIfExists({ conditions: { ifMatch: o.etag }, deleteSnapshots: 'include' });
  } catch (err) {
    // Replaced since we read it: no longer ours to delete.
    if ((err as { statusCode?: number }).statusCode === 412) return 'foreign';
    throw err;
  }
  return 'ours';
}
