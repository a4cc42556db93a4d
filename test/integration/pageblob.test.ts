import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import type { ContainerClient, PageBlobClient } from '@azure/storage-blob';
import { RestoreError } from '../../src/domain/errors';
import { parseVhdFooter, uuidFromRestoreId, vhdVirtualSize } from '../../src/azure/vhd';
import {
  BlobSizeMismatchError,
  ForeignBlobError,
  VHD_RESTORE_ID_METADATA_KEY,
  VHD_UUID_METADATA_KEY,
  deleteOwnedVhdBlob,
  vhdOwnerUuid,
  uploadFixedVhd,
  verifyUploadedVhd,
  type PageRange,
  type UploadBlock,
  type UploadPageBlobClient,
  UPLOAD_CHECKPOINT_METADATA_KEY,
  type UploadProgress,
} from '../../src/azure/pageblob';
import { startEphemeralAzurite, type EphemeralAzurite } from '../../src/azure/pageblob-azurite';
import { MiB, TiB } from '../../src/domain/units';
import { assertPageWrite } from '../../src/azure/page-write';

const SECTOR = 512;

/** Fills [offset, offset + length) of the image with random bytes. */
function fillRandom(img: Buffer, offset: number, length: number): void {
  randomBytes(length).copy(img, offset);
  // Random data can contain a zero sector only by astronomically bad luck; make it impossible.
  for (let s = offset; s < offset + length; s += SECTOR) img[s] = img[s] || 1;
}

/** Non-zero 512-byte sectors of an image, as merged inclusive ranges (what page ranges must be). */
function nonZeroSectorRanges(img: Buffer): PageRange[] {
  const out: PageRange[] = [];
  const zero = Buffer.alloc(SECTOR);
  for (let s = 0; s < img.length; s += SECTOR) {
    const end = Math.min(s + SECTOR, img.length);
    if (img.subarray(s, end).equals(zero.subarray(0, end - s))) continue;
    const last = out[out.length - 1];
    if (last && last.end + 1 === s) last.end = s + SECTOR - 1;
    else out.push({ start: s, end: s + SECTOR - 1 });
  }
  return out;
}

function* blocksOf(img: Buffer, blockSize = MiB, from = 0): Generator<UploadBlock> {
  const zero = Buffer.alloc(blockSize);
  for (let off = from; off < img.length; off += blockSize) {
    const length = Math.min(blockSize, img.length - off);
    // Copies, so the uploader's views stay valid exactly as with a reader that allocates per block.
    const data = Buffer.from(img.subarray(off, off + length));
    yield { offset: off, length, data: data.equals(zero.subarray(0, length)) ? null : data };
  }
}

interface Recorded {
  offset: number;
  count: number;
  completed: boolean;
  /** Other writes still outstanding when this one started. */
  othersInFlight: number;
  /** The MD5 sent with the write was wrong (Azurite does not check it, Azure would). */
  badMd5: boolean;
}

/** A client that records every Put Page, optionally delaying each to keep several in flight. */
function recordingClient(inner: PageBlobClient, delayMs?: () => number) {
  const writes: (Recorded & { failed?: boolean })[] = [];
  let creates = 0;
  // The highest upload checkpoint the service has acknowledged, and the furthest write started past it.
  let ackedCheckpoint = 0;
  let furthestPastCheckpoint = 0;
  const client: UploadPageBlobClient = {
    url: inner.url,
    getProperties: (o) => inner.getProperties(o),
    setMetadata: async (metadata, o) => {
      const res = await inner.setMetadata(metadata, o);
      const at = Number(metadata?.[UPLOAD_CHECKPOINT_METADATA_KEY]);
      if (Number.isSafeInteger(at)) ackedCheckpoint = Math.max(ackedCheckpoint, at);
      return res;
    },
    create: (size, o) => {
      creates++;
      return inner.create(size, o);
    },
    uploadPages: async (body, offset, count, o) => {
      const md5 = o?.transactionalContentMD5;
      const badMd5 =
        md5 !== undefined &&
        !createHash('md5')
          .update(body as Buffer)
          .digest()
          .equals(Buffer.from(md5));
      const othersInFlight = writes.filter((w) => !w.completed && !w.failed).length;
      furthestPastCheckpoint = Math.max(furthestPastCheckpoint, offset + count - ackedCheckpoint);
      const rec: Recorded & { failed?: boolean } = { offset, count, completed: false, othersInFlight, badMd5 };
      writes.push(rec);
      const ms = delayMs?.() ?? 0;
      try {
        if (ms > 0) await new Promise((r) => setTimeout(r, ms));
        const res = await inner.uploadPages(body, offset, count, o);
        rec.completed = true;
        return res;
      } catch (err) {
        rec.failed = true;
        throw err;
      }
    },
  };
  return {
    client,
    writes,
    creates: () => creates,
    furthestPastCheckpoint: () => furthestPastCheckpoint,
    seedCheckpoint: (at: number) => (ackedCheckpoint = at),
  };
}

function assertAzureShaped(writes: Recorded[], blobSize: number, max = 4 * MiB): void {
  for (const w of writes) {
    assert.ok(w.count <= max, `write of ${w.count} bytes at ${w.offset} is over ${max}`);
    assert.equal(w.offset % SECTOR, 0, `write at ${w.offset} is unaligned`);
    assert.equal(w.count % SECTOR, 0, `write of ${w.count} bytes is unaligned`);
    assert.ok(w.offset + w.count <= blobSize, `write [${w.offset}, ${w.offset + w.count}) past ${blobSize}`);
  }
}

function assertNoZeroSectorWritten(img: Buffer, writes: Recorded[], virtualSize: number): void {
  const zero = Buffer.alloc(SECTOR);
  for (const w of writes) {
    if (w.offset >= virtualSize) continue;
    for (let s = w.offset; s < w.offset + w.count; s += SECTOR) {
      const end = Math.min(s + SECTOR, img.length);
      assert.ok(s < img.length, `write covers ${s}, past the data`);
      assert.ok(!img.subarray(s, end).equals(zero.subarray(0, end - s)), `zero sector at ${s} was sent`);
    }
  }
}

function overlapBytes(a: { offset: number; count: number }[], b: { offset: number; count: number }[]): number {
  let total = 0;
  for (const x of a) {
    for (const y of b) {
      const lo = Math.max(x.offset, y.offset);
      const hi = Math.min(x.offset + x.count, y.offset + y.count);
      if (hi > lo) total += hi - lo;
    }
  }
  return total;
}

describe('page blob upload against Azurite', () => {
  let azurite: EphemeralAzurite;
  let container: ContainerClient;
  let n = 0;
  const blob = (): PageBlobClient => container.getPageBlobClient(`disk-${++n}.vhd`);

  before(async () => {
    azurite = await startEphemeralAzurite();
    container = azurite.serviceClient.getContainerClient('vhds');
    await container.create();
  });
  after(async () => {
    await azurite?.stop();
  });

  it('uploads random + zero regions with an odd capacity as raw + zero tail + footer', async () => {
    const capacity = 20 * MiB + 3 * SECTOR;
    const img = Buffer.alloc(capacity);
    fillRandom(img, 0, MiB); // one whole block
    fillRandom(img, 3 * MiB, 9 * MiB); // spans 1 MiB blocks and needs splitting at 4 MiB
    img.fill(0, 5 * MiB + 4096, 5 * MiB + 4096 + SECTOR); // one zero sector inside data
    img.fill(0, 7 * MiB, 7 * MiB + 64 * 1024); // a zero 64 KiB chunk inside data
    img[14 * MiB + 511] = 7; // only the last byte of a sector
    img[14 * MiB + 2048 + 100] = 9; // only a middle byte of a sector
    fillRandom(img, 16 * MiB - 2 * SECTOR, 4 * SECTOR); // straddles a block boundary
    fillRandom(img, capacity - 3 * SECTOR, 3 * SECTOR); // the odd tail block

    const target = blob();
    const rec = recordingClient(target);
    const progress: UploadProgress[] = [];
    const res = await uploadFixedVhd({
      blobClient: rec.client,
      capacityBytes: capacity,
      blocks: blocksOf(img),
      restoreId: 'restore-odd',
      mergeZeroGapBytes: 0,
      onProgress: (p) => progress.push(p),
    });

    const virtualSize = vhdVirtualSize(capacity);
    assert.equal(virtualSize, 21 * MiB);
    assert.equal(res.blobSize, 21 * MiB + 512);
    const expectedRanges = nonZeroSectorRanges(img);
    const nonZeroBytes = expectedRanges.reduce((a, r) => a + r.end - r.start + 1, 0);
    assert.equal(res.bytesSent, nonZeroBytes + 512);
    assert.equal(res.zeroBytesSkipped, capacity - nonZeroBytes);
    assert.equal(res.pageWrites, rec.writes.length);
    assert.equal(rec.creates(), 1);

    assertAzureShaped(rec.writes, res.blobSize);
    assertNoZeroSectorWritten(img, rec.writes, virtualSize);
    const footerWrite = rec.writes[rec.writes.length - 1];
    assert.deepEqual([footerWrite.offset, footerWrite.count], [virtualSize, 512], 'footer is the last write');
    assert.equal(footerWrite.othersInFlight, 0, 'footer starts only after every data write completed');
    assert.ok(
      rec.writes.every((w) => !w.badMd5),
      'every write carries the MD5 of its body',
    );
    assert.ok(
      rec.writes.every((w) => w.othersInFlight < 8),
      'at most `concurrency` writes in flight',
    );

    const downloaded = await target.downloadToBuffer();
    assert.equal(downloaded.length, res.blobSize);
    assert.ok(downloaded.subarray(0, capacity).equals(img), 'data round-trips');
    assert.ok(downloaded.subarray(capacity, virtualSize).equals(Buffer.alloc(virtualSize - capacity)), 'zero tail');
    assert.ok(downloaded.subarray(virtualSize).equals(res.footer), 'footer at the end');
    const footer = parseVhdFooter(downloaded);
    assert.equal(footer.checksumValid, true);
    assert.equal(footer.currentSize, virtualSize);
    assert.deepEqual(footer.uuid, uuidFromRestoreId('restore-odd'));

    const v = await verifyUploadedVhd(target, {
      capacityBytes: capacity,
      expectedNonZeroRanges: expectedRanges.map((r) => ({ offset: r.start, length: r.end - r.start + 1 })),
    });
    assert.deepEqual(v.problems, []);
    assert.equal(v.ok, true);
    assert.deepEqual(v.pageRanges, [...expectedRanges, { start: virtualSize, end: virtualSize + 511 }]);

    const last = progress[progress.length - 1];
    assert.equal(last.contiguousOffset, res.blobSize);
    for (let i = 1; i < progress.length; i++) {
      assert.ok(progress[i].contiguousOffset >= progress[i - 1].contiguousOffset, 'contiguousOffset never goes back');
    }
  });

  it('pads a final partial sector with zeros and honours a smaller write size', async () => {
    const capacity = 20 * MiB + 1000;
    const img = Buffer.alloc(capacity);
    fillRandom(img, 2 * MiB, 300 * 1024);
    randomBytes(1000).copy(img, 20 * MiB);
    img[20 * MiB] = 1;
    const target = blob();
    const rec = recordingClient(target);
    const res = await uploadFixedVhd({
      blobClient: rec.client,
      capacityBytes: capacity,
      blocks: blocksOf(img, 256 * 1024),
      restoreId: 'restore-partial',
      maxPageWriteBytes: 64 * 1024,
      concurrency: 1,
      checksum: 'none',
    });
    assertAzureShaped(rec.writes, res.blobSize, 64 * 1024);
    // 300 KiB of data in 64 KiB writes (5), the last 1000 bytes as two sectors in one write, the footer.
    assert.equal(rec.writes.length, 7);
    const downloaded = await target.downloadToBuffer(0, 21 * MiB);
    assert.ok(downloaded.subarray(0, capacity).equals(img));
    assert.ok(downloaded.subarray(capacity).equals(Buffer.alloc(21 * MiB - capacity)));
    const v = await verifyUploadedVhd(target, { capacityBytes: capacity });
    assert.deepEqual(v.problems, []);
  });

  it('sends short zero gaps inside the write they interrupt, and skips long ones', async () => {
    // A filesystem's shape: 4 KiB of data every 8 KiB across 2 MiB (crossing a block boundary), then
    // 1 MiB of zeros, then 3 more fragments 32 KiB apart.
    const capacity = 8 * MiB;
    const img = Buffer.alloc(capacity);
    for (let at = 512 * 1024; at < 512 * 1024 + 2 * MiB; at += 8192) fillRandom(img, at, 4096);
    const tail = 512 * 1024 + 2 * MiB - 4096 + MiB;
    for (let i = 0; i < 3; i++) fillRandom(img, tail + i * 32 * 1024, SECTOR);
    const upload = async (mergeZeroGapBytes?: number) => {
      const target = blob();
      const rec = recordingClient(target);
      const res = await uploadFixedVhd({
        blobClient: rec.client,
        capacityBytes: capacity,
        blocks: blocksOf(img),
        restoreId: `restore-gaps-${mergeZeroGapBytes ?? 'default'}`,
        mergeZeroGapBytes,
      });
      assertAzureShaped(rec.writes, res.blobSize);
      const downloaded = await target.downloadToBuffer(0, capacity);
      assert.ok(downloaded.equals(img), 'data round-trips');
      const v = await verifyUploadedVhd(target, { capacityBytes: capacity });
      assert.deepEqual(v.problems, []);
      return { res, writes: rec.writes.length, ranges: v.pageRanges };
    };
    const split = await upload(0);
    assert.equal(split.writes, 256 + 3 + 1, 'one write per fragment, and the footer');
    const merged = await upload();
    // [512 KiB, 2.5 MiB - 4 KiB) in one write, the three 32 KiB-apart sectors in a second, the footer.
    assert.equal(merged.writes, 3);
    const firstSpan = 2 * MiB - 4096;
    const secondSpan = 2 * 32 * 1024 + SECTOR;
    assert.equal(merged.res.bytesSent, firstSpan + secondSpan + 512);
    assert.equal(merged.res.zeroBytesSkipped, capacity - firstSpan - secondSpan);
    assert.deepEqual(merged.ranges.slice(0, 2), [
      { start: 512 * 1024, end: 512 * 1024 + firstSpan - 1 },
      { start: tail, end: tail + secondSpan - 1 },
    ]);
  });

  it('resumes after an abort, re-sending at most the in-flight window', async () => {
    const capacity = 96 * MiB;
    const img = Buffer.alloc(capacity);
    fillRandom(img, 0, 40 * MiB);
    fillRandom(img, 48 * MiB, 40 * MiB);
    const concurrency = 4;
    const maxWrite = 4 * MiB;
    const target = blob();
    const nonZero = nonZeroSectorRanges(img);

    // First attempt: writes complete out of order; abort once a few have landed.
    const first = recordingClient(target, () => 5 + Math.floor(Math.random() * 30));
    const ac = new AbortController();
    let heartbeat = 0;
    const checkDurable = (p: UploadProgress): void => {
      // Everything non-zero below contiguousOffset must have been acknowledged by the service.
      for (const r of nonZero) {
        for (let s = r.start; s <= r.end && s < p.contiguousOffset; s += SECTOR) {
          assert.ok(
            first.writes.some((w) => w.completed && w.offset <= s && s < w.offset + w.count),
            `sector ${s} below contiguousOffset ${p.contiguousOffset} is not written`,
          );
        }
      }
    };
    await assert.rejects(
      uploadFixedVhd({
        blobClient: first.client,
        capacityBytes: capacity,
        blocks: blocksOf(img),
        restoreId: 'restore-resume',
        concurrency,
        maxPageWriteBytes: maxWrite,
        signal: ac.signal,
        onProgress: (p) => {
          checkDurable(p);
          heartbeat = p.contiguousOffset;
          if (p.pagesSent >= 6) ac.abort();
        },
      }),
      (err: unknown) => (err as Error).name === 'AbortError',
    );
    assert.ok(heartbeat > 0 && heartbeat < capacity, `heartbeat ${heartbeat} is mid-disk`);
    const firstDone = first.writes.filter((w) => w.completed);
    const footerWritten = first.writes.some((w) => w.offset === vhdVirtualSize(capacity));
    assert.equal(footerWritten, false, 'no footer after an aborted upload');

    // Second attempt, fed from the start of the disk as a restarted activity would.
    const second = recordingClient(target);
    const res = await uploadFixedVhd({
      blobClient: second.client,
      capacityBytes: capacity,
      blocks: blocksOf(img),
      restoreId: 'restore-resume',
      concurrency,
      maxPageWriteBytes: maxWrite,
      resumeFromOffset: heartbeat,
      checksumWorkers: 0,
    });
    assert.ok(
      second.writes.every((w) => !w.badMd5),
      'main-thread MD5s are right too',
    );
    assert.equal(res.created, false);
    assert.equal(res.resumedFrom, heartbeat);
    assert.equal(second.creates(), 0);
    // Counted against every write the first attempt started, acknowledged or not.
    const resent = overlapBytes(first.writes, second.writes);
    const window = concurrency * maxWrite;
    console.log(
      `resume: heartbeat at ${(heartbeat / MiB).toFixed(2)} MiB, first attempt completed ${firstDone.length} writes ` +
        `(${(firstDone.reduce((a, w) => a + w.count, 0) / MiB).toFixed(2)} MiB); ` +
        `re-sent ${(resent / MiB).toFixed(2)} MiB of an in-flight window of ${window / MiB} MiB`,
    );
    assert.ok(resent <= window, `re-sent ${resent} bytes, more than the window ${window}`);
    assert.ok(second.writes.every((w) => w.offset >= heartbeat - (heartbeat % SECTOR)));

    const downloaded = await target.downloadToBuffer();
    assert.ok(downloaded.subarray(0, capacity).equals(img), 'resumed blob matches the image');
    const v = await verifyUploadedVhd(target, {
      capacityBytes: capacity,
      expectedNonZeroRanges: nonZero.map((r) => ({ offset: r.start, length: r.end - r.start + 1 })),
    });
    assert.deepEqual(v.problems, []);
  });

  it('resumes from the checkpoint stored in the blob when no heartbeat arrived, within the window', async () => {
    const capacity = 64 * MiB;
    const img = Buffer.alloc(capacity);
    fillRandom(img, 0, capacity);
    const concurrency = 4;
    const maxWrite = MiB;
    const window = concurrency * maxWrite;
    const target = blob();
    const first = recordingClient(target, () => 2 + Math.floor(Math.random() * 20));
    const ac = new AbortController();
    await assert.rejects(
      uploadFixedVhd({
        blobClient: first.client,
        capacityBytes: capacity,
        blocks: blocksOf(img),
        restoreId: 'restore-stored-checkpoint',
        concurrency,
        maxPageWriteBytes: maxWrite,
        checksum: 'none',
        signal: ac.signal,
        onProgress: (p) => {
          if (p.pagesSent >= 30) ac.abort();
        },
      }),
      (err: unknown) => (err as Error).name === 'AbortError',
    );
    assert.ok(first.furthestPastCheckpoint() <= window, `a write reached ${first.furthestPastCheckpoint()} past the checkpoint`);
    let extent = 0;
    for await (const r of target.listPageRanges()) extent = Math.max(extent, r.end + 1);
    const stored = Number((await target.getProperties()).metadata?.[UPLOAD_CHECKPOINT_METADATA_KEY]);
    assert.ok(stored > 0 && extent - stored <= window, `stored checkpoint ${stored}, blob extent ${extent}`);

    // The retry got no heartbeat details: it passes 0 and the blob supplies the rest.
    const second = recordingClient(target);
    second.seedCheckpoint(stored);
    let asked = -1;
    const res = await uploadFixedVhd({
      blobClient: second.client,
      capacityBytes: capacity,
      blocks: (from) => {
        asked = from;
        return blocksOf(img);
      },
      restoreId: 'restore-stored-checkpoint',
      concurrency,
      maxPageWriteBytes: maxWrite,
      resumeFromOffset: 0,
    });
    assert.equal(res.resumedFrom, stored);
    assert.equal(asked, stored, 'blocks are asked for from the resume point');
    assert.equal(res.created, false);
    assert.ok(second.furthestPastCheckpoint() <= window);
    const resent = Math.max(0, extent - res.resumedFrom);
    console.log(
      `stored-checkpoint resume: at ${(stored / MiB).toFixed(2)} MiB, re-sent ${(resent / MiB).toFixed(2)} MiB, window ${window / MiB} MiB`,
    );
    assert.ok((await target.downloadToBuffer(0, capacity)).equals(img));

    // A retry after the upload finished sends the footer again and nothing else.
    const third = recordingClient(target);
    const again = await uploadFixedVhd({
      blobClient: third.client,
      capacityBytes: capacity,
      blocks: (from) => blocksOf(img, MiB, Math.min(from, capacity) - (Math.min(from, capacity) % MiB)),
      restoreId: 'restore-stored-checkpoint',
      resumeFromOffset: 0,
    });
    assert.deepEqual(
      third.writes.map((w) => [w.offset, w.count]),
      [[vhdVirtualSize(capacity), 512]],
    );
    assert.equal(again.bytesSent, 512);
    assert.deepEqual((await verifyUploadedVhd(target, { capacityBytes: capacity })).problems, []);
  });

  it('re-creates its own same-size blob on a fresh start, clearing stale pages', async () => {
    const capacity = 20 * MiB;
    const target = blob();
    // Left by an earlier attempt of the same restore disk: it carries that disk's uuid.
    await target.create(capacity + 512, { metadata: { [VHD_UUID_METADATA_KEY]: vhdOwnerUuid('r-fresh') } });
    await target.uploadPages(Buffer.alloc(MiB, 0xaa), 8 * MiB, MiB);
    const img = Buffer.alloc(capacity);
    fillRandom(img, 0, MiB);
    await uploadFixedVhd({ blobClient: target, capacityBytes: capacity, blocks: blocksOf(img), restoreId: 'r-fresh' });
    const v = await verifyUploadedVhd(target, {
      capacityBytes: capacity,
      expectedNonZeroRanges: [{ offset: 0, length: MiB }],
    });
    assert.deepEqual(v.problems, []);
  });

  it('leaves a same-size blob it did not create untouched, on a fresh start and on resume', async () => {
    const capacity = 20 * MiB;
    const target = blob();
    await target.create(capacity + 512, { metadata: { owner: 'someone-else' } });
    await target.uploadPages(Buffer.alloc(MiB, 0xaa), 8 * MiB, MiB);
    const before = await target.getProperties();
    const img = Buffer.alloc(capacity);
    fillRandom(img, 0, MiB);
    for (const resumeFromOffset of [undefined, 0, MiB]) {
      await assert.rejects(
        uploadFixedVhd({ blobClient: target, capacityBytes: capacity, blocks: blocksOf(img), restoreId: 'r-intruder', resumeFromOffset }),
        (err: unknown) =>
          err instanceof ForeignBlobError && err.type === 'AlreadyExists' && /was not created by this restore/.test(err.message),
      );
    }
    const after = await target.getProperties();
    assert.equal(after.etag, before.etag, 'the foreign blob was not rewritten');
    assert.deepEqual(after.metadata, { owner: 'someone-else' });
    assert.equal(await deleteOwnedVhdBlob(target, 'r-intruder', 0), 'foreign');
    assert.equal((await target.getProperties()).etag, before.etag, 'compensation did not delete it');
  });

  it('creates the blob only if absent, so one that appears after the check is not clobbered', async () => {
    const capacity = 20 * MiB;
    const target = blob();
    await target.create(capacity + 512, { metadata: { owner: 'racer' } });
    const before = await target.getProperties();
    // The existence check saw nothing: the blob came into being between that read and the create.
    const racing: UploadPageBlobClient = {
      url: target.url,
      getProperties: () => Promise.reject(Object.assign(new Error('BlobNotFound'), { statusCode: 404 })),
      create: (size, o) => target.create(size, o),
      uploadPages: (b, off, n, o) => target.uploadPages(b, off, n, o),
      setMetadata: (m, o) => target.setMetadata(m, o),
    };
    await assert.rejects(
      uploadFixedVhd({ blobClient: racing, capacityBytes: capacity, blocks: blocksOf(Buffer.alloc(capacity)), restoreId: 'r-late' }),
      ForeignBlobError,
    );
    assert.equal((await target.getProperties()).etag, before.etag);
  });

  it('deletes only its own blob in compensation', async () => {
    const target = blob();
    await target.create(20 * MiB + 512, { metadata: { [VHD_UUID_METADATA_KEY]: vhdOwnerUuid('r-own', 3) } });
    assert.equal(await deleteOwnedVhdBlob(target, 'r-other', 3), 'foreign');
    // What an upload stamps: the disk uuid and the restore id that a sweeper can look up.
    const stamped = blob();
    await uploadFixedVhd({
      blobClient: stamped,
      capacityBytes: 20 * MiB,
      blocks: blocksOf(Buffer.alloc(20 * MiB)),
      restoreId: 'restore-x@1/é',
      diskIndex: 3,
    });
    const meta = (await stamped.getProperties()).metadata!;
    assert.equal(meta[VHD_UUID_METADATA_KEY], vhdOwnerUuid('restore-x@1/é', 3));
    assert.equal(decodeURIComponent(meta[VHD_RESTORE_ID_METADATA_KEY]), 'restore-x@1/é');
    assert.equal(await deleteOwnedVhdBlob(target, 'r-own', 2), 'foreign', 'another disk of the same restore is not this one');
    assert.equal(await deleteOwnedVhdBlob(target, 'r-own', 3), 'ours');
    assert.equal(await target.exists(), false);
    assert.equal(await deleteOwnedVhdBlob(target, 'r-own', 3), 'absent');
  });

  it('compensation deletes its blob although a late write of the cancelled upload changes it between read and delete', async () => {
    /** A blob of restore `restoreId`'s disk 0, and a client on it that runs `meanwhile` between the read and each delete. */
    const interposed = async (restoreId: string, meanwhile: (b: PageBlobClient, deletes: number) => Promise<unknown>) => {
      const b = blob();
      await b.create(20 * MiB + 512, { metadata: { [VHD_UUID_METADATA_KEY]: vhdOwnerUuid(restoreId, 0) } });
      let deletes = 0;
      const client: Parameters<typeof deleteOwnedVhdBlob>[0] = {
        url: b.url,
        getProperties: (o) => b.getProperties(o),
        deleteIfExists: async (o) => {
          await meanwhile(b, deletes++);
          return b.deleteIfExists(o);
        },
      };
      return { b, client, deletes: () => deletes };
    };

    // The server applies a Put Page of ours after compensation read the blob: the etag it read is stale.
    const late = await interposed('r-late-write', async (b, n) => {
      if (n === 0) await b.uploadPages(Buffer.alloc(MiB, 0x5a), 4 * MiB, MiB);
    });
    assert.equal(await deleteOwnedVhdBlob(late.client, 'r-late-write', 0), 'ours');
    assert.equal(late.deletes(), 2, 'read again and deleted on the second try');
    assert.equal(await late.b.exists(), false);

    // Replaced by someone else between the read and the delete: left alone.
    const replaced = await interposed('r-replaced', (b) => b.setMetadata({ owner: 'someone-else' }));
    assert.equal(await deleteOwnedVhdBlob(replaced.client, 'r-replaced', 0), 'foreign');
    assert.deepEqual((await replaced.b.getProperties()).metadata, { owner: 'someone-else' });

    // A blob that keeps changing is not deleted blindly: a retryable failure naming it.
    const busy = await interposed('r-busy', (b) => b.uploadPages(Buffer.alloc(512, 1), 0, 512));
    await assert.rejects(
      deleteOwnedVhdBlob(busy.client, 'r-busy', 0, 3),
      (err: unknown) => err instanceof RestoreError && !err.nonRetryable && /changed 3 times while being deleted/.test(err.message),
    );
    assert.equal(await busy.b.exists(), true);
  });

  it('starts over when asked to resume but the blob is gone', async () => {
    const capacity = 20 * MiB;
    const img = Buffer.alloc(capacity);
    fillRandom(img, 10 * MiB, MiB);
    const target = blob();
    const res = await uploadFixedVhd({
      blobClient: target,
      capacityBytes: capacity,
      blocks: blocksOf(img),
      restoreId: 'r-gone',
      resumeFromOffset: 15 * MiB,
    });
    assert.equal(res.created, true);
    assert.equal(res.resumedFrom, 0);
    assert.ok((await target.downloadToBuffer(0, capacity)).equals(img));
  });

  it('refuses an existing blob of another size', async () => {
    const target = blob();
    await target.create(30 * MiB + 512);
    await assert.rejects(
      uploadFixedVhd({ blobClient: target, capacityBytes: 20 * MiB, blocks: [], restoreId: 'r', resumeFromOffset: MiB }),
      (err: unknown) => {
        assert.ok(err instanceof BlobSizeMismatchError);
        assert.equal(err.expectedSize, 20 * MiB + 512);
        assert.equal(err.actualSize, 30 * MiB + 512);
        assert.match(err.message, /already exists with size 31457792, expected 20972032/);
        return true;
      },
    );
    // A fresh start must not clobber it either.
    await assert.rejects(
      uploadFixedVhd({ blobClient: target, capacityBytes: 20 * MiB, blocks: [], restoreId: 'r' }),
      BlobSizeMismatchError,
    );
  });

  it('refuses a blob that another restore created', async () => {
    const capacity = 20 * MiB;
    const target = blob();
    const img = Buffer.alloc(capacity);
    await uploadFixedVhd({ blobClient: target, capacityBytes: capacity, blocks: blocksOf(img), restoreId: 'owner-a' });
    await assert.rejects(
      uploadFixedVhd({ blobClient: target, capacityBytes: capacity, blocks: blocksOf(img), restoreId: 'owner-b' }),
      /belongs to another restore/,
    );
  });

  it('rejects input that has gaps or stops short of the capacity', async () => {
    const capacity = 20 * MiB;
    const gap: UploadBlock[] = [
      { offset: 0, length: MiB, data: null },
      { offset: 2 * MiB, length: MiB, data: null },
    ];
    await assert.rejects(
      uploadFixedVhd({ blobClient: blob(), capacityBytes: capacity, blocks: gap, restoreId: 'r' }),
      (err: unknown) => err instanceof RestoreError && err.type === 'InvalidRequest' && /does not follow/.test(err.message),
    );
    const short = [...blocksOf(Buffer.alloc(capacity))].slice(0, 10);
    const target = blob();
    await assert.rejects(
      uploadFixedVhd({ blobClient: target, capacityBytes: capacity, blocks: short, restoreId: 'r' }),
      /input ended at 10485760, before the disk capacity/,
    );
    const v = await verifyUploadedVhd(target, { capacityBytes: capacity });
    assert.equal(v.ok, false, 'no footer after a failed upload');
    assert.ok(v.problems.some((p) => p.includes('footer')));
  });

  it('a source that fails mid-stream surfaces its own error, not the abort of the writes in flight', async () => {
    const capacity = 32 * MiB;
    const img = Buffer.alloc(capacity);
    fillRandom(img, 0, capacity);
    const rec = recordingClient(blob(), () => 200);
    async function* failing(): AsyncGenerator<UploadBlock> {
      let n = 0;
      for (const b of blocksOf(img)) {
        if (++n === 6) throw new RestoreError('RepositoryCorrupt', 'chunk abc is corrupt');
        yield b;
      }
    }
    await assert.rejects(
      uploadFixedVhd({
        blobClient: rec.client,
        capacityBytes: capacity,
        blocks: failing(),
        restoreId: 'r-failing',
        maxPageWriteBytes: MiB,
      }),
      (err: unknown) => err instanceof RestoreError && err.message === 'chunk abc is corrupt',
    );
    assert.ok(rec.writes.length > 0 && rec.writes.some((w) => !w.completed), 'writes were in flight when the source failed');
  });

  it('enforces Azure limits in our code', async () => {
    const isLimit = (err: unknown) => err instanceof RestoreError && err.type === 'AzureLimit';
    const rec = recordingClient(blob());
    await assert.rejects(
      uploadFixedVhd({ blobClient: rec.client, capacityBytes: 8 * TiB, blocks: [], restoreId: 'r' }),
      (err: unknown) => isLimit(err) && /8 TiB page blob maximum/.test((err as Error).message),
    );
    await assert.rejects(
      uploadFixedVhd({ blobClient: rec.client, capacityBytes: 20 * MiB, blocks: [], restoreId: 'r', maxPageWriteBytes: 8 * MiB }),
      isLimit,
    );
    await assert.rejects(
      uploadFixedVhd({ blobClient: rec.client, capacityBytes: 20 * MiB, blocks: [], restoreId: 'r', maxPageWriteBytes: 1000 }),
      isLimit,
    );
    assert.equal(rec.creates(), 0, 'nothing was created for refused uploads');
    assert.equal(rec.writes.length, 0);

    const blobSize = 20 * MiB + 512;
    assert.doesNotThrow(() => assertPageWrite(0, 4 * MiB, blobSize));
    assert.doesNotThrow(() => assertPageWrite(20 * MiB, 512, blobSize));
    assert.throws(
      () => assertPageWrite(0, 4 * MiB + 512, blobSize),
      (e: unknown) => isLimit(e) && /4 MiB/.test(String(e)),
    );
    assert.throws(
      () => assertPageWrite(100, 512, blobSize),
      (e: unknown) => isLimit(e) && /aligned/.test(String(e)),
    );
    assert.throws(() => assertPageWrite(0, 1000, blobSize), isLimit);
    assert.throws(
      () => assertPageWrite(20 * MiB, 1024, blobSize),
      (e: unknown) => isLimit(e) && /past the blob end/.test(String(e)),
    );
  });
});
