import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ContainerClient, PageBlobClient } from '@azure/storage-blob';
import { RestoreError } from '../../src/domain/errors';
import { SECTOR_SIZE, VHD_FOOTER_SIZE, vhdVirtualSize } from '../../src/azure/vhd';
import { uploadFixedVhd, verifyUploadedVhd, type PageRange, type UploadBlock } from '../../src/azure/pageblob';
import { startEphemeralAzurite, type EphemeralAzurite } from '../../src/azure/pageblob-azurite';
import { editVhdBlob, type BlobImageClient, type ImageSnapshot } from '../../src/azure/blob-image';
import { run } from '../../src/guest/exec';
import { buildLinuxDiskImage, type LinuxImage } from '../../src/lab/images/linux-image';
import { prepareLinuxDisk, readGuestFile } from '../../src/guest/linux/prep';
import { buildWindowsDiskImage } from '../../src/lab/images/windows-image';
import { prepareWindowsDisk, readHiveValueFromDisk } from '../../src/guest/windows/prep';
import type { GuestChange } from '../../src/guest/types';
import { skipWithout } from '../helpers/requirements';
import { GiB, MiB } from '../../src/domain/units';
import { listDataSegments, materializeVhdBlob } from '../../src/azure/blob-image-read';
import { writeBackChanges } from '../../src/azure/blob-image-write';
import { seededStream } from '../../src/lab/images/seeded';

const canMount = process.getuid?.() === 0 && existsSync('/dev/fuse');
const noFuse = skipWithout(canMount, 'needs root and /dev/fuse for the ntfs-3g tools');
const WANTS = '/etc/systemd/system/multi-user.target.wants';

/**
 * The image as 1 MiB upload blocks, null where the block is all zeros. Blocks wholly inside holes are
 * not read: a first read of a hole costs page-cache fills, which would dominate the 8 GiB case.
 */
async function* fileBlocks(imagePath: string, capacity: number): AsyncGenerator<UploadBlock> {
  const { segments } = await listDataSegments(imagePath);
  const fh = await fsp.open(imagePath, 'r');
  const zero = Buffer.alloc(MiB);
  let si = 0;
  try {
    for (let off = 0; off < capacity; off += MiB) {
      const length = Math.min(MiB, capacity - off);
      while (si < segments.length && segments[si].end <= off) si++;
      if (si >= segments.length || segments[si].start >= off + length) {
        yield { offset: off, length, data: null };
        continue;
      }
      const data = Buffer.alloc(length);
      await fh.read(data, 0, length, off);
      yield { offset: off, length, data: data.equals(zero.subarray(0, length)) ? null : data };
    }
  } finally {
    await fh.close();
  }
}

/** Byte equality of two files of equal size, reading only where either has data. */
async function sameContent(a: string, b: string): Promise<boolean> {
  const [sa, sb] = await Promise.all([listDataSegments(a), listDataSegments(b)]);
  if (sa.size !== sb.size) return false;
  const all = [...sa.segments, ...sb.segments].sort((x, y) => x.start - y.start);
  const fa = await fsp.open(a, 'r');
  const fb = await fsp.open(b, 'r');
  const ba = Buffer.alloc(4 * MiB);
  const bb = Buffer.alloc(4 * MiB);
  try {
    let done = 0;
    for (const s of all) {
      for (let off = Math.max(s.start, done); off < s.end; off += ba.length) {
        const n = Math.min(ba.length, s.end - off);
        await fa.read(ba, 0, n, off);
        await fb.read(bb, 0, n, off);
        if (!ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
      }
      done = Math.max(done, s.end);
    }
    return true;
  } finally {
    await fa.close();
    await fb.close();
  }
}

async function e2fsckClean(image: string, offset: number): Promise<void> {
  const r = await run('e2fsck', ['-fn', `${image}?offset=${offset}`], { allowExit: [1, 4, 8] });
  assert.equal(r.code, 0, `e2fsck -fn reported problems:\n${r.stdout}${r.stderr}`);
}

async function blobBytes(blob: PageBlobClient, offset: number, count: number): Promise<Buffer> {
  return blob.downloadToBuffer(offset, count);
}

async function pageRanges(blob: PageBlobClient): Promise<PageRange[]> {
  const out: PageRange[] = [];
  for await (const r of blob.listPageRanges()) out.push({ start: r.start, end: r.end });
  return out;
}

function covered(ranges: PageRange[], start: number, end: number): boolean {
  return ranges.some((r) => r.start <= start && r.end >= end);
}

function intersects(ranges: PageRange[], start: number, end: number): boolean {
  return ranges.some((r) => r.start <= end && r.end >= start);
}

interface RecordedCall {
  kind: 'upload' | 'clear';
  offset: number;
  count: number;
  md5Ok?: boolean;
}

/** A client that records every page write and clear. */
function recording(inner: PageBlobClient): { client: BlobImageClient; calls: RecordedCall[] } {
  const calls: RecordedCall[] = [];
  const client: BlobImageClient = {
    url: inner.url,
    getProperties: (o) => inner.getProperties(o),
    listPageRanges: (offset, count, o) => inner.listPageRanges(offset, count, o),
    download: (offset, count, o) => inner.download(offset, count, o),
    uploadPages: (body, offset, count, o) => {
      const md5 = o?.transactionalContentMD5;
      const md5Ok =
        md5 !== undefined &&
        createHash('md5')
          .update(body as Buffer)
          .digest()
          .equals(Buffer.from(md5));
      calls.push({ kind: 'upload', offset, count, md5Ok });
      return inner.uploadPages(body, offset, count, o);
    },
    clearPages: (offset, count, o) => {
      calls.push({ kind: 'clear', offset: offset ?? 0, count: count ?? 0 });
      return inner.clearPages(offset, count, o);
    },
  };
  return { client, calls };
}

function assertCallsValid(calls: RecordedCall[], capacity: number, maxWrite: number): void {
  const dataEnd = Math.ceil(capacity / SECTOR_SIZE) * SECTOR_SIZE;
  for (const c of calls) {
    assert.equal(c.offset % SECTOR_SIZE, 0, `${c.kind} at ${c.offset} is aligned`);
    assert.equal(c.count % SECTOR_SIZE, 0, `${c.kind} of ${c.count} bytes is aligned`);
    assert.ok(c.offset + c.count <= dataEnd, `${c.kind} [${c.offset}, ${c.offset + c.count}) stays inside the disk, away from the footer`);
    if (c.kind === 'upload') {
      assert.ok(c.count <= maxWrite, `upload of ${c.count} bytes within ${maxWrite}`);
      assert.equal(c.md5Ok, true, `upload at ${c.offset} carries the right MD5`);
    }
  }
}

function fmt(n: number): string {
  return n >= MiB ? `${(n / MiB).toFixed(2)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

describe('editing a guest disk in a page blob (Azurite)', () => {
  let azurite: EphemeralAzurite;
  let container: ContainerClient;
  let dir: string;
  let n = 0;
  const blob = (): PageBlobClient => container.getPageBlobClient(`edit-${++n}.vhd`);

  async function upload(
    imagePath: string,
    capacity: number,
    target = blob(),
  ): Promise<{ blob: PageBlobClient; footer: Buffer; ms: number }> {
    const t = performance.now();
    const r = await uploadFixedVhd({
      blobClient: target,
      capacityBytes: capacity,
      blocks: fileBlocks(imagePath, capacity),
      restoreId: `r-${n}`,
    });
    return { blob: target, footer: r.footer, ms: performance.now() - t };
  }

  async function workDir(): Promise<string> {
    return fsp.mkdtemp(join(dir, 'work-'));
  }

  before(async () => {
    dir = await fsp.mkdtemp(join(tmpdir(), 'blob-image-'));
    azurite = await startEphemeralAzurite();
    container = azurite.serviceClient.getContainerClient('vhds');
    await container.create();
  });
  after(async () => {
    await azurite?.stop();
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
  });

  describe('change detection on a synthetic disk', () => {
    // Unaligned capacity: the last sector is partial and the VHD is rounded up to a whole MiB.
    const capacity = 20 * MiB + 3 * SECTOR_SIZE + 100;
    let local: Buffer;
    let target: PageBlobClient;
    let footer: Buffer;

    before(async () => {
      local = Buffer.alloc(capacity);
      randomBytes(3 * MiB).copy(local, 0);
      randomBytes(200 * 1024).copy(local, 8 * MiB + 4096);
      randomBytes(64 * 1024).copy(local, 12 * MiB);
      randomBytes(capacity - 20 * MiB).copy(local, 20 * MiB);
      const img = join(dir, 'synthetic-src.img');
      await fsp.writeFile(img, local);
      ({ blob: target, footer } = await upload(img, capacity));
    });

    it('materialises only allocated ranges into a sparse image of the capacity', async () => {
      const img = join(dir, 'synthetic-a.img');
      const m = await materializeVhdBlob(target, { capacityBytes: capacity, imagePath: img });
      assert.equal((await fsp.stat(img)).size, capacity);
      assert.ok((await fsp.readFile(img)).equals(local), 'image equals the source');
      // Allocated ranges stop at the capacity even though the footer and rounding lie beyond it.
      assert.ok(m.allocatedRanges.every((r) => r.end < capacity));
      assert.ok(covered(m.allocatedRanges, 0, 3 * MiB - 1));
      assert.ok(!intersects(m.allocatedRanges, 4 * MiB, 8 * MiB - 1));
      assert.ok(m.bytesDownloaded < 6 * MiB, `downloaded ${m.bytesDownloaded}`);
      const allocated = (await fsp.stat(img)).blocks * 512;
      assert.ok(allocated < 6 * MiB, `image stays sparse (${allocated} bytes allocated)`);
      // 3 MiB, then 200 KiB straddling 4 chunks, 64 KiB, and the short tail chunk.
      assert.equal(m.snapshot.chunks.length, 48 + 4 + 1 + 1);
      await fsp.rm(img);
    });

    it('writes back exactly the changed chunks, clears zeroed ones, and leaves the footer alone', async () => {
      const img = join(dir, 'synthetic-b.img');
      const m = await materializeVhdBlob(target, { capacityBytes: capacity, imagePath: img });
      const fh = await fsp.open(img, 'r+');
      const patch = async (offset: number, data: Buffer): Promise<void> => {
        await fh.write(data, 0, data.length, offset);
        data.copy(local, offset);
      };
      await patch(100 * 1024 + 7, Buffer.from('changed inside an allocated chunk'));
      await patch(2 * MiB, Buffer.alloc(64 * 1024)); // an allocated chunk becomes zeros
      await patch(16 * MiB + 5000, randomBytes(1000)); // data where the blob had none
      await patch(5 * MiB, randomBytes(300 * 1024)); // new data spanning several chunks
      await patch(capacity - 10, Buffer.from('tail-edit!'));
      await patch(1 * MiB, Buffer.from(local.subarray(1 * MiB, 1 * MiB + 4096))); // rewritten with the same bytes
      await fh.close();

      const rec = recording(target);
      const maxWrite = 128 * 1024;
      const wb = await writeBackChanges(rec.client, {
        imagePath: img,
        capacityBytes: capacity,
        snapshot: m.snapshot,
        maxPageWriteBytes: maxWrite,
      });
      assertCallsValid(rec.calls, capacity, maxWrite);
      assert.equal(wb.scan, 'data-segments');
      assert.equal(wb.pageWrites, rec.calls.length);
      assert.equal(wb.clearedBytes, 64 * 1024);
      assert.deepEqual(
        rec.calls.filter((c) => c.kind === 'clear').map((c) => [c.offset, c.count]),
        [[2 * MiB, 64 * 1024]],
      );
      // The changed allocated chunk (64 KiB), 1000 new bytes as 3 sectors, 300 KiB of new data, the tail chunk.
      const tailChunk = capacity - 20 * MiB;
      assert.equal(wb.uploadedBytes, 64 * 1024 + 3 * SECTOR_SIZE + 300 * 1024 + Math.ceil(tailChunk / SECTOR_SIZE) * SECTOR_SIZE);
      assert.ok(
        rec.calls.filter((c) => c.kind === 'upload').some((c) => c.count === maxWrite),
        'long runs are coalesced up to the limit',
      );
      assert.ok(!intersects(wb.ranges, MiB, MiB + 4095), 'bytes rewritten unchanged are not sent');

      const virtual = vhdVirtualSize(capacity);
      const data = await blobBytes(target, 0, capacity);
      assert.ok(data.equals(local), 'blob data equals the edited image');
      assert.ok((await blobBytes(target, capacity, virtual - capacity)).equals(Buffer.alloc(virtual - capacity)), 'zero tail stays zero');
      assert.ok((await blobBytes(target, virtual, VHD_FOOTER_SIZE)).equals(footer), 'footer unchanged');
      const ranges = await pageRanges(target);
      assert.ok(!intersects(ranges, 2 * MiB, 2 * MiB + 64 * 1024 - 1), 'zeroed chunk is no longer allocated');
      assert.ok(covered(ranges, 16 * MiB + 4608, 16 * MiB + 6143), 'new sectors are allocated');
      assert.ok(!intersects(ranges, 16 * MiB, 16 * MiB + 4095), 'zero sectors of a new chunk are not written');
      assert.deepEqual((await verifyUploadedVhd(target, { capacityBytes: capacity })).problems, []);

      // The returned snapshot describes the blob now: nothing left to write.
      const again = await writeBackChanges(target, { imagePath: img, capacityBytes: capacity, snapshot: wb.snapshot });
      assert.equal(again.pageWrites, 0);
      assert.equal(again.changedBytes, 0);
      const fresh = await materializeVhdBlob(target, { capacityBytes: capacity, imagePath: join(dir, 'synthetic-c.img') });
      assert.deepEqual(Array.from(fresh.snapshot.chunks), Array.from(wb.snapshot.chunks));
      assert.ok(fresh.snapshot.hashes.equals(wb.snapshot.hashes));
      await fsp.rm(img);
      await fsp.rm(join(dir, 'synthetic-c.img'));
    });

    it('finds changes at 4 KiB with a finer chunk size, and without SEEK_DATA by reading everything', async () => {
      const img = join(dir, 'synthetic-fine.img');
      const m = await materializeVhdBlob(target, { capacityBytes: capacity, imagePath: img, chunkSize: 4096, concurrency: 2 });
      assert.equal(m.snapshot.chunkSize, 4096);
      const fh = await fsp.open(img, 'r+');
      const edit = Buffer.from('a small edit');
      await fh.write(edit, 0, edit.length, 300 * 1024 + 11);
      await fh.close();
      edit.copy(local, 300 * 1024 + 11);

      // Without perl on the PATH the segments cannot be listed, and the scan reads the whole image.
      const savedPath = process.env.PATH;
      process.env.PATH = join(dir, 'no-such-bin');
      let wb;
      try {
        assert.equal((await listDataSegments(img)).method, 'whole-file');
        const rec = recording(target);
        wb = await writeBackChanges(rec.client, { imagePath: img, capacityBytes: capacity, snapshot: m.snapshot });
        assertCallsValid(rec.calls, capacity, 4 * MiB);
      } finally {
        process.env.PATH = savedPath;
      }
      assert.equal(wb.scan, 'full');
      assert.equal(wb.uploadedBytes, 4096);
      assert.deepEqual(wb.ranges, [{ start: 300 * 1024, end: 300 * 1024 + 4095 }]);
      assert.ok((await blobBytes(target, 0, capacity)).equals(local));

      await assert.rejects(materializeVhdBlob(target, { capacityBytes: capacity, imagePath: img, chunkSize: 3000 }), /power of two/);
      await assert.rejects(materializeVhdBlob(target, { capacityBytes: capacity, imagePath: img, concurrency: 0 }), /concurrency/);
      await fsp.rm(img);
    });

    it('refuses to overwrite a blob that changed since it was read', async () => {
      const img = join(dir, 'synthetic-d.img');
      const m = await materializeVhdBlob(target, { capacityBytes: capacity, imagePath: img });
      await target.uploadPages(Buffer.alloc(SECTOR_SIZE, 7), 10 * MiB, SECTOR_SIZE);
      await assert.rejects(
        writeBackChanges(target, { imagePath: img, capacityBytes: capacity, snapshot: m.snapshot }),
        (e: unknown) =>
          e instanceof RestoreError && e.type === 'AzureTransient' && !e.nonRetryable && /changed since it was read/.test(e.message),
      );
      await target.clearPages(10 * MiB, SECTOR_SIZE);
      await fsp.rm(img);
    });

    it('rejects a blob of the wrong size, a blob without a footer, and a resized image', async () => {
      const img = join(dir, 'synthetic-e.img');
      await assert.rejects(
        materializeVhdBlob(target, { capacityBytes: capacity + 2 * MiB, imagePath: img }),
        (e: unknown) => e instanceof RestoreError && e.type === 'InvalidRequest' && /fixed VHD of a/.test(e.message),
      );
      const bare = blob();
      await bare.create(vhdVirtualSize(capacity) + VHD_FOOTER_SIZE);
      await assert.rejects(
        materializeVhdBlob(bare, { capacityBytes: capacity, imagePath: img }),
        (e: unknown) => e instanceof RestoreError && e.type === 'InvalidRequest' && /valid fixed VHD footer/.test(e.message),
      );
      assert.equal(existsSync(img), false, 'no half-made image is left behind');

      const m = await materializeVhdBlob(target, { capacityBytes: capacity, imagePath: img });
      await fsp.truncate(img, capacity + 4096);
      await assert.rejects(
        writeBackChanges(target, { imagePath: img, capacityBytes: capacity, snapshot: m.snapshot }),
        (e: unknown) => e instanceof RestoreError && e.type === 'GuestPreparation' && /must not resize/.test(e.message),
      );
      const wrong: ImageSnapshot = { ...m.snapshot, capacityBytes: capacity - 512 };
      await assert.rejects(writeBackChanges(target, { imagePath: img, capacityBytes: capacity, snapshot: wrong }), /snapshot is of a/);
      await assert.rejects(
        writeBackChanges(target, { imagePath: img, capacityBytes: capacity, snapshot: m.snapshot, maxPageWriteBytes: 8 * MiB }),
        /exceeds Azure's Put Page maximum/,
      );
      await fsp.rm(img);
    });

    it('removes the temporary image when the edit fails', async () => {
      const work = await workDir();
      const rec = recording(target);
      let seen = '';
      await assert.rejects(
        editVhdBlob(rec.client, {
          capacityBytes: capacity,
          workDir: work,
          edit: async (p) => {
            seen = p;
            await fsp.appendFile(p, 'x');
            throw new Error('edit blew up');
          },
        }),
        /edit blew up/,
      );
      assert.ok(seen.startsWith(work));
      assert.deepEqual(await fsp.readdir(work), []);
      assert.equal(rec.calls.length, 0, 'nothing was written');
    });

    it('stops on abort', async () => {
      const ac = new AbortController();
      ac.abort(new Error('stop now'));
      const work = await workDir();
      await assert.rejects(
        editVhdBlob(target, { capacityBytes: capacity, workDir: work, signal: ac.signal, edit: async () => undefined }),
        /stop now/,
      );
      assert.deepEqual(await fsp.readdir(work), []);
    });
  });

  describe('Linux guest preparation through the blob', () => {
    const capacity = 512 * MiB;
    let built: LinuxImage;
    let target: PageBlobClient;
    let footer: Buffer;
    let sourceAllocated: number;

    before(async () => {
      built = await buildLinuxDiskImage(join(dir, 'ubuntu.img'), {
        sizeBytes: capacity,
        scheme: 'mbr',
        hostname: 'web-01',
        networkStyle: 'netplan',
        firewall: 'ufw',
        usedMiB: 24,
      });
      sourceAllocated = (await fsp.stat(built.imagePath)).blocks * 512;
      ({ blob: target, footer } = await upload(built.imagePath, capacity));
      const off = built.rootPartitionOffset;
      assert.equal(await readGuestFile(built.imagePath, off, `${WANTS}/ssh.service`), null, 'sshd starts out disabled');
      assert.equal(await readGuestFile(built.imagePath, off, '/etc/netplan/90-vmrestore-azure-dhcp.yaml'), null);
    });

    it('prepares the guest in the blob, writing back only a little', async () => {
      const rec = recording(target);
      const edited = join(dir, 'ubuntu-edited-ref.img');
      const r = await editVhdBlob(rec.client, {
        capacityBytes: capacity,
        workDir: await workDir(),
        edit: async (p): Promise<GuestChange[]> => {
          const changes = await prepareLinuxDisk(p);
          // Kept to compare the blob with, byte for byte, after the write-back.
          await run('cp', ['--sparse=always', p, edited]);
          return changes;
        },
      });
      console.log(
        `linux 512 MiB: ${r.result.length} changes; downloaded ${fmt(r.bytesDownloaded)} (source image ${fmt(sourceAllocated)} allocated); ` +
          `wrote back ${fmt(r.changedBytes)} in ${r.pageWrites} page writes; ` +
          `materialise ${r.timings.materializeMs.toFixed(0)} ms, edit ${r.timings.editMs.toFixed(0)} ms, write-back ${r.timings.writeBackMs.toFixed(0)} ms`,
      );
      assert.ok(r.result.length >= 10, `${r.result.length} changes`);
      assert.ok(r.pageWrites > 0);
      assert.ok(r.changedBytes < 4 * MiB, `changed ${r.changedBytes} bytes`);
      assert.ok(r.changedBytes * 50 < sourceAllocated, 'far less than the data on the disk');
      assertCallsValid(rec.calls, capacity, 4 * MiB);

      const fresh = join(dir, 'ubuntu-fresh.img');
      await materializeVhdBlob(target, { capacityBytes: capacity, imagePath: fresh });
      assert.ok(await sameContent(fresh, edited), 'the blob holds exactly the edited image');
      const off = built.rootPartitionOffset;
      assert.match((await readGuestFile(fresh, off, `${WANTS}/ssh.service`))!, /OpenBSD Secure Shell server/, 'sshd enabled');
      assert.match((await readGuestFile(fresh, off, '/etc/netplan/90-vmrestore-azure-dhcp.yaml'))!, /^ {6}dhcp4: true$/m);
      const fstab = (await readGuestFile(fresh, off, '/etc/fstab'))!;
      assert.match(fstab, new RegExp(`^UUID=${built.rootFsUuid}\\s+/\\s+ext4\\s`, 'm'));
      assert.doesNotMatch(fstab, /\/dev\/sda/);
      await e2fsckClean(fresh, off);

      const v = await verifyUploadedVhd(target, { capacityBytes: capacity });
      assert.deepEqual(v.problems, []);
      assert.ok((await blobBytes(target, vhdVirtualSize(capacity), VHD_FOOTER_SIZE)).equals(footer), 'footer unchanged');
      await fsp.rm(fresh);
      await fsp.rm(edited);
    });

    it('a second pass finds nothing to do and writes no pages', async () => {
      const rec = recording(target);
      const work = await workDir();
      const r = await editVhdBlob(rec.client, { capacityBytes: capacity, workDir: work, edit: (p) => prepareLinuxDisk(p) });
      assert.deepEqual(r.result, []);
      assert.equal(r.pageWrites, 0);
      assert.equal(r.changedBytes, 0);
      assert.deepEqual(rec.calls, []);
      assert.deepEqual(await fsp.readdir(work), [], 'temporary image removed');
    });
  });

  describe('Windows guest preparation through the blob', { skip: noFuse }, () => {
    const capacity = 256 * MiB;
    let target: PageBlobClient;
    let footer: Buffer;
    let agent: string;
    const TS = 'ControlSet001\\Control\\Terminal Server';

    before(async () => {
      const img = join(dir, 'win.img');
      await buildWindowsDiskImage(img, { sizeBytes: capacity, scheme: 'mbr', hostname: 'web01', usedMiB: 24 });
      assert.equal(await readHiveValueFromDisk(img, 'SYSTEM', TS, 'fDenyTSConnections'), '1');
      agent = join(dir, 'WindowsAzureVmAgent.msi');
      await fsp.writeFile(agent, seededStream('agent')(300 * 1024));
      ({ blob: target, footer } = await upload(img, capacity));
      await fsp.rm(img);
    });

    it('prepares the guest in the blob, and a second pass writes nothing', async () => {
      const rec = recording(target);
      const r = await editVhdBlob(rec.client, {
        capacityBytes: capacity,
        workDir: await workDir(),
        edit: (p) => prepareWindowsDisk(p, { agentInstallerPath: agent }),
      });
      console.log(
        `windows 256 MiB: ${r.result.length} changes; downloaded ${fmt(r.bytesDownloaded)}; ` +
          `wrote back ${fmt(r.changedBytes)} in ${r.pageWrites} page writes; ` +
          `materialise ${r.timings.materializeMs.toFixed(0)} ms, edit ${r.timings.editMs.toFixed(0)} ms, write-back ${r.timings.writeBackMs.toFixed(0)} ms`,
      );
      assert.ok(r.result.length >= 10);
      assert.ok(r.pageWrites > 0);
      assert.ok(r.changedBytes < 8 * MiB, `changed ${r.changedBytes} bytes`);
      assertCallsValid(rec.calls, capacity, 4 * MiB);

      const fresh = join(dir, 'win-fresh.img');
      await materializeVhdBlob(target, { capacityBytes: capacity, imagePath: fresh });
      assert.equal(await readHiveValueFromDisk(fresh, 'SYSTEM', TS, 'fDenyTSConnections'), '0');
      assert.equal(await readHiveValueFromDisk(fresh, 'SYSTEM', 'ControlSet002\\Services\\storvsc', 'Start'), '0');
      await fsp.rm(fresh);
      assert.deepEqual((await verifyUploadedVhd(target, { capacityBytes: capacity })).problems, []);
      assert.ok((await blobBytes(target, vhdVirtualSize(capacity), VHD_FOOTER_SIZE)).equals(footer), 'footer unchanged');

      const rec2 = recording(target);
      const again = await editVhdBlob(rec2.client, {
        capacityBytes: capacity,
        workDir: await workDir(),
        edit: (p) => prepareWindowsDisk(p, { agentInstallerPath: agent }),
      });
      assert.deepEqual(again.result, []);
      assert.equal(again.pageWrites, 0);
      assert.deepEqual(rec2.calls, []);
    });
  });

  it('handles an 8 GiB sparse Linux disk in seconds', async () => {
    const capacity = 8 * GiB;
    const img = join(dir, 'big.img');
    let t = performance.now();
    await buildLinuxDiskImage(img, { sizeBytes: capacity, scheme: 'mbr', hostname: 'big-01', networkStyle: 'netplan', firewall: 'ufw' });
    const buildMs = performance.now() - t;
    const allocated = (await fsp.stat(img)).blocks * 512;
    const up = await upload(img, capacity);
    await fsp.rm(img);

    t = performance.now();
    const r = await editVhdBlob(up.blob, { capacityBytes: capacity, workDir: await workDir(), edit: (p) => prepareLinuxDisk(p) });
    const totalMs = performance.now() - t;
    console.log(
      `linux 8 GiB (${fmt(allocated)} allocated): build ${buildMs.toFixed(0)} ms, upload ${up.ms.toFixed(0)} ms; ` +
        `materialise ${r.timings.materializeMs.toFixed(0)} ms (${fmt(r.bytesDownloaded)} downloaded), ` +
        `edit ${r.timings.editMs.toFixed(0)} ms (${r.result.length} changes), ` +
        `write-back ${r.timings.writeBackMs.toFixed(0)} ms (${fmt(r.changedBytes)} in ${r.pageWrites} page writes); total ${totalMs.toFixed(0)} ms`,
    );
    assert.ok(r.result.length >= 10);
    assert.ok(r.changedBytes < 8 * MiB, `changed ${r.changedBytes} bytes`);
    assert.ok(r.timings.materializeMs < 15_000, `materialise took ${r.timings.materializeMs} ms`);
    assert.ok(r.timings.writeBackMs < 10_000, `write-back took ${r.timings.writeBackMs} ms`);
    assert.deepEqual((await verifyUploadedVhd(up.blob, { capacityBytes: capacity })).problems, []);
    await up.blob.delete();
  });
});
