import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FailureType, RestoreError } from '../../src/domain/errors';
import {
  diskLayout,
  getRestorePoint,
  importRestorePoint,
  listRestorePoints,
  readDiskBlocks,
  verifyRepository,
  type RestorePoint,
} from '../../src/repository';

const MiB = 1024 * 1024;

let workDir: string;
before(async () => {
  workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmrestore-repository-'));
});
after(async () => {
  await fs.rm(workDir, { recursive: true, force: true });
});

let dirCounter = 0;
async function freshDir(name: string): Promise<string> {
  const dir = path.join(workDir, `${name}-${++dirCounter}`);
  await fs.mkdir(dir, { recursive: true });
  return dir;
}

interface VmFixture {
  vmJsonPath: string;
  images: string[];
}

/** Writes the images and a vm.json next to them; extra keys override the defaults. */
async function writeVm(dir: string, images: Buffer[], extra: Record<string, unknown> = {}): Promise<VmFixture> {
  const imagePaths: string[] = [];
  for (const [i, image] of images.entries()) {
    const imagePath = path.join(dir, `disk${i}.img`);
    await fs.writeFile(imagePath, image);
    imagePaths.push(imagePath);
  }
  const vm = {
    name: 'web01',
    guestOs: 'linux',
    firmware: 'efi',
    cpus: 2,
    memoryMiB: 2048,
    nics: [{ network: 'VM Network', macAddress: '00:50:56:AA:BB:CC' }],
    disks: images.map((_, i) => ({ path: `disk${i}.img`, provisioning: i === 0 ? 'thick' : 'thin' })),
    ...extra,
  };
  const vmJsonPath = path.join(dir, 'vm.json');
  await fs.writeFile(vmJsonPath, JSON.stringify(vm, null, 2));
  return { vmJsonPath, images: imagePaths };
}

/** Reads a disk back as one buffer, zero blocks expanded. */
async function readDisk(repo: string, rp: RestorePoint, diskIndex: number, fromOffset = 0): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const block of readDiskBlocks(repo, rp, diskIndex, { fromOffset })) {
    parts.push(block.data ?? Buffer.alloc(block.length));
  }
  return Buffer.concat(parts);
}

async function listChunkFiles(repo: string): Promise<string[]> {
  const files: string[] = [];
  const chunksDir = path.join(repo, 'chunks');
  for (const fanout of await fs.readdir(chunksDir).catch(() => [])) {
    for (const name of await fs.readdir(path.join(chunksDir, fanout))) files.push(path.join(chunksDir, fanout, name));
  }
  return files;
}

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

async function assertRejectsWith(action: () => Promise<unknown>, type: FailureType, message: RegExp): Promise<RestoreError> {
  let caught: unknown;
  try {
    await action();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof RestoreError, `expected a RestoreError ${type}, got ${String(caught)}`);
  assert.equal(caught.type, type, `wrong failure type for: ${caught.message}`);
  assert.match(caught.message, message);
  return caught;
}

/** Disk 0: random, zero, random, then a 512-byte last block; disk 1: zeros then a copy of disk 0's first block. */
function sampleImages(): Buffer[] {
  const disk0 = Buffer.concat([randomBytes(MiB), Buffer.alloc(MiB), randomBytes(MiB), randomBytes(512)]);
  const disk1 = Buffer.concat([Buffer.alloc(MiB), disk0.subarray(0, MiB)]);
  return [disk0, disk1];
}

describe('repository import and read-back', () => {
  let repo: string;
  let vmDir: string;
  let images: Buffer[];
  let first: RestorePoint;

  before(async () => {
    repo = await freshDir('repo');
    vmDir = await freshDir('vm');
    images = sampleImages();
  });

  it('reads back identical bytes and stores no zero blocks', async () => {
    const { vmJsonPath } = await writeVm(vmDir, images);
    const progress: number[] = [];
    const result = await importRestorePoint(repo, vmJsonPath, { onProgress: (p) => progress.push(p.bytesRead) });

    assert.match(result.restorePointId, /^rp-\d{14}-[0-9a-f]{6}$/);
    assert.equal(result.parentId, null);
    assert.deepEqual(result.stats, {
      disks: 2,
      bytesRead: 3 * MiB + 512 + 2 * MiB,
      chunksWritten: 3,
      bytesWritten: 2 * MiB + 512,
      chunksReused: 1,
      zeroBlocks: 2,
    });
    assert.equal(progress.at(-1), 5 * MiB + 512, `progress ended at ${progress.at(-1)}`);

    const chunkFiles = await listChunkFiles(repo);
    assert.equal(chunkFiles.length, 3, `chunk files: ${chunkFiles.join(', ')}`);
    assert.ok(
      chunkFiles.every((f) => /[0-9a-f]{2}\/[0-9a-f]{64}$/.test(f)),
      'no temp files are left behind',
    );

    first = await getRestorePoint(repo, result.restorePointId);
    assert.equal(first.blockSize, MiB);
    assert.deepEqual(first.vm.disks, [
      { index: 0, label: 'Hard disk 1', capacityBytes: 3 * MiB + 512, provisioning: 'thick' },
      { index: 1, label: 'Hard disk 2', capacityBytes: 2 * MiB, provisioning: 'thin' },
    ]);
    assert.deepEqual(first.vm.nics, [{ network: 'VM Network', macAddress: '00:50:56:aa:bb:cc' }]);
    assert.deepEqual(
      first.disks[0].blocks.map((b) => b !== null),
      [true, false, true, true],
    );
    assert.equal(first.disks[1].blocks[1], first.disks[0].blocks[0]);

    for (const [i, image] of images.entries()) {
      const back = await readDisk(repo, first, i);
      assert.equal(back.length, image.length, `disk ${i} length`);
      assert.equal(sha256(back), sha256(image), `disk ${i} content`);
    }
    assert.deepEqual(diskLayout(first, 0), {
      capacityBytes: 3 * MiB + 512,
      blockSize: MiB,
      blockCount: 4,
      nonZeroBytes: 2 * MiB + 512,
      nonZeroBlocks: 3,
    });
  });

  it('a second import of the changed VM links to its parent and writes only the changed block', async () => {
    images[0].fill(7, 2 * MiB, 2 * MiB + 4096);
    const { vmJsonPath } = await writeVm(vmDir, images);
    const result = await importRestorePoint(repo, vmJsonPath);

    assert.equal(result.parentId, first.id);
    assert.equal(result.stats.chunksWritten, 1);
    assert.equal(result.stats.chunksReused, 3);
    assert.equal((await listChunkFiles(repo)).length, 4);

    const second = await getRestorePoint(repo, result.restorePointId);
    assert.equal(sha256(await readDisk(repo, second, 0)), sha256(images[0]));

    const summaries = await listRestorePoints(repo);
    assert.deepEqual(
      summaries.map((s) => [s.id, s.parentId]),
      [
        [second.id, first.id],
        [first.id, null],
      ],
    );
    assert.deepEqual(
      { ...summaries[0], id: undefined, createdAt: undefined, parentId: undefined },
      {
        id: undefined,
        createdAt: undefined,
        parentId: undefined,
        vmName: 'web01',
        diskCount: 2,
        capacityBytes: 5 * MiB + 512,
        nonZeroBytes: 3 * MiB + 512,
        storedBytes: 2 * MiB + 512,
      },
    );
  });

  it('resolves a unique id prefix and names the repository and known ids when not found', async () => {
    const [newest] = await listRestorePoints(repo);
    assert.equal((await getRestorePoint(repo, newest.id.slice(0, -1))).id, newest.id);
    await assertRejectsWith(() => getRestorePoint(repo, 'rp-'), FailureType.InvalidRequest, /ambiguous/);
    const notFound = await assertRejectsWith(
      () => getRestorePoint(repo, 'rp-19990101'),
      FailureType.RestorePointNotFound,
      /restore point 'rp-19990101' not found in repository .*known: rp-/,
    );
    assert.ok(notFound.message.includes(repo) && notFound.message.includes(newest.id), notFound.message);
  });

  it('resumes from an offset rounded down to a block boundary', async () => {
    const [newest] = await listRestorePoints(repo);
    const rp = await getRestorePoint(repo, newest.id);
    const fromMiddle = await readDisk(repo, rp, 0, MiB + MiB / 2 + 7);
    assert.equal(sha256(fromMiddle), sha256(images[0].subarray(MiB)));
    const offsets: number[] = [];
    for await (const block of readDiskBlocks(repo, rp, 0, { fromOffset: 3 * MiB + 100 })) offsets.push(block.offset);
    assert.deepEqual(offsets, [3 * MiB]);
    assert.equal((await readDisk(repo, rp, 0, rp.disks[0].capacityBytes)).length, 0);
    await assertRejectsWith(
      () => readDisk(repo, rp, 0, rp.disks[0].capacityBytes + 512),
      FailureType.InvalidRequest,
      /fromOffset .* is outside disk 0/,
    );
    await assertRejectsWith(() => readDisk(repo, rp, 5), FailureType.InvalidRequest, /VM 'web01' has no disk 5 \(disks: 0, 1\)/);
  });
});

describe('reader pipeline', () => {
  it('yields blocks strictly in offset order with many reads in flight', async () => {
    const repo = await freshDir('repo');
    const vmDir = await freshDir('vm');
    const blockSize = 4096;
    const pattern = Array.from({ length: 200 }, (_, i) => (i % 7 === 3 || i % 11 === 0 ? 'zero' : 'data'));
    const image = Buffer.concat(pattern.map((kind) => (kind === 'zero' ? Buffer.alloc(blockSize) : randomBytes(blockSize))));
    const { vmJsonPath } = await writeVm(vmDir, [image]);
    const { restorePointId, stats } = await importRestorePoint(repo, vmJsonPath, { blockSize });
    assert.equal(stats.zeroBlocks, pattern.filter((k) => k === 'zero').length);
    const rp = await getRestorePoint(repo, restorePointId);

    const offsets: number[] = [];
    const hash = createHash('sha256');
    for await (const block of readDiskBlocks(repo, rp, 0, { concurrency: 16 })) {
      offsets.push(block.offset);
      assert.equal(block.data === null, pattern[block.offset / blockSize] === 'zero', `block at ${block.offset}`);
      hash.update(block.data ?? Buffer.alloc(block.length));
    }
    assert.deepEqual(
      offsets,
      pattern.map((_, i) => i * blockSize),
    );
    assert.equal(hash.digest('hex'), sha256(image));
  });

  it('reuses a block buffer only once the consumer released it; held buffers keep their bytes', async () => {
    const repo = await freshDir('repo');
    const vmDir = await freshDir('vm');
    const blockSize = 4096;
    const image = randomBytes(64 * blockSize);
    const { vmJsonPath } = await writeVm(vmDir, [image]);
    const { restorePointId } = await importRestorePoint(repo, vmJsonPath, { blockSize });
    const rp = await getRestorePoint(repo, restorePointId);

    // A consumer that releases each block once it is done with it: memory comes round again, bytes stay right.
    const seen = new Set<ArrayBufferLike>();
    const hash = createHash('sha256');
    for await (const block of readDiskBlocks(repo, rp, 0, { concurrency: 4 })) {
      assert.ok(block.data && block.release);
      hash.update(block.data);
      seen.add(block.data.buffer);
      block.release();
      block.release();
    }
    assert.equal(hash.digest('hex'), sha256(image));
    assert.ok(seen.size <= 6, `${seen.size} buffers for 64 blocks read 4 ahead`);

    // One that keeps every block and never releases: none of them is overwritten by a later read.
    const held: Buffer[] = [];
    for await (const block of readDiskBlocks(repo, rp, 0, { concurrency: 4 })) held.push(block.data!);
    assert.equal(sha256(Buffer.concat(held)), sha256(image));
  });

  it('stops with the abort reason when the signal fires', async () => {
    const repo = await freshDir('repo');
    const vmDir = await freshDir('vm');
    const { vmJsonPath } = await writeVm(vmDir, [randomBytes(64 * 1024)]);
    const { restorePointId } = await importRestorePoint(repo, vmJsonPath, { blockSize: 4096 });
    const rp = await getRestorePoint(repo, restorePointId);
    const controller = new AbortController();
    let blocksSeen = 0;
    await assert.rejects(
      async () => {
        for await (const block of readDiskBlocks(repo, rp, 0, { signal: controller.signal })) {
          assert.equal(block.offset, 0);
          blocksSeen++;
          controller.abort(new Error('restore cancelled'));
        }
      },
      { message: 'restore cancelled' },
    );
    assert.equal(blocksSeen, 1);
  });
});

describe('damaged repository', () => {
  let repo: string;
  let rp: RestorePoint;
  let image: Buffer;

  before(async () => {
    repo = await freshDir('repo');
    const vmDir = await freshDir('vm');
    image = Buffer.concat([randomBytes(MiB), Buffer.alloc(MiB), randomBytes(MiB), randomBytes(512)]);
    const { vmJsonPath } = await writeVm(vmDir, [image]);
    rp = await getRestorePoint(repo, (await importRestorePoint(repo, vmJsonPath)).restorePointId);
  });

  const chunkFile = (hash: string): string => path.join(repo, 'chunks', hash.slice(0, 2), hash);

  it('a corrupt chunk fails the read naming VM, disk and offset, and verify reports it', async () => {
    const hash = rp.disks[0].blocks[2]!;
    const file = chunkFile(hash);
    const original = await fs.readFile(file);
    const damaged = Buffer.from(original);
    damaged[12345] ^= 0xff;
    await fs.writeFile(file, damaged);
    try {
      const offsets: number[] = [];
      const err = await assertRejectsWith(
        async () => {
          for await (const block of readDiskBlocks(repo, rp, 0)) offsets.push(block.offset);
        },
        FailureType.RepositoryCorrupt,
        new RegExp(`^restore point ${rp.id} VM 'web01' disk 0 at offset ${2 * MiB}: chunk ${hash} is corrupt \\(sha256 mismatch\\)$`),
      );
      assert.equal(err.nonRetryable, true);
      assert.deepEqual(offsets, [0, MiB], 'blocks before the damaged one are delivered');

      const report = await verifyRepository(repo);
      assert.equal(report.ok, false);
      assert.equal(report.chunksChecked, 3);
      assert.deepEqual(report.problems, [
        { restorePointId: rp.id, vmName: 'web01', diskIndex: 0, offset: 2 * MiB, chunk: hash, problem: 'corrupt' },
      ]);
    } finally {
      await fs.writeFile(file, original);
    }
    const healthy = await verifyRepository(repo, { restorePointId: rp.id });
    assert.deepEqual(
      { ok: healthy.ok, chunksChecked: healthy.chunksChecked, bytesChecked: healthy.bytesChecked },
      { ok: true, chunksChecked: 3, bytesChecked: 2 * MiB + 512 },
    );
  });

  it('a truncated chunk is corrupt and a deleted chunk is missing', async () => {
    const lastHash = rp.disks[0].blocks[3]!;
    await fs.truncate(chunkFile(lastHash), 100);
    const firstHash = rp.disks[0].blocks[0]!;
    await fs.rm(chunkFile(firstHash));

    await assertRejectsWith(
      () => readDisk(repo, rp, 0),
      FailureType.RepositoryCorrupt,
      new RegExp(`VM 'web01' disk 0 at offset 0: chunk ${firstHash} is missing`),
    );
    await assertRejectsWith(
      () => readDisk(repo, rp, 0, 3 * MiB),
      FailureType.RepositoryCorrupt,
      new RegExp(`disk 0 at offset ${3 * MiB}: chunk ${lastHash} is corrupt \\(size 100 bytes, expected 512\\)`),
    );
    const report = await verifyRepository(repo, { concurrency: 2 });
    assert.deepEqual(
      report.problems.map((p) => [p.offset, p.problem]),
      [
        [0, 'missing'],
        [3 * MiB, 'corrupt'],
      ],
    );
  });
});

describe('vm.json validation', () => {
  let vmDir: string;
  let repo: string;
  before(async () => {
    vmDir = await freshDir('vm');
    repo = await freshDir('repo');
    await fs.writeFile(path.join(vmDir, 'odd.img'), Buffer.alloc(1000));
    await fs.writeFile(path.join(vmDir, 'empty.img'), Buffer.alloc(0));
  });

  const cases: { name: string; extra: Record<string, unknown>; message: RegExp }[] = [
    {
      name: 'a disk image that does not exist',
      extra: {
        disks: [
          { path: 'disk0.img', provisioning: 'thin' },
          { path: 'x.img', provisioning: 'thin' },
        ],
      },
      message: /^vm\.json: disks\[1\]\.path 'x\.img' not found \(resolved to \/.*\/x\.img\)$/,
    },
    {
      name: 'an image size that is not a multiple of 512',
      extra: { disks: [{ path: 'odd.img', provisioning: 'thin' }] },
      message: /disks\[0\]\.path 'odd\.img' size 1000 bytes is not a multiple of 512/,
    },
    {
      name: 'an empty image',
      extra: { disks: [{ path: 'empty.img', provisioning: 'thin' }] },
      message: /disks\[0\]\.path 'empty\.img' is empty/,
    },
    { name: 'no disks', extra: { disks: [] }, message: /disks \[\] must be a non-empty array/ },
    {
      name: 'an unknown provisioning',
      extra: { disks: [{ path: 'disk0.img', provisioning: 'lazy' }] },
      message: /disks\[0\]\.provisioning 'lazy' must be one of 'thin', 'thick'/,
    },
    {
      name: 'an unknown guest OS',
      extra: { guestOs: 'solaris' },
      message: /guestOs 'solaris' must be one of 'linux', 'windows'/,
    },
    {
      name: 'an unknown firmware',
      extra: { firmware: 'uefi' },
      message: /firmware 'uefi' must be one of 'bios', 'efi'/,
    },
    { name: 'zero CPUs', extra: { cpus: 0 }, message: /cpus 0 must be an integer from 1 to 768/ },
    { name: 'memory as a string', extra: { memoryMiB: '2048' }, message: /memoryMiB '2048' must be an integer/ },
    {
      name: 'a misspelled key',
      extra: { memoryMB: 2048 },
      message: /memoryMB is not a known key \(known: name, .*memoryMiB/,
    },
    { name: 'an empty name', extra: { name: ' ' }, message: /name ' ' must be a non-empty string/ },
    { name: 'nics not an array', extra: { nics: 'VM Network' }, message: /nics 'VM Network' must be an array/ },
    {
      name: 'a malformed MAC address',
      extra: { nics: [{ network: 'VM Network', macAddress: 'zz' }] },
      message: /nics\[0\]\.macAddress 'zz' must look like 00:50:56:aa:bb:cc/,
    },
    {
      name: 'a NIC without a network',
      extra: { nics: [{}] },
      message: /nics\[0\]\.network undefined must be a non-empty string/,
    },
  ];

  for (const c of cases) {
    it(`rejects ${c.name}, naming the key`, async () => {
      const { vmJsonPath } = await writeVm(vmDir, [Buffer.alloc(4096, 1)], c.extra);
      await assertRejectsWith(() => importRestorePoint(repo, vmJsonPath), FailureType.InvalidRequest, c.message);
    });
  }

  it('reports every problem at once', async () => {
    const { vmJsonPath } = await writeVm(vmDir, [Buffer.alloc(4096, 1)], { cpus: -1, firmware: 'x' });
    await assertRejectsWith(() => importRestorePoint(repo, vmJsonPath), FailureType.InvalidRequest, /firmware 'x' .*; cpus -1 /);
  });

  it('rejects unreadable or malformed vm.json files and bad block sizes', async () => {
    await assertRejectsWith(
      () => importRestorePoint(repo, path.join(vmDir, 'nope.json')),
      FailureType.InvalidRequest,
      /nope\.json: cannot read .*nope\.json: not found/,
    );
    const broken = path.join(vmDir, 'broken.json');
    await fs.writeFile(broken, '{"name": ');
    await assertRejectsWith(() => importRestorePoint(repo, broken), FailureType.InvalidRequest, /broken\.json: .* is not valid JSON/);
    const { vmJsonPath } = await writeVm(vmDir, [Buffer.alloc(4096, 1)]);
    await assertRejectsWith(
      () => importRestorePoint(repo, vmJsonPath, { blockSize: 1000 }),
      FailureType.InvalidRequest,
      /blockSize 1000 must be a multiple of 512/,
    );
    assert.deepEqual(await listRestorePoints(repo), [], 'no restore point is created by a rejected import');
  });
});

describe('throughput (printed, not asserted)', () => {
  it('imports and reads a 256 MiB image', async () => {
    const repo = await freshDir('repo');
    const vmDir = await freshDir('vm');
    const size = 256 * MiB;
    const image = randomBytes(size);
    const { vmJsonPath } = await writeVm(vmDir, [image]);
    const imageHash = sha256(image);

    const mbPerSecond = (bytes: number, startedAt: bigint): string =>
      (bytes / 1e6 / (Number(process.hrtime.bigint() - startedAt) / 1e9)).toFixed(0);

    let started = process.hrtime.bigint();
    const { restorePointId, stats } = await importRestorePoint(repo, vmJsonPath);
    const importRate = mbPerSecond(size, started);
    assert.equal(stats.chunksWritten, 256);

    started = process.hrtime.bigint();
    const again = await importRestorePoint(repo, vmJsonPath);
    const reimportRate = mbPerSecond(size, started);
    assert.equal(again.stats.chunksReused, 256);

    const rp = await getRestorePoint(repo, restorePointId);
    started = process.hrtime.bigint();
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const block of readDiskBlocks(repo, rp, 0)) {
      bytes += block.length;
      hash.update(block.data ?? Buffer.alloc(block.length));
    }
    const readRate = mbPerSecond(size, started);
    assert.equal(bytes, size);
    assert.equal(hash.digest('hex'), imageHash);

    const verifyStarted = process.hrtime.bigint();
    const report = await verifyRepository(repo);
    const verifyRate = mbPerSecond(report.bytesChecked, verifyStarted);
    assert.equal(report.ok, true);

    console.log(
      `repository throughput, 256 MiB random image, 1 MiB blocks: import ${importRate} MB/s, ` +
        `re-import (all chunks reused) ${reimportRate} MB/s, read+verify ${readRate} MB/s ` +
        `(consumer also hashing), verify ${verifyRate} MB/s`,
    );
  });
});
