/** Writing an edited image back into its page blob: only the chunks that differ from the snapshot. */
import { promises as fsp } from 'node:fs';
import { FailureType, RestoreError } from '../domain/errors';
import { blobUrlForRecord } from './blob-url';
import { mergeRanges } from './pageblob-verify';
import { AZURE_LIMITS, SECTOR_SIZE } from './vhd';
import {
  type BlobImageWriteClient,
  blobState,
  checkCapacity,
  checkChunkSize,
  checkConcurrency,
  chunkHash,
  DEFAULT_CONCURRENCY,
  type Extent,
  inputError,
  isZero,
  linkAbort,
  SNAPSHOT_HASH_BYTES,
  SnapshotBuilder,
  type WriteBackChangesOptions,
  type WriteBackChangesResult,
} from './blob-image-common';
import { listDataSegments } from './blob-image-read';
import { PageWriter } from './page-writer';
import { alignUp, throwIfAborted } from './page-write';
import { MiB } from '../domain/units';

/** Sequential read size of the write-back scan. */
const READ_BYTES = 8 * MiB;

/** Reads the extents of a file in order, one read ahead; a yielded view is valid until the next one is taken. */
async function* readExtents(fh: fsp.FileHandle, extents: Extent[], readBytes: number): AsyncGenerator<{ offset: number; data: Buffer }> {
  const pieces: Extent[] = [];
  for (const e of extents) {
    for (let s = e.start; s < e.end; s += readBytes) pieces.push({ start: s, end: Math.min(s + readBytes, e.end) });
  }
  const bufs = [Buffer.allocUnsafe(readBytes), Buffer.allocUnsafe(readBytes)];
  const readPiece = async (i: number): Promise<{ offset: number; data: Buffer }> => {
    const p = pieces[i];
    const len = p.end - p.start;
    const buf = bufs[i % 2];
    let got = 0;
    while (got < len) {
      const { bytesRead } = await fh.read(buf, got, len - got, p.start + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    // The file is checked to have the disk's size, so a short read means it shrank underneath us.
    if (got < len) throw new RestoreError(FailureType.GuestPreparation, `image ended at ${p.start + got} while reading up to ${p.end}`);
    return { offset: p.start, data: buf.subarray(0, len) };
  };
  let ahead = pieces.length > 0 ? readPiece(0) : null;
  // A failed read-ahead that is never awaited must not surface as an unhandled rejection.
  ahead?.catch(() => undefined);
  for (let i = 0; i < pieces.length; i++) {
    const cur = await ahead!;
    ahead = i + 1 < pieces.length ? readPiece(i + 1) : null;
    ahead?.catch(() => undefined);
    yield cur;
  }
}

/**
 * Writes the changes made to a materialised image back into its page blob: chunks whose content differs
 * from the snapshot are uploaded (only their non-zero sectors, for chunks that were all zeros), chunks
 * that became all zeros are cleared. The footer is never written.
 */
export async function writeBackChanges(blobClient: BlobImageWriteClient, opts: WriteBackChangesOptions): Promise<WriteBackChangesResult> {
  const { imagePath, capacityBytes, snapshot } = opts;
  const maxWrite = opts.maxPageWriteBytes ?? AZURE_LIMITS.putPageMaxBytes;
  const concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY;
  checkCapacity(capacityBytes);
  checkConcurrency(concurrency);
  if (!Number.isSafeInteger(maxWrite) || maxWrite < SECTOR_SIZE || maxWrite % SECTOR_SIZE !== 0) {
    throw new RestoreError(FailureType.AzureLimit, `maxPageWriteBytes ${maxWrite} must be a positive multiple of 512`);
  }
  if (maxWrite > AZURE_LIMITS.putPageMaxBytes) {
    throw new RestoreError(FailureType.AzureLimit, `maxPageWriteBytes ${maxWrite} exceeds Azure's Put Page maximum of 4 MiB`);
  }
  const { chunkSize } = snapshot;
  checkChunkSize(chunkSize, capacityBytes);
  if (snapshot.capacityBytes !== capacityBytes) {
    throw inputError(`the snapshot is of a ${snapshot.capacityBytes}-byte disk, not ${capacityBytes} bytes`);
  }
  if (snapshot.hashes.length !== snapshot.chunks.length * SNAPSHOT_HASH_BYTES) {
    throw inputError(`the snapshot holds ${snapshot.chunks.length} chunks but ${snapshot.hashes.length} bytes of hashes`);
  }

  const { ac, unlink } = linkAbort(opts.signal, concurrency * 2 + 8);
  const signal = ac.signal;
  let fh: fsp.FileHandle | undefined;
  let writer: PageWriter | undefined;
  try {
    throwIfAborted(signal);
    const { size: fileSize } = await fsp.stat(imagePath);
    if (fileSize !== capacityBytes) {
      throw new RestoreError(
        FailureType.GuestPreparation,
        `the edited image ${imagePath} is ${fileSize} bytes, not the disk's ${capacityBytes}: an edit must not resize the disk`,
      );
    }
    const { virtualSize, etag } = await blobState(blobClient, capacityBytes, signal);
    if (snapshot.etag !== undefined && etag !== undefined && etag !== snapshot.etag) {
      // Retryable: a fresh materialise and edit starts from the blob as it is now.
      throw new RestoreError(
        FailureType.AzureTransient,
        `page blob ${blobUrlForRecord(blobClient.url)} changed since it was read (ETag ${snapshot.etag}, now ${etag}); ` +
          'writing back would overwrite those changes',
        false,
      );
    }

    fh = await fsp.open(imagePath, 'r');
    // Some filesystems have reported dirty, not yet written data as a hole; flushed, there is nothing to miss.
    await fh.datasync();
    const { segments, method } = await listDataSegments(imagePath);
    const toRead: Extent[] = [];
    for (const s of segments) {
      const start = Math.floor(s.start / chunkSize) * chunkSize;
      const end = Math.min(alignUp(s.end, chunkSize), capacityBytes);
      const last = toRead[toRead.length - 1];
      if (last && start <= last.end) last.end = Math.max(last.end, end);
      else if (start < end) toRead.push({ start, end });
    }

    writer = new PageWriter({ client: blobClient, limit: virtualSize, maxWrite, concurrency, ac, recordRanges: true });
    const w = writer;
    const current = new SnapshotBuilder();
    const old = snapshot.chunks;
    let si = 0;
    const oldHash = (i: number): Buffer => snapshot.hashes.subarray(i * SNAPSHOT_HASH_BYTES, (i + 1) * SNAPSHOT_HASH_BYTES);
    /** Snapshot chunks below `index` that the scan skipped lie wholly in holes now: they became zeros. */
    const clearSkippedBelow = async (index: number): Promise<void> => {
      while (si < old.length && old[si] < index) {
        const start = old[si] * chunkSize;
        await w.clear(start, Math.min(chunkSize, capacityBytes - start));
        si++;
      }
    };

    const readBytes = Math.max(chunkSize, READ_BYTES - (READ_BYTES % chunkSize));
    for await (const { offset, data } of readExtents(fh, toRead, readBytes)) {
      throwIfAborted(signal);
      for (let at = 0; at < data.length; at += chunkSize) {
        const piece = data.subarray(at, Math.min(at + chunkSize, data.length));
        const start = offset + at;
        const index = start / chunkSize;
        await clearSkippedBelow(index);
        const known = si < old.length && old[si] === index;
        const zero = isZero(piece);
        if (known) {
          const before = oldHash(si);
          si++;
          if (zero) {
            await w.clear(start, piece.length);
            continue;
          }
          const now = chunkHash(piece);
          current.add(index, now);
          if (!now.equals(before)) await w.write(start, piece);
        } else if (!zero) {
          current.add(index, chunkHash(piece));
          // The blob holds zeros here, so only the non-zero sectors need sending.
          for (let s = 0; s < piece.length; ) {
            const e = Math.min(s + SECTOR_SIZE, piece.length);
            if (isZero(piece.subarray(s, e))) {
              s = e;
              continue;
            }
            let runEnd = e;
            while (runEnd < piece.length && !isZero(piece.subarray(runEnd, Math.min(runEnd + SECTOR_SIZE, piece.length)))) {
              runEnd = Math.min(runEnd + SECTOR_SIZE, piece.length);
            }
            await w.write(start + s, piece.subarray(s, runEnd));
            s = runEnd;
          }
        }
      }
    }
    await clearSkippedBelow(Number.MAX_SAFE_INTEGER);
    await fh.close();
    fh = undefined;
    await w.finish();

    const { chunks, hashes } = current.build();
    let nextEtag = etag;
    if (w.pagesSent > 0) nextEtag = (await blobClient.getProperties({ abortSignal: signal })).etag;

    return {
      changedBytes: w.bytesSent + w.clearedBytes,
      uploadedBytes: w.bytesSent,
      clearedBytes: w.clearedBytes,
      pageWrites: w.pagesSent,
      ranges: mergeRanges(w.ranges),
      snapshot: { capacityBytes, chunkSize, chunks, hashes, etag: nextEtag },
      scan: method === 'seek' ? 'data-segments' : 'full',
    };
  } catch (err) {
    ac.abort(err);
    await writer?.abandon();
    if (opts.signal?.aborted) throw opts.signal.reason ?? err;
    throw err;
  } finally {
    await fh?.close().catch(() => undefined);
    unlink();
  }
}
