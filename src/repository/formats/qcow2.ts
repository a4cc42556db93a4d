import * as path from 'node:path';
import {
  ImageFile,
  MAX_TABLE_BYTES,
  checkCapacity,
  imageError,
  mappedImage,
  u64,
  type DataPiece,
  type DeflatePiece,
  type MappedImage,
  type Piece,
} from './image';

const MAGIC = 0x514649fb;
const OFFSET_MASK = 0x00fffffffffffe00n;
const L1_RESERVED = 0x7f000000000001ffn;
const L2_RESERVED = 0x3f000000000001fen;
const COMPRESSED = 1n << 62n;
/** Incompatible feature bits: 0 dirty (harmless for reading), 3 compression type (zlib only). */
const INCOMPATIBLE_DIRTY = 1n;
const INCOMPATIBLE_CORRUPT = 2n;
const INCOMPATIBLE_EXTERNAL_DATA = 4n;
const INCOMPATIBLE_COMPRESSION_TYPE = 8n;
const INCOMPATIBLE_EXTENDED_L2 = 16n;
const MAX_BACKING_NAME = 1023;

/** Opens a backing file by absolute path; the caller guards depth and loops. */
export type OpenBacking = (file: string) => Promise<MappedImage>;

interface Region {
  start: number;
  end: number;
  what: string;
}

/**
 * qcow2 v2 and v3 (compat 0.10 and 1.1): L1 → L2 → clusters, zero clusters and unallocated clusters as holes
 * (or the backing file's content), compressed clusters inflated. Encryption, external data files, extended
 * L2 entries and backing files outside the image's folder are refused.
 */
export async function openQcow2(file: ImageFile, openBacking: OpenBacking): Promise<MappedImage> {
  const F = 'qcow2';
  const fail = (field: string, what: string) => imageError(file.path, F, field, what);
  if (file.size < 72) throw fail('header', `is truncated: the file has ${file.size} bytes`);
  const head = await file.readAt(0, Math.min(file.size, 4096), F, 'header');
  if (head.readUInt32BE(0) !== MAGIC) throw fail('magic', 'is not QFI\\xfb');
  const version = head.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw fail('version', `${version} is not supported (2 or 3)`);
  const clusterBits = head.readUInt32BE(20);
  if (clusterBits < 9 || clusterBits > 21) throw fail('cluster_bits', `${clusterBits} is out of range (9 to 21)`);
  const clusterSize = 2 ** clusterBits;
  const capacityBytes = checkCapacity(file.path, F, 'size', head.readBigUInt64BE(24));
  const cryptMethod = head.readUInt32BE(32);
  if (cryptMethod !== 0) throw fail('crypt_method', `${cryptMethod}: encrypted images are not supported`);
  if (version === 3) {
    if (head.length < 104) throw fail('header', 'is truncated (a v3 header has 104 bytes)');
    const incompatible = head.readBigUInt64BE(72);
    if (incompatible & INCOMPATIBLE_CORRUPT)
      throw fail('incompatible_features', 'has the corrupt bit set: repair it with qemu-img check -r all');
    if (incompatible & INCOMPATIBLE_EXTERNAL_DATA)
      throw fail('incompatible_features', 'needs an external data file, which is not supported');
    if (incompatible & INCOMPATIBLE_EXTENDED_L2)
      throw fail('incompatible_features', 'uses extended L2 entries (subclusters), which are not supported');
    const unknown =
      incompatible & ~(INCOMPATIBLE_DIRTY | INCOMPATIBLE_COMPRESSION_TYPE | INCOMPATIBLE_EXTERNAL_DATA | INCOMPATIBLE_EXTENDED_L2);
    if (unknown) throw fail('incompatible_features', `has unknown bits 0x${unknown.toString(16)}`);
    const headerLength = head.readUInt32BE(100);
    if (headerLength < 104 || headerLength > clusterSize)
      throw fail('header_length', `${headerLength} is out of range (104 to ${clusterSize})`);
    if (incompatible & INCOMPATIBLE_COMPRESSION_TYPE) {
      const type = headerLength > 104 && head.length > 104 ? head[104] : 0;
      if (type !== 0) throw fail('compression_type', `${type} is not supported (only zlib)`);
    }
  }

  const l2Entries = clusterSize / 8;
  const l1Size = head.readUInt32BE(36);
  const l1Offset = u64(head.readBigUInt64BE(40), file.path, F, 'l1_table_offset');
  const needL1 = Math.ceil(capacityBytes / clusterSize / l2Entries);
  if (l1Size < needL1) throw fail('l1_size', `${l1Size} is too small for a virtual size of ${capacityBytes} (needs ${needL1})`);
  if (l1Size * 8 > MAX_TABLE_BYTES || l1Size * 8 > file.size)
    throw fail('l1_size', `${l1Size} entries do not fit in the file (${file.size} bytes)`);
  if (l1Offset % clusterSize !== 0 || l1Offset < clusterSize) throw fail('l1_table_offset', `${l1Offset} is not a cluster past the header`);
  const l1 = await file.readAt(l1Offset, needL1 * 8, F, 'l1_table_offset');
  const refcountOffset = u64(head.readBigUInt64BE(48), file.path, F, 'refcount_table_offset');
  const refcountClusters = head.readUInt32BE(56);

  const metadata: Region[] = [
    { start: 0, end: clusterSize, what: 'the header' },
    { start: l1Offset, end: l1Offset + l1Size * 8, what: 'the L1 table' },
  ];
  if (refcountOffset > 0)
    metadata.push({ start: refcountOffset, end: refcountOffset + refcountClusters * clusterSize, what: 'the refcount table' });
  const overlapping = (start: number, end: number): Region | undefined => metadata.find((r) => start < r.end && r.start < end);

  // Every L2 table is known up front, so a table used twice or a cluster pointing into one is caught.
  const l2Tables = new Map<number, number>();
  for (let i = 0; i < needL1; i++) {
    const entry = l1.readBigUInt64BE(i * 8);
    const field = `L1 entry ${i}`;
    if (entry & L1_RESERVED) throw fail(field, `0x${entry.toString(16)} has reserved bits set`);
    const offset = Number(entry & OFFSET_MASK);
    if (offset === 0) continue;
    if (offset % clusterSize !== 0) throw fail(field, `L2 offset ${offset} is not cluster-aligned`);
    if (offset + clusterSize > file.size) throw fail(field, `L2 offset ${offset} is past the end of the file (${file.size} bytes)`);
    const region = overlapping(offset, offset + clusterSize);
    if (region) throw fail(field, `L2 offset ${offset} points into ${region.what} (a loop in the tables)`);
    const other = l2Tables.get(offset);
    if (other !== undefined) throw fail(field, `L2 offset ${offset} is also used by L1 entry ${other} (a loop in the tables)`);
    l2Tables.set(offset, i);
  }

  let backing: MappedImage | null = null;
  const backingOffset = u64(head.readBigUInt64BE(8), file.path, F, 'backing_file_offset');
  if (backingOffset !== 0) {
    const nameLength = head.readUInt32BE(16);
    if (nameLength === 0 || nameLength > MAX_BACKING_NAME)
      throw fail('backing_file_size', `${nameLength} is out of range (1 to ${MAX_BACKING_NAME})`);
    const name = (await file.readAt(backingOffset, nameLength, F, 'backing_file_offset')).toString('utf8');
    const dir = path.dirname(file.path);
    const resolved = path.resolve(dir, name);
    if (path.dirname(resolved) !== dir) {
      throw fail('backing file', `'${name}' is outside the image's folder ${dir}; only a backing file in the same folder is read`);
    }
    backing = await openBacking(resolved);
  }

  const dataCluster = (entry: bigint, field: string, length: number): DataPiece | DeflatePiece | 'unallocated' | 'zero' => {
    if (entry & COMPRESSED) {
      const x = BigInt(62 - (clusterBits - 8));
      const offset = Number(entry & ((1n << x) - 1n));
      const sectors = Number((entry >> x) & ((1n << BigInt(clusterBits - 8)) - 1n)) + 1;
      if (offset >= file.size) throw fail(field, `compressed cluster offset ${offset} is past the end of the file (${file.size} bytes)`);
      if (offset < clusterSize) throw fail(field, `compressed cluster offset ${offset} points into the header`);
      // The stored length is rounded to sectors and may run past the end of the file; the deflate stream does not.
      const compressedLength = Math.min(sectors * 512 - (offset % 512), file.size - offset);
      return {
        kind: 'deflate',
        offset: 0,
        length,
        file,
        fileOffset: offset,
        compressedLength,
        clusterLength: length,
        skip: 0,
        raw: true,
        field,
      };
    }
    if (entry & L2_RESERVED) throw fail(field, `0x${entry.toString(16)} has reserved bits set`);
    if (version === 3 && entry & 1n) return 'zero';
    const offset = Number(entry & OFFSET_MASK);
    if (offset === 0) return 'unallocated';
    if (offset % clusterSize !== 0) throw fail(field, `cluster offset ${offset} is not cluster-aligned`);
    if (offset + length > file.size) throw fail(field, `cluster offset ${offset} is past the end of the file (${file.size} bytes)`);
    const region = overlapping(offset, offset + clusterSize);
    if (region) throw fail(field, `cluster offset ${offset} points into ${region.what} (a loop in the tables)`);
    if (l2Tables.has(offset))
      throw fail(field, `cluster offset ${offset} points at the L2 table of L1 entry ${l2Tables.get(offset)} (a loop in the tables)`);
    return { kind: 'data', offset: 0, length, file, fileOffset: offset, field };
  };

  async function* unallocated(from: number, to: number): AsyncGenerator<Piece, void, undefined> {
    if (!backing) return yield { kind: 'zero', offset: from, length: to - from };
    const split = Math.min(to, Math.max(from, backing.capacityBytes));
    if (split > from) yield* backing.map(from, split);
    if (to > split) yield { kind: 'zero', offset: split, length: to - split };
  }

  async function* map(from: number, to: number): AsyncGenerator<Piece, void, undefined> {
    let holeStart = -1;
    let at = from;
    const endHole = async function* (end: number): AsyncGenerator<Piece, void, undefined> {
      if (holeStart >= 0) yield* unallocated(holeStart, end);
      holeStart = -1;
    };
    while (at < to) {
      const l1Index = Math.floor(at / clusterSize / l2Entries);
      const l1Span = l2Entries * clusterSize;
      const l1End = Math.min(to, (l1Index + 1) * l1Span);
      const entry = l1.readBigUInt64BE(l1Index * 8);
      const l2Offset = Number(entry & OFFSET_MASK);
      if (l2Offset === 0) {
        if (holeStart < 0) holeStart = at;
        at = l1End;
        continue;
      }
      const l2 = await file.readAt(l2Offset, clusterSize, F, `L2 table of L1 entry ${l1Index}`);
      while (at < l1End) {
        const cluster = Math.floor(at / clusterSize);
        const clusterEnd = Math.min(l1End, (cluster + 1) * clusterSize);
        const l2Index = cluster & (l2Entries - 1);
        const field = `L2 entry ${l2Index} of L1 entry ${l1Index}`;
        const clusterLength = Math.min(clusterSize, capacityBytes - cluster * clusterSize);
        const mapped = dataCluster(l2.readBigUInt64BE(l2Index * 8), field, clusterLength);
        if (mapped === 'unallocated') {
          if (holeStart < 0) holeStart = at;
        } else {
          yield* endHole(at);
          if (mapped === 'zero') yield { kind: 'zero', offset: at, length: clusterEnd - at };
          else if (mapped.kind === 'data') {
            const within = at - cluster * clusterSize;
            yield { ...mapped, offset: at, length: clusterEnd - at, fileOffset: mapped.fileOffset + within };
          } else {
            yield { ...mapped, offset: at, length: clusterEnd - at, skip: at - cluster * clusterSize };
          }
        }
        at = clusterEnd;
      }
    }
    yield* endHole(to);
  }

  return mappedImage({
    path: file.path,
    format: 'qcow2',
    subformat: version === 3 ? 'v3' : 'v2',
    capacityBytes,
    map,
    close: async () => {
      await file.close();
      await backing?.close();
    },
  });
}
