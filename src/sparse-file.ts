import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { FailureType, RestoreError } from './domain/errors';

/** Runs of zeros at least this long (and aligned) stay holes in a local copy. */
const HOLE = 64 * 1024;
const ZEROS = Buffer.alloc(HOLE);
const BLOCK = 1024 * 1024;
/** A ranged copy asks for at most this much in one request, so no response is held open for long. */
const RANGE_PIECE = 64 * 1024 * 1024;

/**
 * Writes the bytes of `body` into `fh` from `start`, leaving aligned all-zero runs unwritten (holes in a
 * file that was truncated to size); returns how many bytes the stream gave.
 */
async function writeSparseAt(
  fh: fsp.FileHandle,
  body: Readable | AsyncIterable<Buffer>,
  start: number,
  onBytes?: (n: number) => void,
): Promise<number> {
  const block = Buffer.alloc(BLOCK);
  let fill = 0;
  let offset = start;
  const flush = async () => {
    for (let at = 0; at < fill; at += HOLE) {
      const end = Math.min(at + HOLE, fill);
      // A memcmp against zeros: a disk is mostly zeros, and a byte-wise scan of them costs more than the read.
      if (!block.subarray(at, end).equals(ZEROS.subarray(0, end - at))) await fh.write(block, at, end - at, offset + at);
    }
    offset += fill;
    fill = 0;
  };
  for await (const chunk of body as AsyncIterable<Buffer>) {
    let at = 0;
    while (at < chunk.length) {
      const n = Math.min(chunk.length - at, block.length - fill);
      chunk.copy(block, fill, at, at + n);
      fill += n;
      at += n;
      if (fill === block.length) await flush();
    }
    onBytes?.(chunk.length);
  }
  await flush();
  return offset - start;
}

function shortRead(file: string, got: number, want: number, at: number): RestoreError {
  return new RestoreError(FailureType.AzureTransient, `read ${got} bytes at ${at} for ${path.basename(file)}, expected ${want}`, false);
}

/** Copies `length` bytes of a stream into `file` from offset 0, leaving zero runs as holes; returns the bytes read. */
export async function copyToSparseFile(
  body: Readable | AsyncIterable<Buffer>,
  file: string,
  length: number,
  onBytes?: (n: number) => void,
): Promise<number> {
  const fh = await fsp.open(file, 'w');
  try {
    await fh.truncate(length);
    const n = await writeSparseAt(fh, body, 0, onBytes);
    if (n !== length)
      throw new RestoreError(FailureType.VSphereFault, `read ${n} bytes for ${path.basename(file)}, expected ${length}`, false);
    return n;
  } finally {
    await fh.close();
  }
}

/** Bytes `offset` to `offset + length` of a disk. */
export interface DataRange {
  offset: number;
  length: number;
}

/** A source that lists where its data is and reads ranges of it (a managed disk's export, say). */
export interface RangedSource {
  readonly dataSize: number;
  dataRanges(): Promise<DataRange[]>;
  stream(offset: number, length: number): Promise<Readable>;
}

/**
 * Copies the data ranges of `source` into a sparse `file` of its size: the rest stays holes, which is
 * what it reads as. Returns the bytes transferred.
 */
export async function copyRangesToSparseFile(source: RangedSource, file: string, onBytes?: (n: number) => void): Promise<number> {
  const ranges = await source.dataRanges();
  const fh = await fsp.open(file, 'w');
  let moved = 0;
  try {
    await fh.truncate(source.dataSize);
    for (const r of ranges) {
      for (let at = r.offset; at < r.offset + r.length; at += RANGE_PIECE) {
        const length = Math.min(RANGE_PIECE, r.offset + r.length - at);
        const n = await writeSparseAt(fh, await source.stream(at, length), at, onBytes);
        if (n !== length) throw shortRead(file, n, length, at);
        moved += n;
      }
    }
    return moved;
  } finally {
    await fh.close();
  }
}
