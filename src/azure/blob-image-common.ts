/** What reading and writing back a blob image share: client types, the chunk snapshot, checks, the blob's state. */
import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import type { PageBlobClient } from '@azure/storage-blob';
import { FailureType, RestoreError } from '../domain/errors';
import { blobUrlForRecord } from './blob-url';
import type { PageRange } from './pageblob-verify';
import { AZURE_LIMITS, VHD_FOOTER_SIZE, vhdVirtualSize } from './vhd';
import { KiB, MiB } from '../domain/units';

/** What materializeVhdBlob needs of a PageBlobClient; a wrapper (for metrics or tests) can stand in. */
export type BlobImageReadClient = Pick<PageBlobClient, 'url' | 'getProperties' | 'listPageRanges' | 'download'>;

/** What writeBackChanges needs of a PageBlobClient. */
export type BlobImageWriteClient = Pick<PageBlobClient, 'url' | 'getProperties' | 'uploadPages' | 'clearPages'>;

export type BlobImageClient = BlobImageReadClient & BlobImageWriteClient;

/**
 * The content of a disk image as it was read from the blob, in a form that finds changes cheaply:
 * a hash per chunk that held a non-zero byte. Every other chunk was all zeros.
 */
export interface ImageSnapshot {
  capacityBytes: number;
  chunkSize: number;
  /** Indices of the chunks that held a non-zero byte, ascending. */
  chunks: Uint32Array;
  /** SNAPSHOT_HASH_BYTES of truncated SHA-256 per entry of `chunks`, in the same order. */
  hashes: Buffer;
  /** The blob's ETag when it was read; write-back refuses to overwrite a blob someone else changed since. */
  etag?: string;
}

export interface MaterializeVhdBlobOptions {
  /** Source disk capacity in bytes: the VHD's data part, without the footer (and without 1 MiB rounding). */
  capacityBytes: number;
  /** The local image to create (replaced when it exists); a sparse file of capacityBytes. */
  imagePath: string;
  signal?: AbortSignal;
  /** Downloads in flight; each holds one buffer of up to 4 MiB. */
  concurrency?: number;
  /** Granularity of change detection: a power of two from 4 KiB to 4 MiB. Defaults to 64 KiB. */
  chunkSize?: number;
}

export interface MaterializeVhdBlobResult {
  imagePath: string;
  /** The blob's written ranges inside the disk capacity, merged, with inclusive ends as listPageRanges reports them. */
  allocatedRanges: PageRange[];
  /**
   * Data bytes fetched from the blob: whole chunks around the allocated ranges, plus small unallocated
   * gaps fetched to save requests (the 512-byte footer read is not counted).
   */
  bytesDownloaded: number;
  snapshot: ImageSnapshot;
}

export interface WriteBackChangesOptions {
  imagePath: string;
  capacityBytes: number;
  /** The snapshot materializeVhdBlob (or an earlier writeBackChanges) returned for this blob. */
  snapshot: ImageSnapshot;
  signal?: AbortSignal;
  /** Largest Put Page payload; at most Azure's 4 MiB. */
  maxPageWriteBytes?: number;
  /** Put Page / clear calls in flight. */
  concurrency?: number;
}

export interface WriteBackChangesResult {
  /** Bytes uploaded plus bytes cleared. */
  changedBytes: number;
  uploadedBytes: number;
  clearedBytes: number;
  /** Put Page calls made, clears included. */
  pageWrites: number;
  /** Blob ranges written or cleared, merged, with inclusive ends. */
  ranges: PageRange[];
  /** The blob's content after the write-back, for a further edit without downloading again. */
  snapshot: ImageSnapshot;
  /**
   * How the edited image was scanned: only its data segments (SEEK_DATA/SEEK_HOLE), or every byte
   * when the segments could not be listed.
   */
  scan: 'data-segments' | 'full';
}

export const DEFAULT_CHUNK_SIZE = 64 * KiB;

/** SHA-256 cut to 128 bits: ample against accidental equality, and small for a densely written disk. */
export const SNAPSHOT_HASH_BYTES = 16;

export const DEFAULT_CONCURRENCY = 8;

/** Largest download, and the unit of memory each download holds. */
export const SPAN_BYTES = 4 * MiB;

/** Chunk indices are held in a Uint32Array. */
const MAX_CHUNKS = 2 ** 32 - 1;

const ZERO = Buffer.alloc(256 * KiB);

/** A half-open byte range [start, end). */
export interface Extent {
  start: number;
  end: number;
}

export function inputError(message: string): RestoreError {
  return new RestoreError(FailureType.InvalidRequest, message);
}

export function isZero(d: Buffer): boolean {
  if (d.length === 0) return true;
  if (d[0] !== 0 || d[d.length - 1] !== 0) return false;
  for (let at = 0; at < d.length; at += ZERO.length) {
    const n = Math.min(ZERO.length, d.length - at);
    if (!d.subarray(at, at + n).equals(ZERO.subarray(0, n))) return false;
  }
  return true;
}

export function chunkHash(d: Buffer): Buffer {
  return createHash('sha256').update(d).digest().subarray(0, SNAPSHOT_HASH_BYTES);
}

export function checkCapacity(capacityBytes: number): void {
  if (!Number.isSafeInteger(capacityBytes) || capacityBytes <= 0) {
    throw inputError(`capacityBytes must be a positive integer, got ${capacityBytes}`);
  }
  if (vhdVirtualSize(capacityBytes) + VHD_FOOTER_SIZE > AZURE_LIMITS.pageBlobMaxBytes) {
    throw new RestoreError(FailureType.AzureLimit, `a disk of ${capacityBytes} bytes does not fit in an Azure page blob`);
  }
}

export function checkChunkSize(chunkSize: number, capacityBytes: number): void {
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 4 * KiB || chunkSize > SPAN_BYTES || (chunkSize & (chunkSize - 1)) !== 0) {
    throw inputError(`chunkSize must be a power of two from 4 KiB to 4 MiB, got ${chunkSize}`);
  }
  if (Math.ceil(capacityBytes / chunkSize) > MAX_CHUNKS) {
    throw inputError(`chunkSize ${chunkSize} is too small for a disk of ${capacityBytes} bytes`);
  }
}

export function checkConcurrency(concurrency: number): void {
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
    throw inputError(`concurrency must be a positive integer, got ${concurrency}`);
  }
}

/** A controller that aborts with `signal`, and a function that detaches it again. */
export function linkAbort(signal: AbortSignal | undefined, listeners: number): { ac: AbortController; unlink: () => void } {
  const ac = new AbortController();
  // Every in-flight SDK call listens on this signal; the default limit of 10 would warn past that.
  setMaxListeners(Math.max(10, listeners), ac.signal);
  if (!signal) return { ac, unlink: () => undefined };
  if (signal.aborted) ac.abort(signal.reason);
  const onAbort = (): void => ac.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  return { ac, unlink: () => signal.removeEventListener('abort', onAbort) };
}

/** Collects chunk hashes in ascending chunk order into the compact arrays of an ImageSnapshot. */
export class SnapshotBuilder {
  private chunks: Uint32Array;
  private hashes: Buffer;
  private count = 0;

  constructor(initial = 1024) {
    this.chunks = new Uint32Array(Math.max(1, initial));
    this.hashes = Buffer.alloc(this.chunks.length * SNAPSHOT_HASH_BYTES);
  }

  add(index: number, hash: Buffer): void {
    if (this.count === this.chunks.length) {
      const chunks = new Uint32Array(this.chunks.length * 2);
      chunks.set(this.chunks);
      const hashes = Buffer.alloc(chunks.length * SNAPSHOT_HASH_BYTES);
      this.hashes.copy(hashes);
      this.chunks = chunks;
      this.hashes = hashes;
    }
    this.chunks[this.count] = index;
    hash.copy(this.hashes, this.count * SNAPSHOT_HASH_BYTES, 0, SNAPSHOT_HASH_BYTES);
    this.count++;
  }

  /** Arrays sized to what was added. */
  build(): { chunks: Uint32Array; hashes: Buffer } {
    return {
      chunks: this.chunks.slice(0, this.count),
      hashes: Buffer.from(this.hashes.subarray(0, this.count * SNAPSHOT_HASH_BYTES)),
    };
  }
}

export async function blobState(
  client: Pick<PageBlobClient, 'url' | 'getProperties'>,
  capacityBytes: number,
  signal: AbortSignal,
): Promise<{ virtualSize: number; etag?: string }> {
  const virtualSize = vhdVirtualSize(capacityBytes);
  const blobSize = virtualSize + VHD_FOOTER_SIZE;
  const props = await client.getProperties({ abortSignal: signal });
  if (props.blobType && props.blobType !== 'PageBlob') {
    throw inputError(`blob ${blobUrlForRecord(client.url)} is a ${props.blobType}, not a page blob holding a VHD`);
  }
  const size = props.contentLength ?? 0;
  if (size !== blobSize) {
    throw inputError(
      `page blob ${blobUrlForRecord(client.url)} is ${size} bytes, but a fixed VHD of a ${capacityBytes}-byte disk is ${blobSize} bytes`,
    );
  }
  return { virtualSize, etag: props.etag };
}
