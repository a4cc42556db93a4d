/** Put Page rules and the sector scan that finds what to write: shared by the uploader and the blob-image editor. */
import { FailureType, RestoreError } from '../domain/errors';
import { AZURE_LIMITS, SECTOR_SIZE } from './vhd';

/** Zero regions are first tested in chunks of this size, then sector by sector. */
const ZERO_SCAN_CHUNK = 64 * 1024;

/** Zeros to compare with and to send: at least one whole Put Page. Never written to. */
export const ZERO = Buffer.alloc(Math.max(AZURE_LIMITS.putPageMaxBytes, ZERO_SCAN_CHUNK));

export function limitError(message: string): RestoreError {
  return new RestoreError(FailureType.AzureLimit, message);
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
export function forEachNonZeroRun(d: Buffer, from: number, to: number, onRun: (s: number, e: number) => void): void {
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

export function alignUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason ?? new DOMException('The operation was aborted', 'AbortError');
}
