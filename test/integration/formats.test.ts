import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { importRestorePoint, readDiskBlocks, getRestorePoint, type RestorePoint } from '../../src/repository';
import { openDiskImage } from '../../src/repository/formats';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
/** Every case must finish well within this; a reader caught in a loop fails here instead of hanging. */
const CASE_TIMEOUT = 120_000;

let workDir: string;
let smallRaw: string;
let largeRaw: string;

const qemuImg = (...args: string[]): string => execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const qemuIo = (file: string, format: string, command: string): void =>
  void execFileSync('qemu-io', ['-f', format, '-c', command, file], { stdio: ['ignore', 'pipe', 'pipe'] });

/**
 * Block digest: sha256 over (offset, sha256) of every non-zero 1 MiB block, plus the length. Whole zero
 * blocks are skipped without hashing, so a 5 GiB sparse disk compares in seconds; any differing byte changes it.
 */
class BlockDigest {
  private readonly hash = createHash('sha256');
  private readonly buf = Buffer.alloc(MiB);
  private fill = 0;
  private offset = 0;
  private readonly zero = Buffer.alloc(MiB);
  update(data: Buffer | null, length: number): void {
    for (let pos = 0; pos < length; ) {
      const take = Math.min(MiB - this.fill, length - pos);
      if (data === null && this.fill === 0 && take === MiB) {
        const whole = Math.floor((length - pos) / MiB) * MiB;
        this.offset += whole;
        pos += whole;
        continue;
      }
      if (data) data.copy(this.buf, this.fill, pos, pos + take);
      else this.buf.fill(0, this.fill, this.fill + take);
      this.fill += take;
      pos += take;
      if (this.fill === MiB) this.block();
    }
  }
  private block(): void {
    const b = this.buf.subarray(0, this.fill);
    if (!b.equals(this.zero.subarray(0, b.length))) this.hash.update(`${this.offset}:${createHash('sha256').update(b).digest('hex')}\n`);
    this.offset += b.length;
    this.fill = 0;
  }
  digest(): string {
    if (this.fill > 0) this.block();
    return `${this.offset}/${this.hash.digest('hex')}`;
  }
}

/** sha256 (small files) and block digest of a raw file; holes found by qemu-img map are not read. */
async function fileDigest(file: string): Promise<{ sha256: string; blocks: string; size: number }> {
  const sha = createHash('sha256');
  const blocks = new BlockDigest();
  const handle = await fs.open(file, 'r');
  const size = (await handle.stat()).size;
  const small = size <= 64 * MiB;
  const map = JSON.parse(qemuImg('map', '-f', 'raw', '--output=json', file)) as { start: number; length: number; data: boolean }[];
  const buf = Buffer.alloc(8 * MiB);
  try {
    for (const range of map) {
      if (!range.data && !small) {
        blocks.update(null, range.length);
        continue;
      }
      for (let at = range.start; at < range.start + range.length; ) {
        const { bytesRead } = await handle.read(buf, 0, Math.min(buf.length, range.start + range.length - at), at);
        const data = buf.subarray(0, bytesRead);
        if (small) sha.update(data);
        blocks.update(data, bytesRead);
        at += bytesRead;
      }
    }
  } finally {
    await handle.close();
  }
  return { sha256: small ? sha.digest('hex') : '', blocks: blocks.digest(), size };
}

async function restoredDigest(repo: string, rp: RestorePoint): Promise<{ sha256: string; blocks: string; size: number }> {
  const sha = createHash('sha256');
  const blocks = new BlockDigest();
  const disk = rp.disks[0];
  for await (const block of readDiskBlocks(repo, rp, 0)) {
    if (disk.capacityBytes <= 64 * MiB) sha.update(block.data ?? Buffer.alloc(block.length));
    blocks.update(block.data, block.length);
  }
  return { sha256: disk.capacityBytes <= 64 * MiB ? sha.digest('hex') : '', blocks: blocks.digest(), size: disk.capacityBytes };
}

let counter = 0;
async function importImage(image: string, format?: string): Promise<{ repo: string; rp: RestorePoint }> {
  const dir = path.join(workDir, `import-${++counter}`);
  await fs.mkdir(dir);
  const repo = path.join(dir, 'repo');
  const vmJson = path.join(dir, 'vm.json');
  const disk: Record<string, string> = { path: image, provisioning: 'thin' };
  if (format) disk.format = format;
  await fs.writeFile(
    vmJson,
    JSON.stringify({ name: `vm-${counter}`, guestOs: 'linux', firmware: 'bios', cpus: 1, memoryMiB: 512, nics: [], disks: [disk] }),
  );
  const res = await importRestorePoint(repo, vmJson);
  return { repo, rp: await getRestorePoint(repo, res.restorePointId) };
}

/** Our content: random, zero and repeated regions, a block boundary straddled, a random tail. */
async function writeSmallContent(file: string): Promise<void> {
  const repeated = Buffer.alloc(MiB);
  const pattern = randomBytes(64 * KiB);
  for (let i = 0; i < 16; i++) pattern.copy(repeated, i * 64 * KiB);
  const image = Buffer.concat([
    randomBytes(MiB), // random
    Buffer.alloc(MiB), // zeros: a hole
    repeated, // repeated 64 KiB pattern
    repeated, // the same MiB again: one chunk serves both
    Buffer.alloc(512 * KiB),
    randomBytes(1 * MiB), // straddles the 5 MiB block boundary
    Buffer.alloc(508 * KiB),
    randomBytes(4 * KiB), // random tail
  ]);
  assert.equal(image.length, 6 * MiB);
  await fs.writeFile(file, image);
}

/** 5 GiB virtual, a few MiB of data: at 0, across the 4 GiB line, and at the very end. */
async function writeLargeContent(file: string): Promise<void> {
  const handle = await fs.open(file, 'w');
  try {
    await handle.truncate(5 * GiB);
    await handle.write(randomBytes(MiB), 0, MiB, 0);
    await handle.write(randomBytes(3 * MiB), 0, 3 * MiB, 4 * GiB - MiB - 512);
    await handle.write(randomBytes(64 * KiB), 0, 64 * KiB, 5 * GiB - 64 * KiB);
  } finally {
    await handle.close();
  }
}

interface Variant {
  name: string;
  /** qemu-img's name for the format, for its reference conversion. */
  qemuFormat: string;
  /** Our name for it, as vm.json's `format`. */
  format: string;
  subformat: string;
  make: (source: string, out: string) => void;
  /** File name of the image to import (a descriptor for monolithicFlat). */
  file: string;
}

const convertVariant = (name: string, qemuFormat: string, format: string, subformat: string, ext: string, opts: string[]): Variant => ({
  name,
  qemuFormat,
  format,
  subformat,
  file: `disk.${ext}`,
  make: (source, out) => void qemuImg('convert', '-f', 'raw', '-O', qemuFormat, ...opts, source, out),
});

const VARIANTS: Variant[] = [
  convertVariant('raw', 'raw', 'raw', 'raw', 'img', []),
  convertVariant('VMDK monolithicSparse', 'vmdk', 'vmdk', 'monolithicSparse', 'vmdk', ['-o', 'subformat=monolithicSparse']),
  convertVariant('VMDK streamOptimized', 'vmdk', 'vmdk', 'streamOptimized', 'vmdk', ['-o', 'subformat=streamOptimized']),
  convertVariant('VMDK monolithicFlat', 'vmdk', 'vmdk', 'monolithicFlat', 'vmdk', ['-o', 'subformat=monolithicFlat']),
  convertVariant('qcow2 compat=0.10 (v2)', 'qcow2', 'qcow2', 'v2', 'qcow2', ['-o', 'compat=0.10']),
  convertVariant('qcow2 compat=1.1 (v3)', 'qcow2', 'qcow2', 'v3', 'qcow2', ['-o', 'compat=1.1']),
  convertVariant('qcow2 v3 with compressed clusters', 'qcow2', 'qcow2', 'v3', 'qcow2', ['-c', '-o', 'compat=1.1']),
  convertVariant('VHD fixed', 'vpc', 'vhd', 'fixed', 'vhd', ['-o', 'subformat=fixed']),
  convertVariant('VHD dynamic', 'vpc', 'vhd', 'dynamic', 'vhd', ['-o', 'subformat=dynamic']),
  convertVariant('VHDX', 'vhdx', 'vhdx', 'dynamic', 'vhdx', []),
  {
    name: 'qcow2 with a backing file in the same folder',
    qemuFormat: 'qcow2',
    format: 'qcow2',
    subformat: 'v3',
    file: 'overlay.qcow2',
    make: (source, out) => {
      const base = path.join(path.dirname(out), 'base.qcow2');
      qemuImg('convert', '-f', 'raw', '-O', 'qcow2', source, base);
      qemuImg('create', '-f', 'qcow2', '-F', 'qcow2', '-b', 'base.qcow2', out);
      qemuIo(out, 'qcow2', 'write -P 0xab 64k 128k'); // over base data
      qemuIo(out, 'qcow2', 'write -z 2M 1M'); // zero clusters over the repeated region
      qemuIo(out, 'qcow2', 'write -P 0x5a 1M 4k'); // inside the base's hole
    },
  },
];

before(async () => {
  workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmrestore-formats-'));
  smallRaw = path.join(workDir, 'small.raw');
  largeRaw = path.join(workDir, 'large.raw');
  await writeSmallContent(smallRaw);
  await writeLargeContent(largeRaw);
});
after(async () => {
  await fs.rm(workDir, { recursive: true, force: true });
});

for (const [label, source] of [
  ['6 MiB disk', () => smallRaw],
  ['5 GiB sparse disk (64-bit offsets)', () => largeRaw],
] as const) {
  describe(`every format matches qemu-img convert -O raw: ${label}`, () => {
    for (const variant of VARIANTS) {
      it(variant.name, { timeout: CASE_TIMEOUT }, async () => {
        const dir = path.join(workDir, `${variant.name.replace(/\W+/g, '-')}-${++counter}`);
        await fs.mkdir(dir);
        const image = path.join(dir, variant.file);
        variant.make(source(), image);
        const reference = path.join(dir, 'reference.raw');
        qemuImg('convert', '-f', variant.qemuFormat, '-O', 'raw', image, reference);
        const expected = await fileDigest(reference);
        await fs.rm(reference);

        const opened = await openDiskImage(image);
        await opened.close();
        assert.deepEqual([opened.format, opened.subformat], [variant.format, variant.subformat]);

        const { repo, rp } = await importImage(image, variant.format);
        const actual = await restoredDigest(repo, rp);
        assert.equal(actual.size, expected.size, 'virtual size');
        assert.equal(actual.blocks, expected.blocks, 'block digest');
        if (expected.sha256) assert.equal(actual.sha256, expected.sha256, 'sha256 of the whole disk');

        // Holes stay holes: zero ranges become zero blocks and are not stored.
        const zeroBlocks = rp.disks[0].blocks.filter((b) => b === null).length;
        const minZero = rp.disks[0].capacityBytes > GiB ? 5 * 1024 - 8 : 1;
        assert.ok(zeroBlocks >= minZero, `zero blocks ${zeroBlocks} >= ${minZero}`);
      });
    }
  });
}

describe('format key and detection', () => {
  it('detects the format when vm.json gives none, and refuses a format that does not match', { timeout: CASE_TIMEOUT }, async () => {
    const dir = path.join(workDir, 'detect');
    await fs.mkdir(dir);
    const image = path.join(dir, 'disk.vmdk');
    qemuImg('convert', '-f', 'raw', '-O', 'vmdk', smallRaw, image);
    const { rp } = await importImage(image);
    assert.equal(rp.disks[0].capacityBytes, 6 * MiB);
    await assert.rejects(importImage(image, 'qcow2'), (err: Error) => {
      assert.match(err.message, /disks\[0\]\.path .*format is given as 'qcow2' but the file is vmdk/);
      return true;
    });
    await assert.rejects(importImage(image, 'vdi'), /disks\[0\]\.format 'vdi' must be one of 'raw', 'vmdk', 'qcow2', 'vhd', 'vhdx'/);
  });
});

/** Copies `source` to a damaged file after `damage` edits its bytes. */
async function damaged(name: string, source: string, damage: (buf: Buffer) => Buffer | void): Promise<string> {
  const buf = await fs.readFile(source);
  const out = path.join(workDir, 'damaged', name);
  await fs.mkdir(path.dirname(out), { recursive: true });
  await fs.writeFile(out, damage(buf) ?? buf);
  return out;
}

async function expectRefused(file: string, field: RegExp): Promise<void> {
  const started = Date.now();
  await assert.rejects(
    (async () => {
      const image = await openDiskImage(file);
      try {
        for await (const extent of image.extents()) void extent;
      } finally {
        await image.close();
      }
    })(),
    (err: Error) => {
      assert.equal(err.name, 'RestoreError', `a RestoreError, not ${err.name}: ${err.message}`);
      assert.ok(err.message.includes(file), `names the file ${file}: ${err.message}`);
      assert.match(err.message, field);
      return true;
    },
  );
  assert.ok(Date.now() - started < 30_000, 'refused promptly');
}

/** Microsoft's mixed-endian GUID bytes. */
function guidBytes(text: string): Buffer {
  const hex = text.replace(/-/g, '');
  const b = Buffer.from(hex, 'hex');
  return Buffer.concat([
    Buffer.from(b.subarray(0, 4)).reverse(),
    Buffer.from(b.subarray(4, 6)).reverse(),
    Buffer.from(b.subarray(6, 8)).reverse(),
    b.subarray(8),
  ]);
}

describe('damaged and hostile images are refused, naming the file and the field', () => {
  const images: Record<string, string> = {};
  before(() => {
    const dir = path.join(workDir, 'sources');
    execFileSync('mkdir', ['-p', dir]);
    const make = (name: string, source: string, ...args: string[]) => {
      images[name] = path.join(dir, name);
      qemuImg('convert', '-f', 'raw', ...args, source, images[name]);
    };
    make('small.qcow2', smallRaw, '-O', 'qcow2');
    make('large.qcow2', largeRaw, '-O', 'qcow2');
    make('sparse.vmdk', smallRaw, '-O', 'vmdk');
    make('stream.vmdk', smallRaw, '-O', 'vmdk', '-o', 'subformat=streamOptimized');
    make('dynamic.vhd', smallRaw, '-O', 'vpc', '-o', 'subformat=dynamic');
    make('disk.vhdx', smallRaw, '-O', 'vhdx', '-o', 'block_size=1M');
  });

  const cases: { name: string; source: string; field: RegExp; damage: (b: Buffer) => Buffer | void }[] = [
    { name: 'qcow2 truncated', source: 'small.qcow2', field: /past the end of the file/, damage: (b) => b.subarray(0, b.length / 2) },
    {
      name: 'qcow2 huge size',
      source: 'small.qcow2',
      field: /\bsize declares a virtual size of/,
      damage: (b) => void b.writeBigUInt64BE(1n << 60n, 24),
    },
    {
      name: 'qcow2 cluster_bits',
      source: 'small.qcow2',
      field: /cluster_bits 30 is out of range/,
      damage: (b) => void b.writeUInt32BE(30, 20),
    },
    {
      name: 'qcow2 l1_size overflow',
      source: 'small.qcow2',
      field: /l1_size 4294967295/,
      damage: (b) => void b.writeUInt32BE(0xffffffff, 36),
    },
    {
      name: 'qcow2 L1 entry looping to the L1 table',
      source: 'small.qcow2',
      field: /L1 entry 0 L2 offset \d+ points into the L1 table \(a loop/,
      damage: (b) => {
        const l1 = Number(b.readBigUInt64BE(40));
        b.writeBigUInt64BE(BigInt(l1) | (1n << 63n), l1);
      },
    },
    {
      name: 'qcow2 two L1 entries sharing an L2 table',
      source: 'large.qcow2',
      field: /L1 entry 8 L2 offset \d+ is also used by L1 entry 0 \(a loop/,
      damage: (b) => {
        const l1 = Number(b.readBigUInt64BE(40));
        b.writeBigUInt64BE(b.readBigUInt64BE(l1), l1 + 8 * 8);
      },
    },
    {
      name: 'qcow2 data cluster pointing at an L2 table',
      source: 'small.qcow2',
      field: /L2 entry 0 of L1 entry 0 cluster offset \d+ points at the L2 table/,
      damage: (b) => {
        const l1 = Number(b.readBigUInt64BE(40));
        const l2 = Number(b.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
        b.writeBigUInt64BE(BigInt(l2) | (1n << 63n), l2);
      },
    },
    {
      name: 'vmdk grain size',
      source: 'sparse.vmdk',
      field: /grainSize 3 sectors is out of range/,
      damage: (b) => void b.writeBigUInt64LE(3n, 20),
    },
    {
      name: 'vmdk huge capacity',
      source: 'sparse.vmdk',
      field: /capacity declares a virtual size/,
      damage: (b) => void b.writeBigUInt64LE(1n << 62n, 12),
    },
    {
      name: 'vmdk grain directory past the end',
      source: 'sparse.vmdk',
      field: /grain directory entry 0 grain table at \d+ is past the end/,
      damage: (b) => void b.writeUInt32LE(0x7fffffff, Number(b.readBigUInt64LE(56)) * 512),
    },
    { name: 'vmdk truncated', source: 'sparse.vmdk', field: /past the end of the file/, damage: (b) => b.subarray(0, 200 * 1024) },
    {
      name: 'streamOptimized truncated',
      source: 'stream.vmdk',
      field: /stream ends at \d+ before its end-of-stream marker/,
      damage: (b) => b.subarray(0, 300 * 1024),
    },
    {
      name: 'streamOptimized cut at a grain boundary',
      source: 'stream.vmdk',
      field: /stream ends at \d+ before its end-of-stream marker/,
      damage: (b) => {
        let at = Number(b.readBigUInt64LE(64)) * 512;
        for (let grain = 0; grain < 3; grain++) at += Math.ceil((12 + b.readUInt32LE(at + 8)) / 512) * 512;
        return b.subarray(0, at);
      },
    },
    {
      name: 'streamOptimized corrupt grain',
      source: 'stream.vmdk',
      field: /grain marker at 65536 does not inflate/,
      damage: (b) => void b.fill(0x55, 65536 + 12, 65536 + 400),
    },
    {
      name: 'streamOptimized absurd compressed size',
      source: 'stream.vmdk',
      field: /grain marker at 65536 compressed size 4294967295 is larger/,
      damage: (b) => void b.writeUInt32LE(0xffffffff, 65536 + 8),
    },
    {
      name: 'vhd footer checksum',
      source: 'dynamic.vhd',
      field: /footer checksum/,
      damage: (b) => void b.writeUInt32BE(0, b.length - 512 + 64),
    },
    {
      name: 'vhd BAT entry past the end',
      source: 'dynamic.vhd',
      field: /BAT entry 0 block at \d+ is past the end/,
      damage: (b) => void b.writeUInt32BE(0x7ffffff0, Number(b.readBigUInt64BE(512 + 16))),
    },
    {
      name: 'vhd BAT entry looping to another block',
      source: 'dynamic.vhd',
      field: /BAT entry 1 block at \d+ is also used by BAT entry 0/,
      damage: (b) => {
        const bat = Number(b.readBigUInt64BE(512 + 16));
        b.writeUInt32BE(b.readUInt32BE(bat), bat + 4);
      },
    },
    {
      name: 'vhdx both headers corrupt',
      source: 'disk.vhdx',
      field: /header has no valid copy/,
      damage: (b) => void (b.fill(1, 64 * 1024 + 100, 64 * 1024 + 104), b.fill(1, 128 * 1024 + 100, 128 * 1024 + 104)),
    },
    ...(['loop', 'into-bat', 'huge-size'] as const).map((kind) => ({
      name: `vhdx ${kind}`,
      source: 'disk.vhdx',
      field: {
        loop: /BAT entry 1 \(block 1\) block at \d+ is also used by block 0 \(a loop/,
        'into-bat': /BAT entry 0 \(block 0\) block at \d+ points into the BAT/,
        'huge-size': /metadata virtual disk size declares a virtual size/,
      }[kind],
      damage: (b: Buffer) => {
        const regions = 192 * 1024;
        const find = (id: string) => {
          const want = guidBytes(id);
          for (let i = 0; i < b.readUInt32LE(regions + 8); i++) {
            const at = regions + 16 + i * 32;
            if (b.subarray(at, at + 16).equals(want)) return Number(b.readBigUInt64LE(at + 16));
          }
          throw new Error(`region ${id} not found`);
        };
        const bat = find('2dc27766-f623-4200-9d64-115e9bfd4a08');
        if (kind === 'loop') b.writeBigUInt64LE(b.readBigUInt64LE(bat), bat + 8);
        if (kind === 'into-bat') b.writeBigUInt64LE((BigInt(bat / MiB) << 20n) | 6n, bat);
        if (kind === 'huge-size') {
          const meta = find('8b7ca206-4790-4b9a-b8fe-575f050f886e');
          const want = guidBytes('2fa54224-cd1b-4876-b211-5dbed83bf4b8');
          for (let i = 0; i < b.readUInt16LE(meta + 10); i++) {
            const at = meta + 32 + i * 32;
            if (b.subarray(at, at + 16).equals(want)) b.writeBigUInt64LE(1n << 62n, meta + b.readUInt32LE(at + 16));
          }
        }
      },
    })),
  ];
  for (const c of cases) {
    it(c.name, { timeout: CASE_TIMEOUT }, async () => {
      const file = await damaged(`${c.name.replace(/\W+/g, '-')}.img`, images[c.source], c.damage);
      await expectRefused(file, c.field);
    });
  }

  it('a monolithicFlat descriptor naming an extent outside its folder, or a short flat file', { timeout: CASE_TIMEOUT }, async () => {
    const dir = path.join(workDir, 'flat');
    await fs.mkdir(dir);
    const descriptor = path.join(dir, 'disk.vmdk');
    qemuImg('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicFlat', smallRaw, descriptor);
    const text = await fs.readFile(descriptor, 'utf8');
    await fs.writeFile(descriptor, text.replace('"disk-flat.vmdk"', '"../small.raw"'));
    await expectRefused(descriptor, /extent 0 file '\.\.\/small\.raw' is outside the descriptor's folder/);
    await fs.writeFile(descriptor, text);
    await fs.truncate(path.join(dir, 'disk-flat.vmdk'), 4096);
    await expectRefused(descriptor, /extent 0 file 'disk-flat\.vmdk' has 4096 bytes, less than the 6291456/);
  });

  it('a qcow2 backing file outside the image folder, and a backing chain that loops', { timeout: CASE_TIMEOUT }, async () => {
    const dir = path.join(workDir, 'backing');
    await fs.mkdir(path.join(dir, 'sub'), { recursive: true });
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', smallRaw, path.join(dir, 'base.qcow2'));
    const outside = path.join(dir, 'sub', 'overlay.qcow2');
    qemuImg('create', '-f', 'qcow2', '-F', 'qcow2', '-b', '../base.qcow2', outside);
    await expectRefused(outside, /backing file '\.\.\/base\.qcow2' is outside the image's folder/);
    const a = path.join(dir, 'a.qcow2');
    const b = path.join(dir, 'b.qcow2');
    qemuImg('create', '-f', 'qcow2', a, '6M');
    qemuImg('create', '-f', 'qcow2', '-F', 'qcow2', '-b', 'a.qcow2', b);
    qemuImg('rebase', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', 'b.qcow2', a);
    await expectRefused(b, /backing file .* is already in the backing chain \(a loop\)/);
  });
});
