import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { bufferDigest, digestOfPieces, diskDigest } from '../helpers/disk-digest';

/** The tests' disk digest: equal for equal bytes however they arrive, different for any other bytes. */
describe('disk digest', () => {
  const KiB = 1024;
  const disk = Buffer.alloc(1024 * KiB);
  disk.fill(7, 3 * KiB, 5 * KiB); // inside the first window
  disk.fill(9, 200 * KiB + 11, 640 * KiB); // across windows, unaligned

  it('a file gives the digest of its bytes in memory', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'digest-'));
    try {
      const file = path.join(dir, 'disk.raw');
      writeFileSync(file, disk);
      return diskDigest(file).then((d) => assert.equal(d, bufferDigest(disk)));
    } finally {
      setImmediate(() => rmSync(dir, { recursive: true, force: true }));
    }
  });

  it('bytes and counted zeros in pieces of any size give the same digest', () => {
    const base = bufferDigest(disk);
    // As the repository yields them: blocks of data and zero blocks, here of an unaligned size.
    const pieces: (Buffer | number)[] = [];
    for (let o = 0; o < disk.length; o += 3 * KiB + 512) {
      const block = disk.subarray(o, Math.min(disk.length, o + 3 * KiB + 512));
      pieces.push(block.equals(Buffer.alloc(block.length)) ? block.length : block);
    }
    assert.equal(digestOfPieces(pieces), base);
    // Zeros given as bytes or as a count, in one piece or many.
    assert.equal(digestOfPieces([disk.subarray(0, 5 * KiB), 195 * KiB + 11, disk.subarray(200 * KiB + 11)]), base);
    assert.equal(digestOfPieces([Buffer.alloc(100 * KiB), 28 * KiB]), digestOfPieces([128 * KiB]));
    assert.equal(digestOfPieces([100, Buffer.alloc(5), 1]), bufferDigest(Buffer.alloc(106)));
  });

  it('tells apart one changed byte, a changed length and a moved run of data', () => {
    const base = bufferDigest(disk);
    const one = Buffer.from(disk);
    one[1000 * KiB] = 1;
    assert.notEqual(bufferDigest(one), base);
    // A byte changed into zero in a window of data.
    const zeroed = Buffer.from(disk);
    zeroed[3 * KiB] = 0;
    assert.notEqual(bufferDigest(zeroed), base);
    // Trailing zeros are part of the disk.
    assert.notEqual(bufferDigest(Buffer.concat([disk, Buffer.alloc(64 * KiB)])), base);
    assert.notEqual(bufferDigest(disk.subarray(0, disk.length - 512)), base);
    // The same data a window later.
    const moved = Buffer.alloc(disk.length);
    disk.copy(moved, 64 * KiB, 0, disk.length - 64 * KiB);
    assert.notEqual(bufferDigest(moved), base);
    // An all-zero disk of each length has its own digest.
    assert.notEqual(bufferDigest(Buffer.alloc(128 * KiB)), bufferDigest(Buffer.alloc(192 * KiB)));
  });
});
