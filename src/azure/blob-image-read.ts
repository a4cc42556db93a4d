/** Materialising a VHD page blob into a local sparse image: only its written ranges, hashed into a snapshot as they arrive. */
import { promises as fsp } from 'node:fs';
import { FailureType, RestoreError } from '../domain/errors';
import { blobUrlForRecord } from './blob-url';
import { run } from '../guest/exec';
import { mergeRanges, type PageRange } from './pageblob-verify';
import { footerProblems, parseVhdFooter, VHD_FOOTER_SIZE } from './vhd';
import {
  type BlobImageReadClient,
  blobState,
  checkCapacity,
  checkChunkSize,
  checkConcurrency,
  chunkHash,
  DEFAULT_CHUNK_SIZE,
  DEFAULT_CONCURRENCY,
  type Extent,
  inputError,
  isZero,
  linkAbort,
  type MaterializeVhdBlobOptions,
  type MaterializeVhdBlobResult,
  SNAPSHOT_HASH_BYTES,
  SnapshotBuilder,
  SPAN_BYTES,
} from './blob-image-common';
import { throwIfAborted } from './page-write';
import { KiB, MiB } from '../domain/units';

/** Unallocated gaps up to this size between allocated chunks are downloaded (as zeros) rather than split. */
const GAP_MERGE_BYTES = 256 * KiB;

/** Page ranges are listed this much of the disk at a time. */
const LIST_WINDOW_BYTES = 1024 * MiB;

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
