import * as fs from 'node:fs/promises';
import * as zlib from 'node:zlib';
import { FailureType, RestoreError } from '../../domain/errors';
import { sharedImportWorkers, type StoreTarget, type StoredBlock } from '../workers';

/** Image formats we read; `vhd` is the Virtual PC / Hyper-V format qemu calls `vpc`. */
export const DISK_IMAGE_FORMATS = ['raw', 'vmdk', 'qcow2', 'vhd', 'vhdx'] as const;
export type DiskImageFormat = (typeof DISK_IMAGE_FORMATS)[number];

/** A contiguous range of the virtual disk; data null means the range reads as zeros (a hole). */
export interface Extent {
  offset: number;
  length: number;
  data: Buffer | null;
  /**
   * A consumer that is done with `data` (and every view of it) may call this once, so the reader can fill
   * the same memory again; one that never calls it leaves the buffer to the garbage collector.
   */
  release?: () => void;
  /**
   * Whole blocks of this extent the reader already hashed and stored (when asked to with
   * `ExtentOptions.store`): zero blocks with hash null, the others durable in the repository (file
   * data and name; the consumer syncs the directory).
   */
  stored?: StoredBlock[];
  /**
   * With `stored`: the same blocks once their new chunks are synced and named, `written` then telling which
   * were new. Until it resolves the chunks are not durable; a failure to store them rejects it.
   */
  synced?: Promise<StoredBlock[]>;
}

/** Where a reader that inflates on the import workers may store whole blocks itself, saving a round trip each. */
export interface ChunkStoreTarget {
  repoDir: string;
  blockSize: number;
}

export interface ExtentOptions {
  store?: ChunkStoreTarget;
}

/**
 * An opened disk image. `extents` yields the virtual disk from `from` to `to` in offset order, without
 * gaps; holes come as zero extents, never as zero-filled buffers. Buffers belong to the consumer.
 */
export interface DiskImage {
  readonly path: string;
  readonly format: DiskImageFormat;
  /** e.g. monolithicSparse, streamOptimized, v3, fixed, dynamic. */
  readonly subformat: string;
  readonly capacityBytes: number;
  extents(from?: number, to?: number, opts?: ExtentOptions): AsyncGenerator<Extent, void, undefined>;
  close(): Promise<void>;
}

export const SECTOR = 512;
import { MiB } from '../../domain/units';
/** Largest virtual disk we accept: above every format's own limit that matters here (VMDK 62 TB, VHDX 64 TB). */
export const MAX_CAPACITY_BYTES = 64 * 1024 * MiB * 1024;
/** Largest metadata table read in one piece (L1, GD, BAT); bounded by the file size too. */
export const MAX_TABLE_BYTES = 256 * MiB;

/** The error for a damaged or hostile image: names the file, the format, the field and what is wrong. */
export function imageError(file: string, format: string, field: string, what: string): RestoreError {
  return new RestoreError(FailureType.InvalidRequest, `disk image ${file} (${format}): ${field} ${what}`);
}

/** A file opened for positional reads; every read is checked against the file's end. */
export class ImageFile {
  private constructor(
    readonly path: string,
    private readonly handle: fs.FileHandle,
    readonly size: number,
  ) {}

  static async open(file: string): Promise<ImageFile> {
    const handle = await fs.open(file, 'r');
    try {
      const stat = await handle.stat();
      if (!stat.isFile()) throw new RestoreError(FailureType.InvalidRequest, `disk image ${file} is not a regular file`);
      return new ImageFile(file, handle, stat.size);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** Reads exactly `length` bytes at `offset`; `field` names what is read, for the error if it is past the end. */
  async readAt(offset: number, length: number, format: string, field: string): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.size) {
      throw imageError(this.path, format, field, `points to ${offset}..${offset + length}, past the end of the file (${this.size} bytes)`);
    }
    const buf = Buffer.allocUnsafe(length);
    let filled = 0;
    while (filled < length) {
      const { bytesRead } = await this.handle.read(buf, filled, length - filled, offset + filled);
      if (bytesRead === 0) throw imageError(this.path, format, field, `ends at ${offset + filled}: the file shrank while it was read`);
      filled += bytesRead;
    }
    return buf;
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

/**
 * How one range of the virtual disk is stored: zeros, bytes at a file offset, a deflated cluster, or
 * (for a backing chain) whatever another image maps there.
 */
export type Piece =
  | { kind: 'zero'; offset: number; length: number }
  | { kind: 'data'; offset: number; length: number; file: ImageFile; fileOffset: number; field: string }
  | {
      kind: 'deflate';
      offset: number;
      length: number;
      file: ImageFile;
      fileOffset: number;
      compressedLength: number;
      /** Size of the whole inflated cluster, and where this piece starts in it. */
      clusterLength: number;
      skip: number;
      /** Raw deflate (qcow2) or with a zlib header (VMDK). */
      raw: boolean;
      field: string;
    };

export type DataPiece = Extract<Piece, { kind: 'data' }>;
export type DeflatePiece = Extract<Piece, { kind: 'deflate' }>;

/** Reads coalesced into runs of at most this size. */
const MAX_RUN_BYTES = 16 * MiB;
/** Data held ahead of the consumer: the read of the next run overlaps with the consumer's work. */
const READ_AHEAD_BYTES = 32 * MiB;
const READ_AHEAD_ITEMS = 256;

interface Pending {
  offset: number;
  length: number;
  bytes: number;
  data: Promise<Buffer | null>;
  stored?: StoredBlock[];
  synced?: Promise<StoredBlock[]>;
  release?: () => void;
}

/** Inflates one compressed cluster or grain, refusing output larger than the cluster (a deflate bomb). */
export function inflateCluster(
  input: Buffer,
  raw: boolean,
  expected: number,
  file: string,
  format: string,
  field: string,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const fail = (what: string): void => reject(imageError(file, format, field, what));
    const opts: zlib.ZlibOptions = { maxOutputLength: expected, finishFlush: zlib.constants.Z_SYNC_FLUSH };
    const done = (err: Error | null, out: Buffer): void => {
      if (err) return fail(`does not inflate: ${err.message}`);
      if (out.length > expected) return fail(`inflates to ${out.length} bytes, more than the ${expected} it holds`);
      resolve(out);
    };
    if (raw) zlib.inflateRaw(input, opts, done);
    else zlib.inflate(input, opts, done);
  });
}

/**
 * Turns a map of pieces into extents: adjacent zeros merge, data contiguous in one file is read as one run,
 * and reads (and inflates) run ahead of the consumer within a fixed budget. With `store` (and import
 * workers), each data run is read by a worker into a reused SharedArrayBuffer and its whole blocks are
 * zero-checked, hashed and stored there too (see ImportWorkers.readAndStore): the run's bytes never pass
 * through this thread, which only cuts the blocks at the run's edges.
 */
export async function* readPieces(
  pieces: AsyncIterable<Piece>,
  format: string,
  store?: StoreTarget,
): AsyncGenerator<Extent, void, undefined> {
  const queue: Pending[] = [];
  let queuedBytes = 0;
  let run: DataPiece | null = null;
  let zero: { offset: number; length: number } | null = null;
  const workers = store ? sharedImportWorkers() : null;
  const storing = workers !== null && workers.size > 0;
  // Runs stored on the workers: one per worker reading while the consumer takes the one before.
  const readAhead = storing ? Math.max(READ_AHEAD_BYTES, (workers.size + 2) * MAX_RUN_BYTES) : READ_AHEAD_BYTES;
  const freeRuns: Buffer[] = [];

  /** A run read and stored by a worker: what the extent carries, the stored blocks set on the entry. */
  const readStored = (r: DataPiece): Pending => {
    if (!Number.isSafeInteger(r.fileOffset) || r.fileOffset < 0 || r.fileOffset + r.length > r.file.size) {
      throw imageError(
        r.file.path,
        format,
        r.field,
        `points to ${r.fileOffset}..${r.fileOffset + r.length}, past the end of the file (${r.file.size} bytes)`,
      );
    }
    const into = freeRuns.pop() ?? Buffer.from(new SharedArrayBuffer(MAX_RUN_BYTES));
    const entry: Pending = { offset: r.offset, length: r.length, bytes: r.length, data: Promise.resolve(null) };
    let released = false;
    entry.release = () => {
      if (released) return;
      released = true;
      freeRuns.push(into);
    };
    entry.data = workers!.readAndStore(r.file.path, r.fileOffset, r.length, into, { ...store!, offset: r.offset }).then((out) => {
      if (out.short !== undefined)
        throw imageError(r.file.path, format, r.field, `ends at ${r.fileOffset + out.short}: the file shrank while it was read`);
      entry.stored = out.stored;
      entry.synced = out.synced;
      return out.data;
    });
    return entry;
  };

  const push = (p: Pending): void => {
    p.data.catch(() => undefined);
    queue.push(p);
    queuedBytes += p.bytes;
  };
  const flushRun = (): void => {
    if (!run) return;
    const r = run;
    push(
      storing
        ? readStored(r)
        : { offset: r.offset, length: r.length, bytes: r.length, data: r.file.readAt(r.fileOffset, r.length, format, r.field) },
    );
    run = null;
  };
  const take = async (first: Pending): Promise<Extent> => {
    const data = await first.data;
    return { offset: first.offset, length: first.length, data, stored: first.stored, synced: first.synced, release: first.release };
  };
  const flushZero = (): void => {
    if (!zero) return;
    push({ offset: zero.offset, length: zero.length, bytes: 0, data: Promise.resolve(null) });
    zero = null;
  };

  for await (const piece of pieces) {
    if (piece.length === 0) continue;
    if (piece.kind === 'zero') {
      flushRun();
      if (zero && zero.offset + zero.length === piece.offset) zero.length += piece.length;
      else {
        flushZero();
        zero = { offset: piece.offset, length: piece.length };
      }
    } else if (piece.kind === 'data' && piece.length > MAX_RUN_BYTES) {
      flushZero();
      flushRun();
      for (let at = 0; at < piece.length; at += MAX_RUN_BYTES) {
        const length = Math.min(MAX_RUN_BYTES, piece.length - at);
        run = { ...piece, offset: piece.offset + at, fileOffset: piece.fileOffset + at, length };
        flushRun();
        while (queue.length > 1 && queuedBytes > readAhead) {
          const first = queue.shift()!;
          queuedBytes -= first.bytes;
          yield await take(first);
        }
      }
    } else if (piece.kind === 'data') {
      flushZero();
      const current = run as DataPiece | null;
      if (
        current &&
        current.file === piece.file &&
        current.offset + current.length === piece.offset &&
        current.fileOffset + current.length === piece.fileOffset &&
        current.length + piece.length <= MAX_RUN_BYTES
      ) {
        run = { ...current, length: current.length + piece.length };
      } else {
        flushRun();
        run = { ...piece };
      }
    } else {
      flushRun();
      flushZero();
      const p = piece;
      push({
        offset: p.offset,
        length: p.length,
        bytes: p.length,
        data: p.file
          .readAt(p.fileOffset, p.compressedLength, format, p.field)
          .then((input) => inflateCluster(input, p.raw, p.clusterLength, p.file.path, format, p.field))
          .then((out) => {
            const whole = out.length === p.clusterLength ? out : Buffer.concat([out, Buffer.alloc(p.clusterLength - out.length)]);
            return p.skip === 0 && p.length === whole.length ? whole : whole.subarray(p.skip, p.skip + p.length);
          }),
      });
    }
    while (queue.length > 0 && (queuedBytes > readAhead || queue.length > READ_AHEAD_ITEMS)) {
      const first = queue.shift()!;
      queuedBytes -= first.bytes;
      yield await take(first);
    }
  }
  flushRun();
  flushZero();
  while (queue.length > 0) {
    const first = queue.shift()!;
    yield await take(first);
  }
}

/** A DiskImage read through a map of pieces; random access, so it can also serve as a backing file. */
export interface MappedImage extends DiskImage {
  map(from: number, to: number): AsyncGenerator<Piece, void, undefined>;
}

/** A DiskImage whose contents come from a map of pieces. */
export function mappedImage(spec: {
  path: string;
  format: DiskImageFormat;
  subformat: string;
  capacityBytes: number;
  map: (from: number, to: number) => AsyncGenerator<Piece, void, undefined>;
  close: () => Promise<void>;
}): MappedImage {
  const image: MappedImage = {
    path: spec.path,
    format: spec.format,
    subformat: spec.subformat,
    capacityBytes: spec.capacityBytes,
    extents: (from?: number, to?: number, opts?: ExtentOptions) => {
      const [start, end] = checkRange(image, from, to);
      const store = opts?.store && { ...opts.store, offset: 0, capacityBytes: spec.capacityBytes };
      return readPieces(spec.map(start, end), spec.format, store);
    },
    map: spec.map,
    close: spec.close,
  };
  return image;
}

/** Clamps and checks an extents() range against the capacity. */
export function checkRange(image: { path: string; capacityBytes: number }, from = 0, to = image.capacityBytes): [number, number] {
  if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 0 || to > image.capacityBytes || from > to) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `range ${from}..${to} is outside disk image ${image.path} (capacity ${image.capacityBytes} bytes)`,
    );
  }
  return [from, to];
}

/** Checks a declared virtual size. */
export function checkCapacity(file: string, format: string, field: string, bytes: number | bigint): number {
  const n = typeof bytes === 'bigint' ? (bytes > BigInt(MAX_CAPACITY_BYTES) ? Infinity : Number(bytes)) : bytes;
  if (!Number.isSafeInteger(n) || n <= 0 || n > MAX_CAPACITY_BYTES) {
    throw imageError(file, format, field, `declares a virtual size of ${String(bytes)} bytes (allowed: 1 to ${MAX_CAPACITY_BYTES})`);
  }
  if (n % SECTOR !== 0) throw imageError(file, format, field, `declares a virtual size of ${n} bytes, not a multiple of ${SECTOR}`);
  return n;
}

/** A 64-bit field as a number, refusing values past the safe-integer range. */
export function u64(value: bigint, file: string, format: string, field: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw imageError(file, format, field, `value ${value} is out of range`);
  return Number(value);
}
