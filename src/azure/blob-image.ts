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
import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { PageBlobClient } from '@azure/storage-blob';
import { FailureType, RestoreError } from '../domain/errors';
import { blobUrlForRecord } from './blob-url';
import { run } from '../guest/exec';
import { assertPageWrite } from './page-write';
import { mergeRanges, type PageRange } from './pageblob-verify';
import { AZURE_LIMITS, KiB, MiB, SECTOR_SIZE, VHD_FOOTER_SIZE, footerProblems, parseVhdFooter, vhdVirtualSize } from './vhd';

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

export const DEFAULT_CHUNK_SIZE = 64 * KiB;
/** SHA-256 cut to 128 bits: ample against accidental equality, and small for a densely written disk. */
export const SNAPSHOT_HASH_BYTES = 16;
const DEFAULT_CONCURRENCY = 8;
/** Largest download, and the unit of memory each download holds. */
const SPAN_BYTES = 4 * MiB;
/** Unallocated gaps up to this size between allocated chunks are downloaded (as zeros) rather than split. */
const GAP_MERGE_BYTES = 256 * KiB;
/** Page ranges are listed this much of the disk at a time. */
const LIST_WINDOW_BYTES = 1024 * MiB;
/** Sequential read size of the write-back scan. */
const READ_BYTES = 8 * MiB;
const ZERO = Buffer.alloc(256 * KiB);
/** Chunk indices are held in a Uint32Array. */
const MAX_CHUNKS = 2 ** 32 - 1;

/**
 * Lists a file's data segments with lseek(SEEK_DATA/SEEK_HOLE), which Node does not expose. Perl is
 * part of every Debian-based image (perl-base is essential) and reaches lseek directly. A sequential
 * read is no substitute: the first read of a hole fills the page cache with zero pages, which took
 * 7–22 s for an 8 GiB sparse file where this takes milliseconds.
 */
const SEEK_SEGMENTS_SCRIPT = [
  'open(my $f, "<", $ARGV[0]) or die "open $ARGV[0]: $!\\n";',
  'my $size = -s $f; my $o = 0;',
  'while ($o < $size) {',
  '  my $d = sysseek($f, $o, 3);',
  '  if (!defined $d) { last if $!{ENXIO}; die "SEEK_DATA: $!\\n"; }',
  '  my $h = sysseek($f, $d, 4);',
  '  die "SEEK_HOLE: $!\\n" unless defined $h;',
  '  printf "%d %d\\n", $d, $h; $o = $h;',
  '}',
].join('\n');

/** A half-open byte range [start, end). */
export interface Extent {
  start: number;
  end: number;
}

function inputError(message: string): RestoreError {
  return new RestoreError(FailureType.InvalidRequest, message);
}

function alignUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function isZero(d: Buffer): boolean {
  if (d.length === 0) return true;
  if (d[0] !== 0 || d[d.length - 1] !== 0) return false;
  for (let at = 0; at < d.length; at += ZERO.length) {
    const n = Math.min(ZERO.length, d.length - at);
    if (!d.subarray(at, at + n).equals(ZERO.subarray(0, n))) return false;
  }
  return true;
}

function chunkHash(d: Buffer): Buffer {
  return createHash('sha256').update(d).digest().subarray(0, SNAPSHOT_HASH_BYTES);
}

function checkCapacity(capacityBytes: number): void {
  if (!Number.isSafeInteger(capacityBytes) || capacityBytes <= 0) {
    throw inputError(`capacityBytes must be a positive integer, got ${capacityBytes}`);
  }
  if (vhdVirtualSize(capacityBytes) + VHD_FOOTER_SIZE > AZURE_LIMITS.pageBlobMaxBytes) {
    throw new RestoreError(FailureType.AzureLimit, `a disk of ${capacityBytes} bytes does not fit in an Azure page blob`);
  }
}

function checkChunkSize(chunkSize: number, capacityBytes: number): void {
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 4 * KiB || chunkSize > SPAN_BYTES || (chunkSize & (chunkSize - 1)) !== 0) {
    throw inputError(`chunkSize must be a power of two from 4 KiB to 4 MiB, got ${chunkSize}`);
  }
  if (Math.ceil(capacityBytes / chunkSize) > MAX_CHUNKS) {
    throw inputError(`chunkSize ${chunkSize} is too small for a disk of ${capacityBytes} bytes`);
  }
}

function checkConcurrency(concurrency: number): void {
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
    throw inputError(`concurrency must be a positive integer, got ${concurrency}`);
  }
}

/** A controller that aborts with `signal`, and a function that detaches it again. */
function linkAbort(signal: AbortSignal | undefined, listeners: number): { ac: AbortController; unlink: () => void } {
  const ac = new AbortController();
  // Every in-flight SDK call listens on this signal; the default limit of 10 would warn past that.
  setMaxListeners(Math.max(10, listeners), ac.signal);
  if (!signal) return { ac, unlink: () => undefined };
  if (signal.aborted) ac.abort(signal.reason);
  const onAbort = (): void => ac.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  return { ac, unlink: () => signal.removeEventListener('abort', onAbort) };
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason ?? new DOMException('The operation was aborted', 'AbortError');
}

/** Collects chunk hashes in ascending chunk order into the compact arrays of an ImageSnapshot. */
class SnapshotBuilder {
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

/** Runs `worker` on `concurrency` lanes until one fails (then the rest stop early) or all finish. */
async function runLanes(concurrency: number, ac: AbortController, worker: () => Promise<boolean>): Promise<void> {
  let firstError: unknown;
  let failed = false;
  const lane = async (): Promise<void> => {
    try {
      while (!failed && (await worker()));
    } catch (err) {
      if (!failed) {
        failed = true;
        firstError = err;
        ac.abort(err);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, lane));
  if (failed) throw firstError;
}

async function blobState(
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

async function writeFully(fh: fsp.FileHandle, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesWritten } = await fh.write(buf, offset + done, length - done, position + done);
    if (bytesWritten <= 0) {
      throw new RestoreError(FailureType.InsufficientSpace, `could not write at ${position + done} of the local image`);
    }
    done += bytesWritten;
  }
}

/** Reads a download response into `target`, which must receive exactly `count` bytes. */
async function downloadInto(
  client: BlobImageReadClient,
  offset: number,
  count: number,
  target: Buffer,
  signal: AbortSignal,
): Promise<void> {
  const res = await client.download(offset, count, { abortSignal: signal });
  const body = res.readableStreamBody;
  if (!body) throw new RestoreError(FailureType.AzureTransient, `download of [${offset}, ${offset + count}) returned no body`, false);
  let at = 0;
  for await (const piece of body) {
    const b = piece as Buffer;
    if (at + b.length > count) {
      body.destroy();
      throw new RestoreError(
        FailureType.AzureTransient,
        `download of [${offset}, ${offset + count}) returned more than ${count} bytes`,
        false,
      );
    }
    b.copy(target, at);
    at += b.length;
  }
  if (at !== count) {
    throw new RestoreError(
      FailureType.AzureTransient,
      `download of [${offset}, ${offset + count}) ended after ${at} of ${count} bytes`,
      false,
    );
  }
}

/**
 * Downloads the allocated page ranges of a fixed-VHD page blob into a local sparse image of the
 * disk's capacity, and returns a snapshot of what it holds for writeBackChanges.
 */
export async function materializeVhdBlob(
  blobClient: BlobImageReadClient,
  opts: MaterializeVhdBlobOptions,
): Promise<MaterializeVhdBlobResult> {
  const { capacityBytes, imagePath } = opts;
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  const concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY;
  checkCapacity(capacityBytes);
  checkChunkSize(chunkSize, capacityBytes);
  checkConcurrency(concurrency);

  const { ac, unlink } = linkAbort(opts.signal, concurrency * 2 + 8);
  const signal = ac.signal;
  let fh: fsp.FileHandle | undefined;
  try {
    throwIfAborted(signal);
    const { virtualSize, etag } = await blobState(blobClient, capacityBytes, signal);

    // Without a valid footer the upload never finished, and the disk may be missing data.
    const footerBytes = Buffer.alloc(VHD_FOOTER_SIZE);
    await downloadInto(blobClient, virtualSize, VHD_FOOTER_SIZE, footerBytes, signal);
    const problems = footerProblems(parseVhdFooter(footerBytes), virtualSize);
    if (problems.length > 0) {
      throw inputError(`page blob ${blobUrlForRecord(blobClient.url)} does not end in a valid fixed VHD footer: ${problems.join('; ')}`);
    }

    // Azure can time out listing a heavily fragmented blob in one go and advises asking for a part at a
    // time; windows also let the listing run in parallel. The footer is outside every window.
    const raw: PageRange[] = [];
    const windows: Extent[] = [];
    for (let s = 0; s < capacityBytes; s += LIST_WINDOW_BYTES)
      windows.push({ start: s, end: Math.min(s + LIST_WINDOW_BYTES, virtualSize) });
    let nextWindow = 0;
    await runLanes(Math.min(concurrency, windows.length), ac, async () => {
      if (nextWindow >= windows.length) return false;
      const w = windows[nextWindow++];
      for await (const r of blobClient.listPageRanges(w.start, w.end - w.start, { abortSignal: signal })) {
        if (r.isClear) continue;
        const start = Math.max(r.start, w.start);
        const end = Math.min(r.end, w.end - 1, capacityBytes - 1);
        if (start <= end) raw.push({ start, end });
      }
      return true;
    });
    const allocatedRanges = mergeRanges(raw);

    // Downloads cover whole chunks, so each chunk can be hashed as it arrives.
    const spans: Extent[] = [];
    const gapChunks = Math.max(0, Math.floor(GAP_MERGE_BYTES / chunkSize));
    let run: { first: number; last: number } | null = null;
    const pushRun = (first: number, last: number): void => {
      for (let s = first * chunkSize; s <= last * chunkSize; s += SPAN_BYTES) {
        spans.push({ start: s, end: Math.min(s + SPAN_BYTES, (last + 1) * chunkSize, capacityBytes) });
      }
    };
    for (const r of allocatedRanges) {
      const first = Math.floor(r.start / chunkSize);
      const last = Math.floor(r.end / chunkSize);
      if (run && first <= run.last + 1 + gapChunks) run.last = Math.max(run.last, last);
      else {
        if (run) pushRun(run.first, run.last);
        run = { first, last };
      }
    }
    if (run) pushRun(run.first, run.last);

    fh = await fsp.open(imagePath, 'w');
    await fh.truncate(capacityBytes);
    const file = fh;

    const perSpan: { chunks: Uint32Array; hashes: Buffer }[] = new Array(spans.length);
    let next = 0;
    let bytesDownloaded = 0;
    const buffers: Buffer[] = [];
    await runLanes(Math.min(concurrency, Math.max(1, spans.length)), ac, async () => {
      if (next >= spans.length) return false;
      const i = next++;
      const span = spans[i];
      const count = span.end - span.start;
      const buf = buffers.pop() ?? Buffer.allocUnsafe(SPAN_BYTES);
      try {
        const data = buf.subarray(0, count);
        await downloadInto(blobClient, span.start, count, data, signal);
        bytesDownloaded += count;
        const spanChunks = new SnapshotBuilder(Math.ceil(count / chunkSize));
        // Zero chunks stay holes; runs of non-zero chunks are written with one call each.
        let runStart = -1;
        for (let at = 0; at < count; at += chunkSize) {
          const end = Math.min(at + chunkSize, count);
          const piece = data.subarray(at, end);
          if (!isZero(piece)) {
            spanChunks.add((span.start + at) / chunkSize, chunkHash(piece));
            if (runStart < 0) runStart = at;
          } else if (runStart >= 0) {
            await writeFully(file, data, runStart, at - runStart, span.start + runStart);
            runStart = -1;
          }
        }
        if (runStart >= 0) await writeFully(file, data, runStart, count - runStart, span.start + runStart);
        perSpan[i] = spanChunks.build();
        throwIfAborted(signal);
        return true;
      } finally {
        buffers.push(buf);
      }
    });

    let total = 0;
    for (const s of perSpan) total += s.chunks.length;
    const chunks = new Uint32Array(total);
    const hashes = Buffer.alloc(total * SNAPSHOT_HASH_BYTES);
    let k = 0;
    // Spans are in ascending order, so their concatenation is too.
    for (const s of perSpan) {
      chunks.set(s.chunks, k);
      s.hashes.copy(hashes, k * SNAPSHOT_HASH_BYTES);
      k += s.chunks.length;
    }
    await fh.close();
    fh = undefined;
    return { imagePath, allocatedRanges, bytesDownloaded, snapshot: { capacityBytes, chunkSize, chunks, hashes, etag } };
  } catch (err) {
    if (fh) {
      await fh.close().catch(() => undefined);
      fh = undefined;
      // A half-filled image must not pass for the disk.
      await fsp.rm(imagePath, { force: true }).catch(() => undefined);
    }
    if (opts.signal?.aborted) throw opts.signal.reason ?? err;
    throw err;
  } finally {
    unlink();
  }
}

/**
 * The data segments of a file, as half-open extents; holes between them read as zeros. Falls back to
 * the whole file when they cannot be listed, which is slower but just as correct.
 */
export async function listDataSegments(filePath: string): Promise<{ segments: Extent[]; size: number; method: 'seek' | 'whole-file' }> {
  const { size } = await fsp.stat(filePath);
  try {
    const r = await run('perl', ['-e', SEEK_SEGMENTS_SCRIPT, filePath], { timeoutMs: 120_000 });
    const segments: Extent[] = [];
    let last = 0;
    for (const line of r.stdout.split('\n')) {
      if (line.trim() === '') continue;
      const m = /^(\d+) (\d+)$/.exec(line.trim());
      if (!m) throw new Error(`unexpected segment line ${JSON.stringify(line)}`);
      const start = Number(m[1]);
      const end = Math.min(Number(m[2]), size);
      if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < last || end < start) {
        throw new Error(`segments out of order at ${JSON.stringify(line)}`);
      }
      if (end > start) segments.push({ start, end });
      last = end;
    }
    return { segments, size, method: 'seek' };
  } catch {
    return { segments: size > 0 ? [{ start: 0, end: size }] : [], size, method: 'whole-file' };
  }
}

/** Coalesces page writes and clears in ascending order and sends them with bounded concurrency. */
class PageWriter {
  uploadedBytes = 0;
  clearedBytes = 0;
  pageWrites = 0;
  readonly ranges: PageRange[] = [];
  private pendingWrite: { start: number; buf: Buffer; length: number } | null = null;
  private pendingClear: { start: number; length: number } | null = null;
  private readonly inflight = new Set<Promise<void>>();
  private readonly free: Buffer[] = [];
  private firstError: unknown;
  private failed = false;

  constructor(
    private readonly client: BlobImageWriteClient,
    /** Writes end at or before this offset: the start of the footer. */
    private readonly limit: number,
    private readonly maxWrite: number,
    private readonly concurrency: number,
    private readonly ac: AbortController,
  ) {}

  /** Queues `data` for blob offset `offset` (sector-aligned); a short last sector is padded with zeros. */
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.pendingClear) await this.flush();
    let at = offset;
    let rest = data;
    while (rest.length > 0) {
      const p = this.pendingWrite;
      if (p && (p.start + p.length !== at || p.length === this.maxWrite)) await this.flush();
      if (!this.pendingWrite) this.pendingWrite = { start: at, buf: this.free.pop() ?? Buffer.allocUnsafe(this.maxWrite), length: 0 };
      const w = this.pendingWrite;
      const take = Math.min(rest.length, this.maxWrite - w.length);
      rest.copy(w.buf, w.length, 0, take);
      w.length += take;
      at += take;
      rest = rest.subarray(take);
    }
    const w = this.pendingWrite;
    if (w && w.length % SECTOR_SIZE !== 0) {
      // Only the disk's last sector can be short, so nothing can follow it.
      const padded = alignUp(w.length, SECTOR_SIZE);
      w.buf.fill(0, w.length, padded);
      w.length = padded;
    }
  }

  /** Queues a clear of [offset, offset + length), rounded up to whole sectors. */
  async clear(offset: number, length: number): Promise<void> {
    if (this.pendingWrite) await this.flush();
    const len = alignUp(length, SECTOR_SIZE);
    const c = this.pendingClear;
    if (c && c.start + c.length === offset) {
      c.length += len;
      return;
    }
    if (c) await this.flush();
    this.pendingClear = { start: offset, length: len };
  }

  async flush(): Promise<void> {
    const w = this.pendingWrite;
    const c = this.pendingClear;
    this.pendingWrite = null;
    this.pendingClear = null;
    if (w) await this.dispatch(w.start, w.length, w.buf);
    if (c) await this.dispatch(c.start, c.length, null);
  }

  private async dispatch(start: number, length: number, buf: Buffer | null): Promise<void> {
    while (this.inflight.size >= this.concurrency && !this.failed) await Promise.race(this.inflight);
    if (this.failed) throw this.firstError;
    throwIfAborted(this.ac.signal);
    if (buf) assertPageWrite(start, length, this.limit);
    else if (start % SECTOR_SIZE !== 0 || length % SECTOR_SIZE !== 0 || start + length > this.limit || length <= 0) {
      throw new RestoreError(FailureType.AzureLimit, `page clear at ${start} of ${length} bytes is not aligned or runs into the footer`);
    }
    this.ranges.push({ start, end: start + length - 1 });
    const signal = this.ac.signal;
    const send = async (): Promise<void> => {
      if (buf) {
        const body = buf.subarray(0, length);
        const md5 = createHash('md5').update(body).digest();
        await this.client.uploadPages(body, start, length, { abortSignal: signal, transactionalContentMD5: md5 });
        this.uploadedBytes += length;
      } else {
        await this.client.clearPages(start, length, { abortSignal: signal });
        this.clearedBytes += length;
      }
      this.pageWrites += 1;
    };
    const p = send().then(
      () => undefined,
      (err: unknown) => {
        if (!this.failed) {
          this.failed = true;
          this.firstError = err;
          this.ac.abort(err);
        }
      },
    );
    const tracked: Promise<void> = p.finally(() => {
      this.inflight.delete(tracked);
      if (buf) this.free.push(buf);
    });
    this.inflight.add(tracked);
  }

  /** Sends what is queued and waits for every call; throws the first failure. */
  async finish(): Promise<void> {
    await this.flush();
    await Promise.all(this.inflight);
    if (this.failed) throw this.firstError;
  }

  async abandon(): Promise<void> {
    await Promise.allSettled(this.inflight);
  }
}

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

    writer = new PageWriter(blobClient, virtualSize, maxWrite, concurrency, ac);
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
    if (w.pageWrites > 0) nextEtag = (await blobClient.getProperties({ abortSignal: signal })).etag;

    return {
      changedBytes: w.uploadedBytes + w.clearedBytes,
      uploadedBytes: w.uploadedBytes,
      clearedBytes: w.clearedBytes,
      pageWrites: w.pageWrites,
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
