import { promises as fsp } from 'node:fs';
import { crc32 } from 'node:zlib';
import { FailureType, RestoreError } from '../../domain/errors';
import { run } from '../exec';

/**
 * Partition tables and sparse range copies on raw disk images. Reading is pure TypeScript so it works
 * on any image file or buffer (including a repository block) without tools or privileges; writing a
 * table goes through sfdisk, which gets GPT details (backup header, CRCs, alignment) right.
 */

export type PartitionScheme = 'mbr' | 'gpt';
export type PartitionKind = 'linux' | 'ntfs' | 'efi';

export interface PartitionSpec {
  startBytes: number;
  sizeBytes: number;
  type: PartitionKind;
  /** MBR active flag; for GPT it sets the legacy BIOS bootable attribute. */
  bootable?: boolean;
  /** GPT partition name. */
  name?: string;
  /** GPT unique partition GUID; fixed values keep generated images reproducible. */
  uuid?: string;
}

export interface PartitionLayout {
  scheme: PartitionScheme;
  partitions: PartitionSpec[];
  /** MBR disk signature (`0x1234abcd`) or GPT disk GUID; random when omitted. */
  diskId?: string;
}

export interface PartitionEntry {
  /** 1-based, as Linux numbers partitions (sda1...); MBR logical partitions start at 5. */
  index: number;
  startBytes: number;
  sizeBytes: number;
  type: PartitionKind | 'other';
  /** MBR type byte as two hex digits (`83`), or the GPT type GUID in upper case. */
  typeCode: string;
  bootable: boolean;
  /** GPT only. */
  uuid?: string;
  /** GPT only. */
  name?: string;
}

export interface PartitionTable {
  scheme: PartitionScheme;
  /** MBR: `0x` + 8 hex digits of the disk signature; GPT: the disk GUID in upper case. */
  diskId: string;
  sectorSize: number;
  partitions: PartitionEntry[];
}

/** The image has no MBR/GPT (blank disk or a bare filesystem); callers may then probe offset 0. */
export class NoPartitionTableError extends RestoreError {
  constructor(what: string) {
    super(FailureType.GuestPreparation, `${what}: no MBR or GPT partition table found`);
    this.name = 'NoPartitionTableError';
  }
}

const MBR_TYPES: Record<PartitionKind, string> = { linux: '83', ntfs: '07', efi: 'ef' };
const GPT_TYPES: Record<PartitionKind, string> = {
  linux: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
  ntfs: 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7',
  efi: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
};
const EXTENDED_MBR_TYPES = new Set([0x05, 0x0f, 0x85]);

function kindFromMbr(code: number): PartitionKind | 'other' {
  if (code === 0x83) return 'linux';
  if (code === 0x07) return 'ntfs';
  if (code === 0xef) return 'efi';
  return 'other';
}

function kindFromGpt(guid: string): PartitionKind | 'other' {
  for (const [k, v] of Object.entries(GPT_TYPES)) if (v === guid) return k as PartitionKind;
  return 'other';
}

/** GUIDs on disk store the first three fields little-endian. */
export function guidFromBytes(b: Buffer): string {
  const hex = (x: Buffer) => x.toString('hex');
  const rev = (x: Buffer) => hex(Buffer.from(x).reverse());
  return [rev(b.subarray(0, 4)), rev(b.subarray(4, 6)), rev(b.subarray(6, 8)), hex(b.subarray(8, 10)), hex(b.subarray(10, 16))]
    .join('-')
    .toUpperCase();
}

function u64(b: Buffer, off: number): number {
  const v = b.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RestoreError(FailureType.GuestPreparation, 'GPT value out of range');
  return Number(v);
}

type Reader = ((offset: number, length: number) => Promise<Buffer>) & {
  /** Size of the whole disk when known (an image file); a buffer may hold only the disk's start. */
  diskBytes?: number;
};

function bufferReader(buf: Buffer): Reader {
  return async (offset, length) => {
    const out = Buffer.alloc(length);
    if (offset < buf.length) buf.copy(out, 0, offset, Math.min(buf.length, offset + length));
    return out;
  };
}

async function withImageReader<T>(image: string | Buffer, fn: (read: Reader) => Promise<T>): Promise<T> {
  if (Buffer.isBuffer(image)) return fn(bufferReader(image));
  const fh = await fsp.open(image, 'r');
  try {
    const read: Reader = async (offset, length) => {
      const out = Buffer.alloc(length);
      await fh.read(out, 0, length, offset);
      return out;
    };
    read.diskBytes = (await fh.stat()).size;
    return await fn(read);
  } finally {
    await fh.close();
  }
}

/**
 * Reads the partition table of a whole-disk image (path or buffer holding at least its start).
 * A protective MBR (type 0xEE) means GPT, read at LBA 1 with 512- or 4096-byte sectors.
 */
export async function readPartitionTable(image: string | Buffer): Promise<PartitionTable> {
  const what = Buffer.isBuffer(image) ? 'disk buffer' : image;
  return withImageReader(image, async (read) => {
    const mbr = await read(0, 512);
    if (mbr.readUInt16LE(510) !== 0xaa55) throw new NoPartitionTableError(what);
    const entries = [0, 1, 2, 3].map((i) => mbr.subarray(446 + i * 16, 446 + (i + 1) * 16));
    // A FAT/NTFS boot sector also ends in 55AA; its "entries" are code, so the status bytes give it away.
    if (entries.some((e) => e[0] !== 0x00 && e[0] !== 0x80)) throw new NoPartitionTableError(what);
    if (entries.some((e) => e[4] === 0xee)) {
      for (const sectorSize of [512, 4096]) {
        const hdr = await read(sectorSize, 92);
        if (hdr.toString('latin1', 0, 8) === 'EFI PART') return readGpt(read, hdr, sectorSize);
      }
      throw new RestoreError(FailureType.GuestPreparation, `${what}: protective MBR without a GPT header`);
    }
    const partitions: PartitionEntry[] = [];
    for (let i = 0; i < 4; i++) {
      const e = entries[i];
      const code = e[4];
      const startLba = e.readUInt32LE(8);
      const sectors = e.readUInt32LE(12);
      if (code === 0 || sectors === 0) continue;
      if (EXTENDED_MBR_TYPES.has(code)) {
        partitions.push(...(await readLogical(read, startLba)));
        continue;
      }
      partitions.push({
        index: i + 1,
        startBytes: startLba * 512,
        sizeBytes: sectors * 512,
        type: kindFromMbr(code),
        typeCode: code.toString(16).padStart(2, '0'),
        bootable: e[0] === 0x80,
      });
    }
    return {
      scheme: 'mbr' as const,
      diskId: '0x' + mbr.readUInt32LE(440).toString(16).padStart(8, '0'),
      sectorSize: 512,
      partitions,
    };
  });
}

/** Walks the EBR chain of an extended partition; each EBR's second entry points to the next one. */
async function readLogical(read: Reader, extStartLba: number): Promise<PartitionEntry[]> {
  const out: PartitionEntry[] = [];
  let ebrLba = extStartLba;
  const seen = new Set<number>();
  for (let index = 5; index < 5 + 256 && !seen.has(ebrLba); index++) {
    seen.add(ebrLba);
    const ebr = await read(ebrLba * 512, 512);
    if (ebr.readUInt16LE(510) !== 0xaa55) break;
    const e0 = ebr.subarray(446, 462);
    const e1 = ebr.subarray(462, 478);
    if (e0[4] !== 0 && e0.readUInt32LE(12) !== 0) {
      out.push({
        index,
        startBytes: (ebrLba + e0.readUInt32LE(8)) * 512,
        sizeBytes: e0.readUInt32LE(12) * 512,
        type: kindFromMbr(e0[4]),
        typeCode: e0[4].toString(16).padStart(2, '0'),
        bootable: e0[0] === 0x80,
      });
    }
    if (e1[4] === 0 || e1.readUInt32LE(12) === 0) break;
    ebrLba = extStartLba + e1.readUInt32LE(8);
  }
  return out;
}

/** GPT bounds: entries are 128 × 2^n bytes (UEFI 2.10 §5.3.2); tables beyond these sizes are not real. */
const GPT_MAX_ENTRY_SIZE = 4096;
const GPT_MAX_ENTRIES = 4096;
const GPT_MAX_TABLE_BYTES = 1024 * 1024;

function gptError(what: string): RestoreError {
  return new RestoreError(FailureType.GuestPreparation, `implausible GPT: ${what}; refused`);
}

async function readGpt(read: Reader, hdr: Buffer, sectorSize: number): Promise<PartitionTable> {
  const headerSize = hdr.readUInt32LE(12);
  const entriesLba = u64(hdr, 72);
  const count = hdr.readUInt32LE(80);
  const entrySize = hdr.readUInt32LE(84);
  const firstUsable = u64(hdr, 40);
  const lastUsable = u64(hdr, 48);
  if (headerSize < 92 || headerSize > sectorSize) throw gptError(`header size ${headerSize} bytes`);
  const full = await read(sectorSize, headerSize);
  const crc = full.readUInt32LE(16);
  full.writeUInt32LE(0, 16);
  if (crc32(full) !== crc) throw gptError('header CRC32 does not match');
  if (entrySize < 128 || entrySize > GPT_MAX_ENTRY_SIZE || entrySize % 128 !== 0 || (entrySize & (entrySize - 1)) !== 0) {
    throw gptError(`entry size ${entrySize} bytes (must be 128 × 2^n, at most ${GPT_MAX_ENTRY_SIZE})`);
  }
  if (count > GPT_MAX_ENTRIES || count * entrySize > GPT_MAX_TABLE_BYTES) {
    throw gptError(`${count} entries of ${entrySize} bytes (at most ${GPT_MAX_ENTRIES} entries and ${GPT_MAX_TABLE_BYTES} bytes)`);
  }
  const diskSectors = read.diskBytes === undefined ? undefined : Math.floor(read.diskBytes / sectorSize);
  const tableSectors = Math.ceil((count * entrySize) / sectorSize);
  if (entriesLba < 2 || (diskSectors !== undefined && entriesLba + tableSectors > diskSectors)) {
    throw gptError(`partition entries at LBA ${entriesLba} (${tableSectors} sectors) outside the disk`);
  }
  if (firstUsable > lastUsable || (diskSectors !== undefined && lastUsable >= diskSectors)) {
    throw gptError(`usable LBAs ${firstUsable}..${lastUsable} outside the disk`);
  }
  const table = await read(entriesLba * sectorSize, count * entrySize);
  if (crc32(table) !== hdr.readUInt32LE(88)) throw gptError('partition entry array CRC32 does not match');
  const partitions: PartitionEntry[] = [];
  for (let i = 0; i < count; i++) {
    const e = table.subarray(i * entrySize, (i + 1) * entrySize);
    const typeBytes = e.subarray(0, 16);
    if (typeBytes.every((x) => x === 0)) continue;
    const typeCode = guidFromBytes(typeBytes);
    const first = u64(e, 32);
    const last = u64(e, 40);
    if (first > last || first < firstUsable || last > lastUsable) {
      throw gptError(`entry ${i + 1} spans LBA ${first}..${last}, outside the usable ${firstUsable}..${lastUsable}`);
    }
    const attrs = e.readBigUInt64LE(48);
    partitions.push({
      index: i + 1,
      startBytes: first * sectorSize,
      sizeBytes: (last - first + 1) * sectorSize,
      type: kindFromGpt(typeCode),
      typeCode,
      bootable: (attrs & 4n) !== 0n,
      uuid: guidFromBytes(e.subarray(16, 32)),
      name: e.toString('utf16le', 56, 128).replace(/\0.*$/s, ''),
    });
  }
  return { scheme: 'gpt', diskId: guidFromBytes(hdr.subarray(56, 72)), sectorSize, partitions };
}

/**
 * Writes a fresh MBR or GPT to an existing image file (it must already have its final size, since GPT
 * keeps a backup at the end). Partition contents are not touched.
 */
export async function writePartitionTable(imagePath: string, layout: PartitionLayout): Promise<void> {
  const lines: string[] = [`label: ${layout.scheme === 'mbr' ? 'dos' : 'gpt'}`];
  if (layout.diskId) lines.push(`label-id: ${layout.diskId}`);
  lines.push('unit: sectors');
  for (const p of layout.partitions) {
    if (p.startBytes % 512 !== 0 || p.sizeBytes % 512 !== 0 || p.sizeBytes <= 0) {
      throw new RestoreError(FailureType.InvalidRequest, `partition start/size must be positive multiples of 512 bytes`);
    }
    const fields = [
      `start=${p.startBytes / 512}`,
      `size=${p.sizeBytes / 512}`,
      `type=${layout.scheme === 'mbr' ? MBR_TYPES[p.type] : GPT_TYPES[p.type]}`,
    ];
    if (layout.scheme === 'mbr') {
      if (p.bootable) fields.push('bootable');
    } else {
      if (p.uuid) fields.push(`uuid=${p.uuid}`);
      if (p.name) {
        // sfdisk script syntax: a quoted name must stay on its line and cannot contain a quote.
        // eslint-disable-next-line no-control-regex
        if (/["\\\x00-\x1f\x7f]/.test(p.name) || p.name.length > 36) {
          throw new RestoreError(FailureType.InvalidRequest, `GPT partition name ${JSON.stringify(p.name)} is not allowed`);
        }
        fields.push(`name="${p.name}"`);
      }
      if (p.bootable) fields.push('attrs="LegacyBIOSBootable"');
    }
    lines.push(fields.join(', '));
  }
  await run('sfdisk', ['--no-reread', '--no-tell-kernel', '--wipe', 'never', '--wipe-partitions', 'never', '-q', imagePath], {
    input: lines.join('\n') + '\n',
    env: { LC_ALL: 'C' },
  });
}

export interface FilesystemInfo {
  type: 'ext2' | 'ext3' | 'ext4' | 'xfs' | 'vfat' | 'ntfs' | 'swap';
  /** As blkid prints it (and fstab's UUID= expects): dashed GUID, `XXXX-XXXX` for FAT, 16 hex for NTFS. */
  uuid: string;
  label: string;
}

function cstr(b: Buffer, enc: BufferEncoding = 'latin1'): string {
  return b.toString(enc).replace(/\0.*$/s, '').trim();
}

function dashedUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Identifies the filesystem at an offset from its superblock, so fstab entries can be rewritten by UUID. */
export async function probeFilesystem(image: string | Buffer, offset: number): Promise<FilesystemInfo | null> {
  return withImageReader(image, async (read) => {
    const head = await read(offset, 4096);
    const ext = await read(offset + 1024, 1024);
    if (ext.readUInt16LE(56) === 0xef53) {
      const compat = ext.readUInt32LE(92);
      const incompat = ext.readUInt32LE(96);
      // extents, 64bit, flex_bg or huge files mean the ext4 driver is required.
      const type = incompat & (0x40 | 0x80 | 0x200) ? 'ext4' : compat & 0x4 ? 'ext3' : 'ext2';
      return { type, uuid: dashedUuid(ext.subarray(104, 120)), label: cstr(ext.subarray(120, 136)) };
    }
    if (head.toString('latin1', 0, 4) === 'XFSB') {
      return { type: 'xfs', uuid: dashedUuid(head.subarray(32, 48)), label: cstr(head.subarray(108, 120)) };
    }
    if (head.toString('latin1', 3, 11) === 'NTFS    ') {
      const serial = Buffer.from(head.subarray(72, 80)).reverse().toString('hex').toUpperCase();
      return { type: 'ntfs', uuid: serial, label: '' };
    }
    if (head.readUInt16LE(510) === 0xaa55) {
      const fat32 = head.toString('latin1', 82, 87) === 'FAT32';
      const fat = fat32 || head.toString('latin1', 54, 57) === 'FAT';
      if (fat) {
        const at = fat32 ? 67 : 39;
        const serial = head.readUInt32LE(at).toString(16).toUpperCase().padStart(8, '0');
        return {
          type: 'vfat',
          uuid: `${serial.slice(0, 4)}-${serial.slice(4)}`,
          label: cstr(head.subarray(at + 4, at + 15)),
        };
      }
    }
    if (head.toString('latin1', 4086, 4096) === 'SWAPSPACE2') {
      return { type: 'swap', uuid: dashedUuid(head.subarray(1036, 1052)), label: cstr(head.subarray(1052, 1068)) };
    }
    return null;
  });
}

export interface CopyRangeOptions {
  /** Where the range lands in dst; 0 by default. */
  dstOffset?: number;
  /**
   * The destination range is known to read as zeros (a freshly truncated image), so zero blocks are
   * skipped without looking at it. Otherwise zero blocks are written only where dst holds data.
   */
  dstIsZero?: boolean;
  /** Read size; zero detection is finer (4 KiB) inside each block. */
  blockSize?: number;
}

export interface CopyRangeResult {
  /** Bytes actually written to dst; zero runs that needed no write are not counted. */
  bytesWritten: number;
}

const ZERO_GRAIN = 4096;

/**
 * Copies src[offset, offset+length) into dst at opts.dstOffset without writing zero blocks, so sparse
 * images stay sparse. dst is created if missing and grown (never shrunk) to hold the range.
 */
export async function copyRange(
  src: string,
  dst: string,
  offset: number,
  length: number,
  opts: CopyRangeOptions = {},
): Promise<CopyRangeResult> {
  const dstOffset = opts.dstOffset ?? 0;
  const blockSize = opts.blockSize ?? 1024 * 1024;
  if (blockSize % ZERO_GRAIN !== 0) {
    throw new RestoreError(FailureType.InvalidRequest, `blockSize must be a multiple of ${ZERO_GRAIN}`);
  }
  const sfh = await fsp.open(src, 'r');
  const dfh = await fsp.open(dst, 'a+').then(async (h) => {
    // 'a+' only to create without truncating; reopen for positional writes ('a' ignores positions on Linux).
    await h.close();
    return fsp.open(dst, 'r+');
  });
  try {
    const dstSizeBefore = (await dfh.stat()).size;
    const buf = Buffer.alloc(blockSize);
    const cmp = Buffer.alloc(blockSize);
    const zero = Buffer.alloc(blockSize);
    let bytesWritten = 0;
    for (let done = 0; done < length; ) {
      const want = Math.min(blockSize, length - done);
      const { bytesRead } = await sfh.read(buf, 0, want, offset + done);
      // Past the end of src reads as zeros, like a sparse tail.
      if (bytesRead < want) buf.fill(0, bytesRead, want);
      const chunk = buf.subarray(0, want);
      const at = dstOffset + done;
      if (chunk.equals(zero.subarray(0, want))) {
        bytesWritten += await zeroIfNeeded(dfh, cmp, zero, at, want, dstSizeBefore, opts.dstIsZero === true);
      } else {
        // Write runs of non-zero 4 KiB grains; zero grains in between get the same treatment as zero blocks.
        let i = 0;
        while (i < want) {
          const grainEnd = (p: number) => Math.min(p + ZERO_GRAIN, want);
          const isZero = (p: number) => chunk.subarray(p, grainEnd(p)).equals(zero.subarray(0, grainEnd(p) - p));
          const start = i;
          const zeroRun = isZero(i);
          while (i < want && isZero(i) === zeroRun) i = grainEnd(i);
          if (zeroRun) {
            bytesWritten += await zeroIfNeeded(dfh, cmp, zero, at + start, i - start, dstSizeBefore, opts.dstIsZero === true);
          } else {
            await dfh.write(chunk, start, i - start, at + start);
            bytesWritten += i - start;
          }
        }
      }
      done += want;
    }
    if ((await dfh.stat()).size < dstOffset + length) await dfh.truncate(dstOffset + length);
    return { bytesWritten };
  } finally {
    await sfh.close();
    await dfh.close();
  }
}

async function zeroIfNeeded(
  dfh: fsp.FileHandle,
  cmp: Buffer,
  zero: Buffer,
  at: number,
  len: number,
  dstSize: number,
  dstIsZero: boolean,
): Promise<number> {
  if (dstIsZero || at >= dstSize) return 0;
  const n = Math.min(len, dstSize - at);
  const { bytesRead } = await dfh.read(cmp, 0, n, at);
  const have = cmp.subarray(0, bytesRead);
  if (have.equals(zero.subarray(0, bytesRead))) return 0;
  // Clear only the grains that hold data, so holes in dst stay holes.
  let written = 0;
  for (let i = 0; i < bytesRead; ) {
    const end = (p: number) => Math.min(p + ZERO_GRAIN, bytesRead);
    const dirty = (p: number) => !have.subarray(p, end(p)).equals(zero.subarray(0, end(p) - p));
    if (!dirty(i)) {
      i = end(i);
      continue;
    }
    const start = i;
    while (i < bytesRead && dirty(i)) i = end(i);
    await dfh.write(zero, 0, i - start, at + start);
    written += i - start;
  }
  return written;
}

/** Embeds a whole file (a partition image) into a disk image at offset, sparsely. */
export async function writeRangeInto(
  image: string,
  offset: number,
  file: string,
  opts: Omit<CopyRangeOptions, 'dstOffset'> = {},
): Promise<CopyRangeResult> {
  const { size } = await fsp.stat(file);
  return copyRange(file, image, 0, size, { ...opts, dstOffset: offset });
}
