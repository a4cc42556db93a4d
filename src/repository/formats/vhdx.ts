import { ImageFile, MAX_TABLE_BYTES, checkCapacity, imageError, mappedImage, u64, type MappedImage, type Piece } from './image';
import { MiB } from '../../domain/units';

const F = 'vhdx';
const KiB64 = 64 * 1024;
const HEADER_OFFSETS = [64 * 1024, 128 * 1024];
const REGION_TABLE_OFFSETS = [192 * 1024, 256 * 1024];
const BAT_GUID = '2dc27766-f623-4200-9d64-115e9bfd4a08';
const METADATA_GUID = '8b7ca206-4790-4b9a-b8fe-575f050f886e';
const FILE_PARAMETERS = 'caa16737-fa36-4d43-b3b6-33f0aa44e76b';
const VIRTUAL_DISK_SIZE = '2fa54224-cd1b-4876-b211-5dbed83bf4b8';
const LOGICAL_SECTOR_SIZE = '8141bf1d-a96f-4709-ba47-f233a8faab5f';
const KNOWN_METADATA = new Set([
  FILE_PARAMETERS,
  VIRTUAL_DISK_SIZE,
  LOGICAL_SECTOR_SIZE,
  'beca12ab-b2e6-4523-93ef-c309e000c746', // virtual disk id
  'cda348c7-445d-4471-9cc9-e9885251c556', // physical sector size
]);
const PARENT_LOCATOR = 'a8d35f2d-b30b-454d-abf7-d3d84834ab0c';
const MAX_ENTRIES = 2047;
/** Payload block states: 6 fully present; 0, 1, 2, 3 (not present, undefined, zero, unmapped) read as zeros. */
const PAYLOAD_FULLY_PRESENT = 6;
const PAYLOAD_PARTIALLY_PRESENT = 7;
const ZERO_STATES = new Set([0, 1, 2, 3]);

let crcTable: Uint32Array | null = null;
/** CRC-32C (Castagnoli), as VHDX headers and region tables carry. */
export function crc32c(buf: Buffer): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < buf.length; i++) crc = crcTable[(crc ^ buf[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function checksumOk(buf: Buffer, at: number): boolean {
  const copy = Buffer.from(buf);
  const stored = copy.readUInt32LE(at);
  copy.writeUInt32LE(0, at);
  return crc32c(copy) === stored;
}

/** A GUID in its usual text form from the mixed-endian bytes on disk. */
function guid(buf: Buffer, at: number): string {
  const hex = (s: number, e: number) => buf.subarray(at + s, at + e).toString('hex');
  const le = (s: number, e: number) =>
    Buffer.from(buf.subarray(at + s, at + e))
      .reverse()
      .toString('hex');
  return `${le(0, 4)}-${le(4, 6)}-${le(6, 8)}-${hex(8, 10)}-${hex(10, 16)}`;
}

const isZeroGuid = (buf: Buffer, at: number): boolean => buf.subarray(at, at + 16).every((b) => b === 0);

/**
 * VHDX: the current of two headers, the region table (BAT and metadata), the metadata items that size the
 * disk, and the BAT with its interleaved sector-bitmap entries. Blocks that are not fully present are
 * holes. Differencing disks and images with a log to replay are refused.
 */
export async function openVhdx(file: ImageFile): Promise<MappedImage> {
  const fail = (field: string, what: string) => imageError(file.path, F, field, what);
  if (file.size < 1 * MiB) throw fail('file', `is ${file.size} bytes, too small for the VHDX header section (1 MiB)`);
  const ident = await file.readAt(0, 8, F, 'file type identifier');
  if (ident.toString('latin1') !== 'vhdxfile') throw fail('file type identifier', "is not 'vhdxfile'");

  let current: { seq: bigint; buf: Buffer } | null = null;
  for (const offset of HEADER_OFFSETS) {
    const buf = await file.readAt(offset, 4096, F, 'header');
    if (buf.toString('latin1', 0, 4) !== 'head' || !checksumOk(buf, 4)) continue;
    const seq = buf.readBigUInt64LE(8);
    if (!current || seq > current.seq) current = { seq, buf };
  }
  if (!current) throw fail('header', 'has no valid copy (signature or CRC-32C checksum wrong in both)');
  const header = current.buf;
  if (!isZeroGuid(header, 48)) throw fail('header log guid', 'is set: the log must be replayed first (attach the disk once in Hyper-V)');
  const version = header.readUInt16LE(66);
  if (version !== 1) throw fail('header version', `${version} is not supported (1)`);

  let regions: Buffer | null = null;
  for (const offset of REGION_TABLE_OFFSETS) {
    const buf = await file.readAt(offset, KiB64, F, 'region table');
    if (buf.toString('latin1', 0, 4) === 'regi' && checksumOk(buf, 4)) {
      regions = buf;
      break;
    }
  }
  if (!regions) throw fail('region table', 'has no valid copy (signature or CRC-32C checksum wrong in both)');
  const regionCount = regions.readUInt32LE(8);
  if (regionCount > MAX_ENTRIES) throw fail('region table entry count', `${regionCount} is more than ${MAX_ENTRIES}`);
  let bat: { offset: number; length: number } | null = null;
  let meta: { offset: number; length: number } | null = null;
  for (let i = 0; i < regionCount; i++) {
    const at = 16 + i * 32;
    const id = guid(regions, at);
    const offset = u64(regions.readBigUInt64LE(at + 16), file.path, F, `region ${i} file offset`);
    const length = regions.readUInt32LE(at + 24);
    const required = (regions.readUInt32LE(at + 28) & 1) !== 0;
    if (offset % MiB !== 0 || offset < MiB || offset + length > file.size) {
      throw fail(`region ${i} file offset`, `${offset}+${length} is not a MiB-aligned range inside the file (${file.size} bytes)`);
    }
    if (id === BAT_GUID) bat = { offset, length };
    else if (id === METADATA_GUID) meta = { offset, length };
    else if (required) throw fail(`region ${i}`, `${id} is required but unknown`);
  }
  if (!bat || !meta) throw fail('region table', `lacks the ${bat ? 'metadata' : 'BAT'} region`);
  if (bat.offset < meta.offset + meta.length && meta.offset < bat.offset + bat.length)
    throw fail('region table', 'has the BAT and metadata regions overlapping');

  if (meta.length < KiB64) throw fail('metadata region length', `${meta.length} is less than its 64 KiB table`);
  const table = await file.readAt(meta.offset, KiB64, F, 'metadata table');
  if (table.toString('latin1', 0, 8) !== 'metadata') throw fail('metadata table signature', "is not 'metadata'");
  const itemCount = table.readUInt16LE(10);
  if (itemCount > MAX_ENTRIES) throw fail('metadata table entry count', `${itemCount} is more than ${MAX_ENTRIES}`);
  const items = new Map<string, Buffer>();
  for (let i = 0; i < itemCount; i++) {
    const at = 32 + i * 32;
    const id = guid(table, at);
    const offset = table.readUInt32LE(at + 16);
    const length = table.readUInt32LE(at + 20);
    const required = (table.readUInt32LE(at + 24) & 4) !== 0;
    if (id === PARENT_LOCATOR) throw fail('metadata', 'has a parent locator: differencing disks are not supported');
    if (!KNOWN_METADATA.has(id)) {
      if (required) throw fail(`metadata item ${i}`, `${id} is required but unknown`);
      continue;
    }
    if (length > 4096 || offset < KiB64 || offset + length > meta.length)
      throw fail(`metadata item ${i} (${id})`, `range ${offset}+${length} is outside the metadata region`);
    items.set(id, await file.readAt(meta.offset + offset, length, F, `metadata item ${id}`));
  }
  const item = (id: string, name: string, length: number): Buffer => {
    const buf = items.get(id);
    if (!buf || buf.length < length) throw fail(`metadata ${name}`, 'is missing');
    return buf;
  };
  const params = item(FILE_PARAMETERS, 'file parameters', 8);
  const blockSize = params.readUInt32LE(0);
  if (blockSize < MiB || blockSize > 256 * MiB || (blockSize & (blockSize - 1)) !== 0) {
    throw fail('metadata block size', `${blockSize} is out of range (a power of two from 1 MiB to 256 MiB)`);
  }
  if (params.readUInt32LE(4) & 2) throw fail('metadata file parameters', 'has HasParent set: differencing disks are not supported');
  const capacityBytes = checkCapacity(
    file.path,
    F,
    'metadata virtual disk size',
    item(VIRTUAL_DISK_SIZE, 'virtual disk size', 8).readBigUInt64LE(0),
  );
  const logicalSector = item(LOGICAL_SECTOR_SIZE, 'logical sector size', 4).readUInt32LE(0);
  if (logicalSector !== 512 && logicalSector !== 4096) throw fail('metadata logical sector size', `${logicalSector} is not 512 or 4096`);
  if (capacityBytes % logicalSector !== 0)
    throw fail('metadata virtual disk size', `${capacityBytes} is not a multiple of the ${logicalSector}-byte sector`);

  const chunkRatio = (2 ** 23 * logicalSector) / blockSize;
  const blocks = Math.ceil(capacityBytes / blockSize);
  const entries = blocks + Math.floor((blocks - 1) / chunkRatio);
  if (entries * 8 > bat.length || entries * 8 > MAX_TABLE_BYTES)
    throw fail('BAT region length', `${bat.length} is too small for ${entries} entries`);
  const batBuf = await file.readAt(bat.offset, entries * 8, F, 'BAT');
  const offsets = new Float64Array(blocks); // file offset of each block, or -1 for a hole
  const seen = new Map<number, number>();
  const metadataRanges = [
    { start: 0, end: MiB, what: 'the header section' },
    { start: bat.offset, end: bat.offset + bat.length, what: 'the BAT' },
    { start: meta.offset, end: meta.offset + meta.length, what: 'the metadata region' },
  ];
  for (let b = 0; b < blocks; b++) {
    const index = b + Math.floor(b / chunkRatio);
    const entry = batBuf.readBigUInt64LE(index * 8);
    const state = Number(entry & 7n);
    const field = `BAT entry ${index} (block ${b})`;
    if (ZERO_STATES.has(state)) {
      offsets[b] = -1;
      continue;
    }
    if (state === PAYLOAD_PARTIALLY_PRESENT) throw fail(field, 'is partially present, which only differencing disks use');
    if (state !== PAYLOAD_FULLY_PRESENT) throw fail(field, `state ${state} is not a payload block state`);
    const offset = u64(entry >> 20n, file.path, F, field) * MiB;
    const length = Math.min(blockSize, capacityBytes - b * blockSize);
    if (offset + length > file.size) throw fail(field, `block at ${offset} is past the end of the file (${file.size} bytes)`);
    const region = metadataRanges.find((r) => offset < r.end && r.start < offset + length);
    if (region) throw fail(field, `block at ${offset} points into ${region.what} (a loop in the tables)`);
    if (seen.has(offset)) throw fail(field, `block at ${offset} is also used by block ${seen.get(offset)} (a loop in the tables)`);
    seen.set(offset, b);
    offsets[b] = offset;
  }

  async function* map(from: number, to: number): AsyncGenerator<Piece, void, undefined> {
    for (let at = from; at < to; ) {
      const b = Math.floor(at / blockSize);
      const end = Math.min(to, (b + 1) * blockSize);
      if (offsets[b] < 0) yield { kind: 'zero', offset: at, length: end - at };
      else yield { kind: 'data', offset: at, length: end - at, file, fileOffset: offsets[b] + (at - b * blockSize), field: `block ${b}` };
      at = end;
    }
  }
  return mappedImage({ path: file.path, format: 'vhdx', subformat: 'dynamic', capacityBytes, map, close: () => file.close() });
}
