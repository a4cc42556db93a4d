import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { changedBlocks } from '../../src/activities/vsphere-import';
import { chunkPath } from '../../src/repository/format';
import { StagedDisk, blocksOf, readStagedDisk, removeStaging, stagingDir } from '../../src/repository/staged-disk';

const KiB = 1024;
let repo: string;
before(async () => {
  repo = await fs.mkdtemp(path.join(os.tmpdir(), 'vmrestore-staged-'));
});
after(async () => {
  await fs.rm(repo, { recursive: true, force: true });
});

async function* pieces(data: Buffer, sizes: number[]): AsyncGenerator<Buffer> {
  let at = 0;
  for (let i = 0; at < data.length; i++) {
    const n = sizes[i % sizes.length];
    yield data.subarray(at, at + n);
    at += n;
  }
}

describe('changed areas to blocks (QueryChangedDiskAreas → block indexes)', () => {
  it('marks every block an area touches, including partial first and last blocks', () => {
    const blocks = changedBlocks(
      [
        { start: 0, length: 1 },
        { start: 3 * 64 * KiB - 1, length: 2 },
        { start: 9 * 64 * KiB, length: 64 * KiB },
      ],
      64 * KiB,
      16,
    );
    assert.deepEqual(
      [...blocks].sort((a, b) => a - b),
      [0, 2, 3, 9],
    );
  });

  it('ignores empty areas and clamps to the disk', () => {
    assert.deepEqual(
      [
        ...changedBlocks(
          [
            { start: 5 * KiB, length: 0 },
            { start: 7 * KiB, length: 100 * KiB },
          ],
          4 * KiB,
          4,
        ),
      ],
      [1, 2, 3],
    );
  });
});

describe('blocksOf cuts a byte stream into disk blocks', () => {
  it('yields whole blocks (a short last one) whatever the stream piece sizes', async () => {
    const data = randomBytes(10 * KiB + 512);
    const got: Array<[number, number]> = [];
    const joined: Buffer[] = [];
    for await (const b of blocksOf(pieces(data, [1000, 7, 5000]), 0, data.length, 4 * KiB, 'test')) {
      got.push([b.blockIndex, b.data.length]);
      joined.push(b.data);
    }
    assert.deepEqual(got, [
      [0, 4096],
      [1, 4096],
      [2, 2560],
    ]);
    assert.ok(Buffer.concat(joined).equals(data));
  });

  it('starts at a resume offset and refuses a stream that ends early or runs long', async () => {
    const data = randomBytes(8 * KiB);
    const idx: number[] = [];
    for await (const b of blocksOf(pieces(data.subarray(4 * KiB), [3000]), 4 * KiB, 8 * KiB, 4 * KiB, 'x')) idx.push(b.blockIndex);
    assert.deepEqual(idx, [1]);
    await assert.rejects(async () => {
      for await (const _ of blocksOf(pieces(data.subarray(0, 6 * KiB), [4096]), 0, 8 * KiB, 4 * KiB, 'disk 0 (f)')) void _;
    }, /disk 0 \(f\): ended after byte 6144, expected 8192/);
    await assert.rejects(async () => {
      for await (const _ of blocksOf(pieces(data, [4096]), 0, 4 * KiB, 4 * KiB, 'disk 1')) void _;
    }, /disk 1: more bytes than the 4096 expected/);
  });
});

describe('StagedDisk: block map staged at checkpoints, blocks equal to the parent not written again', () => {
  it('writes new chunks, reuses the parent block by digest, keeps zero blocks out, and resumes at the checkpoint', async () => {
    const blockSize = 4 * KiB;
    const a = randomBytes(blockSize);
    const b = randomBytes(blockSize);
    const zero = Buffer.alloc(blockSize);
    const opts = { repoDir: repo, importId: 'imp-1', diskIndex: 0, capacityBytes: 4 * blockSize, blockSize };

    const first = await StagedDisk.open({ ...opts, parentBlocks: null });
    await first.take(0, a);
    await first.take(1, zero);
    await first.checkpoint(2 * blockSize);
    // Not checkpointed: a retry reads these again.
    await first.take(2, b);
    await first.flush();
    assert.deepEqual(first.state.stats.chunksWritten, 2);

    const resumed = await StagedDisk.open({ ...opts, parentBlocks: null });
    assert.equal(resumed.state.offset, 2 * blockSize, 'resumes at the staged offset');
    assert.equal(resumed.state.blocks[0], first.state.blocks[0]);
    assert.equal(resumed.state.blocks[1], null);
    assert.deepEqual(resumed.state.stats, {
      bytesRead: 2 * blockSize,
      chunksWritten: 1,
      bytesWritten: blockSize,
      chunksReused: 0,
      zeroBlocks: 1,
      blocksKept: 0,
    });
    await resumed.take(2, b); // its chunk exists already from before the crash
    await resumed.take(3, a); // same content as block 0
    await resumed.checkpoint(4 * blockSize, true, { ok: 1 });
    assert.deepEqual([resumed.state.stats.chunksWritten, resumed.state.stats.chunksReused], [1, 2]);
    const staged = await readStagedDisk(repo, 'imp-1', 0);
    assert.deepEqual([staged?.done, staged?.result], [true, { ok: 1 }]);
    await fs.access(chunkPath(repo, staged!.blocks[2]!));

    // The next import of the same disk: block 1 changed, the rest equal the parent's.
    const parentBlocks = staged!.blocks;
    const next = await StagedDisk.open({ ...opts, importId: 'imp-2', parentBlocks });
    const c = randomBytes(blockSize);
    for (const [i, data] of [a, c, b, a].entries()) await next.take(i, data);
    await next.flush();
    assert.deepEqual([next.state.stats.chunksWritten, next.state.stats.chunksReused, next.state.stats.zeroBlocks], [1, 3, 0]);

    const cbt = await StagedDisk.open({ ...opts, importId: 'imp-3', parentBlocks });
    cbt.keep(0);
    cbt.keep(1);
    await cbt.take(2, c);
    cbt.keep(3);
    await cbt.flush();
    assert.deepEqual(cbt.state.blocks, [parentBlocks[0], null, cbt.state.blocks[2], parentBlocks[3]]);
    assert.deepEqual([cbt.state.stats.blocksKept, cbt.state.stats.bytesRead, cbt.state.stats.chunksReused], [3, blockSize, 3]);

    await removeStaging(repo, 'imp-1');
    await assert.rejects(fs.access(stagingDir(repo, 'imp-1')));
  });

  it('ignores a parent block map of another size (the disk was grown)', async () => {
    const disk = await StagedDisk.open({
      repoDir: repo,
      importId: 'imp-grown',
      diskIndex: 0,
      capacityBytes: 8 * KiB,
      blockSize: 4 * KiB,
      parentBlocks: [null],
    });
    assert.equal(disk.hasParent, false);
  });
});
