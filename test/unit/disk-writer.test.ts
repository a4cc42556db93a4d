import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { openSync, readSync, closeSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { DiskBlock } from '../../src/repository';
import { writeDiskToFile, type WriteProgress } from '../../src/transport/disk-writer';

const KiB = 1024;
let dir: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmrestore-disk-writer-'));
});
after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/** A disk of 64 KiB blocks, every third one zeros (data null). */
function disk(blocks: number, blockSize = 64 * KiB): { image: Buffer; blockSize: number } {
  const parts = Array.from({ length: blocks }, (_, i) => (i % 3 === 1 ? Buffer.alloc(blockSize) : randomBytes(blockSize)));
  return { image: Buffer.concat(parts), blockSize };
}

/** Reads `length` bytes of `file` at `position`, synchronously (inside a release callback). */
function readAt(file: string, position: number, length: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const out = Buffer.alloc(length);
    readSync(fd, out, 0, length, position);
    return out;
  } finally {
    closeSync(fd);
  }
}

describe('writeDiskToFile', () => {
  it('writes every block with writes and syncs overlapping; checkpoints in order, each behind durable writes', async () => {
    const { image, blockSize } = disk(40);
    const target = path.join(dir, 'a.img');
    await fs.writeFile(target, '');
    const released: number[] = [];
    async function* blocks(): AsyncGenerator<DiskBlock> {
      for (let offset = 0; offset < image.length; offset += blockSize) {
        const data = Buffer.from(image.subarray(offset, offset + blockSize));
        const zero = data.equals(Buffer.alloc(blockSize));
        yield {
          offset,
          length: blockSize,
          data: zero ? null : data,
          // Handed back only once its bytes are in the file.
          release: () => {
            assert.ok(readAt(target, offset, blockSize).equals(image.subarray(offset, offset + blockSize)), `block at ${offset}`);
            released.push(offset);
          },
        };
      }
    }
    const checkpoints: WriteProgress[] = [];
    const progress = await writeDiskToFile({
      targetPath: target,
      capacityBytes: image.length,
      blocks: blocks(),
      checkpointBytes: 3 * blockSize,
      targetIsZeroed: true,
      onCheckpoint: (p) => {
        // Everything below a reported checkpoint is already written.
        assert.ok(readAt(target, 0, p.checkpointOffset).equals(image.subarray(0, p.checkpointOffset)));
        checkpoints.push(p);
      },
    });
    assert.ok((await fs.readFile(target)).equals(image));
    const dataBlocks = Array.from({ length: 40 }, (_, i) => i).filter((i) => i % 3 !== 1);
    assert.deepEqual(
      [...released].sort((a, b) => a - b),
      dataBlocks.map((i) => i * blockSize),
    );
    assert.equal(progress.bytesWritten, dataBlocks.length * blockSize);
    assert.equal(progress.bytesSkippedZero, (40 - dataBlocks.length) * blockSize);
    assert.equal(progress.checkpointOffset, image.length);
    assert.ok(checkpoints.length >= 9, `${checkpoints.length} checkpoints`);
    for (let i = 1; i < checkpoints.length; i++) {
      // Strictly rising, but for the closing report, which may repeat a checkpoint at the last block.
      const rises = checkpoints[i].checkpointOffset > checkpoints[i - 1].checkpointOffset;
      assert.ok(rises || (i === checkpoints.length - 1 && checkpoints[i].checkpointOffset === image.length));
      assert.ok(checkpoints[i].bytesWritten >= checkpoints[i - 1].bytesWritten);
    }
    assert.equal(checkpoints.at(-1)!.checkpointOffset, image.length);
    // The target is sparse where zero blocks were skipped.
    const st = await fs.stat(target);
    assert.ok(st.blocks * 512 <= dataBlocks.length * blockSize + 64 * KiB, `${st.blocks * 512} bytes allocated`);
  });

  it('writes zeros when the target is not zeroed, and resumes from the first block given', async () => {
    const { image, blockSize } = disk(12);
    const target = path.join(dir, 'b.img');
    await fs.writeFile(target, Buffer.alloc(image.length, 0xff));
    const from = 4 * blockSize;
    async function* blocks(): AsyncGenerator<DiskBlock> {
      for (let offset = from; offset < image.length; offset += blockSize) {
        const data = image.subarray(offset, offset + blockSize);
        yield { offset, length: blockSize, data: data.equals(Buffer.alloc(blockSize)) ? null : data };
      }
    }
    const first: number[] = [];
    await writeDiskToFile({
      targetPath: target,
      capacityBytes: image.length,
      blocks: blocks(),
      checkpointBytes: 2 * blockSize,
      targetIsZeroed: false,
      onCheckpoint: (p) => first.push(p.checkpointOffset),
    });
    const written = await fs.readFile(target);
    assert.ok(written.subarray(0, from).equals(Buffer.alloc(from, 0xff)), 'below the resume offset untouched');
    assert.ok(written.subarray(from).equals(image.subarray(from)));
    assert.ok(first[0] > from);
  });

  it('stops with the abort reason and leaves no write running', async () => {
    const { image, blockSize } = disk(30);
    const target = path.join(dir, 'c.img');
    await fs.writeFile(target, '');
    const controller = new AbortController();
    async function* blocks(): AsyncGenerator<DiskBlock> {
      for (let offset = 0; offset < image.length; offset += blockSize) {
        if (offset === 10 * blockSize) controller.abort(new Error('stop here'));
        yield { offset, length: blockSize, data: image.subarray(offset, offset + blockSize) };
      }
    }
    await assert.rejects(
      writeDiskToFile({
        targetPath: target,
        capacityBytes: image.length,
        blocks: blocks(),
        checkpointBytes: 4 * blockSize,
        targetIsZeroed: true,
        signal: controller.signal,
      }),
      /stop here/,
    );
  });
});
