/**
 * Upload of a raw disk image to an Azure page blob as a fixed VHD: the hot path of a restore to Azure.
 *
 * The blob is created at its final size (virtual size rounded to 1 MiB, plus the 512-byte footer), so
 * every page nobody writes reads back as zeros. That lets us skip zero data entirely: only 512-byte
 * sectors that hold a non-zero byte are sent, coalesced into Put Page calls of at most 4 MiB, with a
 * bounded number in flight. The footer goes last, so a blob without a valid footer is never mistaken
 * for a finished upload.
 */
import { setMaxListeners } from 'node:events';
import type { PageBlobClient } from '@azure/storage-blob';
import { FailureType, RestoreError } from '../domain/errors';
import { blobUrlForRecord } from './blob-url';
import { AZURE_LIMITS, buildFixedVhdFooter, formatUuid, SECTOR_SIZE, uuidFromRestoreId, VHD_FOOTER_SIZE, vhdVirtualSize } from './vhd';
import { defaultMd5Workers, Md5WorkerPool, sharedMd5Pool } from './pageblob-md5';
import { forEachNonZeroRun, limitError, ZERO } from './page-write';
import { UploadCheckpoint } from './pageblob-checkpoint';
import { PageWriter, type PageRun } from './page-writer';
import {
  BlobSizeMismatchError,
  ForeignBlobError,
  UPLOAD_CHECKPOINT_METADATA_KEY,
  VHD_RESTORE_ID_METADATA_KEY,
  VHD_UUID_METADATA_KEY,
} from './pageblob-ownership';

// The uploader's neighbours, re-exported so callers keep one import for upload, verify and ownership.
export {
  BlobSizeMismatchError,
  deleteOwnedVhdBlob,
  ForeignBlobError,
  UPLOAD_CHECKPOINT_METADATA_KEY,
  VHD_RESTORE_ID_METADATA_KEY,
  VHD_UUID_METADATA_KEY,
  vhdBlobOwnership,
  vhdOwnerUuid,
  type OwnedBlobState,
} from './pageblob-ownership';
export {
  mergeRanges,
  verifyUploadedVhd,
  type PageRange,
  type VerifyUploadedVhdOptions,
  type VerifyUploadedVhdResult,
} from './pageblob-verify';

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
   * Put Page calls in flight. It also sets the resume window, concurrency × maxPageWriteBytes: no more
   * bytes than that are issued above the checkpoint stored in the blob's metadata, so a resume re-sends at
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

const DEFAULT_MAX_PAGE_WRITE = AZURE_LIMITS.putPageMaxBytes;

const DEFAULT_CONCURRENCY = 8;
const DEFAULT_MERGE_ZERO_GAP = 64 * 1024;
/** Minimum advance through zero regions between progress callbacks when nothing completes. */
const ZERO_PROGRESS_STRIDE = 256 * 1024 * 1024;

function inputError(message: string): RestoreError {
  return new RestoreError(FailureType.InvalidRequest, message);
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

    let scanPos = start;
    let coveredInput = 0;
    let pending = null as PageRun | null;
    let firstError: unknown = undefined;
    let lastReported = -1;
    const fail = (err: unknown): void => {
      firstError ??= err;
      ac.abort(err);
    };
    // The resume window, and the checkpoint stored each time a quarter of it has been issued.
    const windowBytes = concurrency * maxWrite;
    const checkpoint = new UploadCheckpoint(
      blobClient,
      ownerMetadata,
      signal,
      start,
      Math.max(maxWrite, Math.floor(windowBytes / 4)),
      fail,
    );

    let pool: Md5WorkerPool | undefined;
    if (checksumWorkers > 0) {
      pool = checksumWorkers === defaultMd5Workers() ? sharedMd5Pool() : (ownPool = new Md5WorkerPool(checksumWorkers));
    }
    // No more than the window is issued above the checkpoint stored in the blob, which bounds what a resume
    // re-sends, even when one slow write holds the offset back or the process dies. Counted in bytes, not in
    // offsets: the zeros between sparse data are never sent, so they do not hold the writes back.
    const writes: PageWriter = new PageWriter({
      client: blobClient,
      limit: blobSize,
      maxWrite,
      concurrency,
      ac,
      checksum,
      md5Pool: pool,
      gate: {
        allows: (start, end) => checkpoint.issued.above(checkpoint.durable) + (end - start) <= windowBytes,
        admit: (start, end) => checkpoint.issued.add(start, end),
        blocked: () => checkpoint.advance(contiguousOffset, true),
        running: () => checkpoint.running,
      },
      onWritten: () => {
        checkpoint.advance(contiguousOffset, false);
        report(true);
      },
      throwIfAborted,
      onFailure: (err) => (firstError ??= err),
    });
    const contiguousOffset = (): number => writes.contiguousOffset(pending ? pending.start : scanPos);
    const zeroBytesSkipped = (): number => Math.max(0, Math.min(scanPos, capacityBytes) - Math.min(start, capacityBytes) - coveredInput);
    const report = (force: boolean): void => {
      if (!opts.onProgress) return;
      const c = contiguousOffset();
      if (!force && c === lastReported) return;
      lastReported = c;
      opts.onProgress({
        contiguousOffset: c,
        bytesSent: writes.bytesSent,
        pagesSent: writes.pagesSent,
        zeroBytesSkipped: zeroBytesSkipped(),
      });
    };
    const dispatch = (run: PageRun): Promise<void> => writes.send(run);

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
      await writes.finish();
      if (firstError !== undefined) throw firstError;
      throwIfAborted();
      // Between capacity and the rounded virtual size nothing is written: the blob is zero there.
      scanPos = Math.max(scanPos, virtualSize);
      report(false);

      // Last, once every data write has landed: a blob without a footer is never taken for a finished upload.
      await writes.send({ start: virtualSize, length: footer.length, pieces: [footer] });
      await writes.finish();
      scanPos = blobSize;
      // A retry after this point (say the result was lost with the worker) then has nothing to send.
      await checkpoint.running;
      await checkpoint.store(blobSize);
      report(true);
    } catch (err) {
      // Recorded before aborting, so the writes that the abort cancels cannot mask what went wrong.
      firstError ??= err;
      ac.abort(err);
      await Promise.allSettled(writes.pendingCalls());
      if (opts.signal?.aborted) throw abortReason(opts.signal);
      throw firstError ?? err;
    }

    return {
      blobSize,
      virtualSize,
      bytesSent: writes.bytesSent,
      zeroBytesSkipped: zeroBytesSkipped(),
      pageWrites: writes.pagesSent,
      footer,
      resumedFrom: start,
      created,
    };
  } finally {
    unlink();
    await ownPool?.close();
  }
}
