/**
 * Editing the guest disk inside an uploaded fixed-VHD page blob.
 *
 * Guest preparation for Azure edits the disk once it is in its page blob. Production would attach the
 * disk to the backup server or a helper appliance; the lab stands in for that by copying the blob's
 * written page ranges into a local sparse file, letting the guest tools edit that file, and writing
 * back only the pages that changed.
 *
 * Azure reads never-written pages as zeros, so the local copy needs only the allocated ranges. While
 * they are downloaded, a hash of every non-zero chunk is kept (the snapshot); write-back compares the
 * edited file against it, so finding the changes costs neither a second download nor a copy of the
 * original data. Changed chunks go back as 512-aligned Put Page calls of at most 4 MiB with an MD5
 * each, chunks that became all zeros are cleared, and the footer is never touched.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { PageRange } from './pageblob-verify';
import type { BlobImageClient } from './blob-image-common';
import { materializeVhdBlob } from './blob-image-read';
import { writeBackChanges } from './blob-image-write';
import { throwIfAborted } from './page-write';

export {
  DEFAULT_CHUNK_SIZE,
  SNAPSHOT_HASH_BYTES,
  type BlobImageClient,
  type BlobImageReadClient,
  type BlobImageWriteClient,
  type Extent,
  type ImageSnapshot,
  type MaterializeVhdBlobOptions,
  type MaterializeVhdBlobResult,
  type WriteBackChangesOptions,
  type WriteBackChangesResult,
} from './blob-image-common';

export interface EditVhdBlobOptions<T> {
  capacityBytes: number;
  /** Where the temporary image lives while it is edited; it needs room for the allocated data. */
  workDir: string;
  /** Edits the local image in place, for example prepareLinuxDisk. It must not change the file's size. */
  edit: (imagePath: string) => Promise<T>;
  signal?: AbortSignal;
  concurrency?: number;
  chunkSize?: number;
  maxPageWriteBytes?: number;
}

export interface EditVhdBlobResult<T> {
  result: T;
  changedBytes: number;
  pageWrites: number;
  bytesDownloaded: number;
  /** Blob ranges written or cleared, with inclusive ends. */
  ranges: PageRange[];
  timings: { materializeMs: number; editMs: number; writeBackMs: number };
}

/**
 * Edits the guest disk in a fixed-VHD page blob: materialises it under workDir, runs `edit` on the
 * local image, and writes back only what changed. The local image is removed afterwards, also on failure.
 */
export async function editVhdBlob<T>(blobClient: BlobImageClient, opts: EditVhdBlobOptions<T>): Promise<EditVhdBlobResult<T>> {
  const dir = await fsp.mkdtemp(path.join(opts.workDir, 'blob-image-'));
  try {
    const imagePath = path.join(dir, 'disk.img');
    let t = performance.now();
    const m = await materializeVhdBlob(blobClient, {
      capacityBytes: opts.capacityBytes,
      imagePath,
      signal: opts.signal,
      concurrency: opts.concurrency,
      chunkSize: opts.chunkSize,
    });
    const materializeMs = performance.now() - t;
    throwIfAborted(opts.signal);
    t = performance.now();
    const result = await opts.edit(imagePath);
    const editMs = performance.now() - t;
    throwIfAborted(opts.signal);
    t = performance.now();
    const wb = await writeBackChanges(blobClient, {
      imagePath,
      capacityBytes: opts.capacityBytes,
      snapshot: m.snapshot,
      signal: opts.signal,
      concurrency: opts.concurrency,
      maxPageWriteBytes: opts.maxPageWriteBytes,
    });
    const writeBackMs = performance.now() - t;
    return {
      result,
      changedBytes: wb.changedBytes,
      pageWrites: wb.pageWrites,
      bytesDownloaded: m.bytesDownloaded,
      ranges: wb.ranges,
      timings: { materializeMs, editMs, writeBackMs },
    };
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}
