import * as path from 'node:path';
import {
  ImageFile,
  MAX_TABLE_BYTES,
  SECTOR,
  checkCapacity,
  checkRange,
  imageError,
  mappedImage,
  u64,
  type DiskImage,
  type Extent,
  type ExtentOptions,
  type MappedImage,
  type Piece,
} from './image';
import { InflateError, sharedImportWorkers, type StoredBlock } from '../workers';
import { ByteReader } from './stream';

const F = 'vmdk';
export const VMDK_MAGIC = 0x564d444b; // 'KDMV' little-endian
const GD_AT_END = 0xffffffffffffffffn;
const FLAG_ZEROED_GTE = 1 << 2;
const FLAG_COMPRESSED = 1 << 16;
const FLAG_MARKERS = 1 << 17;
const MARKER_EOS = 0;
const MARKER_GT = 1;
const MARKER_GD = 2;
const MARKER_FOOTER = 3;
/** Grain sizes VMware and qemu use are 64 KiB; we accept powers of two from 4 KiB to 1 MiB. */
const MIN_GRAIN_SECTORS = 8;
const MAX_GRAIN_SECTORS = 2048;
const MAX_DESCRIPTOR_BYTES = 64 * 1024;
/**
 * Virtual bytes of adjacent grains inflated as one batch; batches start at multiples of it. 16 MiB rather
 * than 4: a quarter of the messages between threads, which on a loaded machine each wait for a core
 * (the import of the bench's 2 GiB image took about a quarter less time).
 */
const BATCH_BYTES = 16 * 1024 * 1024;
/** Inflated bytes held ahead of the consumer (batches in flight on the workers and done ones not yet taken). */
const INFLATE_AHEAD_BYTES = 4 * BATCH_BYTES;

export interface SparseHeader {
  version: number;
  flags: number;
  capacityBytes: number;
  grainSectors: number;
  numGTEsPerGT: number;
  gdOffset: bigint;
  overHeadSectors: number;
  compressed: boolean;
}

/** Parses and checks the 512-byte hosted sparse extent header. */
export function parseSparseHeader(head: Buffer, file: string): SparseHeader {
  const fail = (field: string, what: string) => imageError(file, F, field, what);
  if (head.length < SECTOR) throw fail('header', `is truncated (${head.length} bytes)`);
  if (head.readUInt32LE(0) !== VMDK_MAGIC) throw fail('magic', 'is not KDMV');
  const version = head.readUInt32LE(4);
  if (version < 1 || version > 3) throw fail('version', `${version} is not supported (1 to 3)`);
  const flags = head.readUInt32LE(8);
  const grainSectors = u64(head.readBigUInt64LE(20), file, F, 'grainSize');
  if (grainSectors < MIN_GRAIN_SECTORS || grainSectors > MAX_GRAIN_SECTORS || (grainSectors & (grainSectors - 1)) !== 0) {
    throw fail('grainSize', `${grainSectors} sectors is out of range (a power of two from ${MIN_GRAIN_SECTORS} to ${MAX_GRAIN_SECTORS})`);
  }
  const capacitySectors = head.readBigUInt64LE(12);
  const capacityBytes = checkCapacity(file, F, 'capacity', capacitySectors * 512n);
  const numGTEsPerGT = head.readUInt32LE(44);
  if (numGTEsPerGT < 1 || numGTEsPerGT > 65536) throw fail('numGTEsPerGT', `${numGTEsPerGT} is out of range (1 to 65536)`);
  const overHeadSectors = u64(head.readBigUInt64LE(64), file, F, 'overHead');
  const compressed = (flags & FLAG_COMPRESSED) !== 0;
  if (compressed) {
    const algorithm = head.readUInt16LE(77);
    if (algorithm !== 1) throw fail('compressAlgorithm', `${algorithm} is not supported (1, deflate)`);
    if ((flags & FLAG_MARKERS) === 0) throw fail('flags', 'has compressed grains without markers, which is not supported');
  }
  return {
    version,
    flags,
    capacityBytes,
    grainSectors,
    numGTEsPerGT,
    gdOffset: head.readBigUInt64LE(56),
    overHeadSectors,
    compressed,
  };
}

/** monolithicSparse (also a SPARSE extent of a descriptor): grain directory → grain tables → grains. */
export async function openVmdkSparse(file: ImageFile, header: SparseHeader, subformat = 'monolithicSparse'): Promise<MappedImage> {
  const fail = (field: string, what: string) => imageError(file.path, F, field, what);
  const grainBytes = header.grainSectors * SECTOR;
  const gtCoverage = header.numGTEsPerGT * grainBytes;
  const gdEntries = Math.ceil(header.capacityBytes / gtCoverage);
  if (header.gdOffset === GD_AT_END) throw fail('gdOffset', 'is at the end of the file, which only a streamOptimized image may use');
  const gdOffset = u64(header.gdOffset, file.path, F, 'gdOffset') * SECTOR;
  if (gdEntries * 4 > MAX_TABLE_BYTES) throw fail('capacity', `needs ${gdEntries} grain directory entries, too many`);
  const gd = await file.readAt(gdOffset, gdEntries * 4, F, 'gdOffset');
  const gtBytes = header.numGTEsPerGT * 4;
  const metadataEnd = header.overHeadSectors * SECTOR;
  const gtOffsets = new Map<number, number>();
  for (let i = 0; i < gdEntries; i++) {
    const sector = gd.readUInt32LE(i * 4);
    if (sector === 0) continue;
    const offset = sector * SECTOR;
    const field = `grain directory entry ${i}`;
    if (offset + gtBytes > file.size) throw fail(field, `grain table at ${offset} is past the end of the file (${file.size} bytes)`);
    if (offset < SECTOR || (offset < gdOffset + gdEntries * 4 && gdOffset < offset + gtBytes)) {
      throw fail(field, `grain table at ${offset} overlaps the header or the grain directory (a loop in the tables)`);
    }
    if (gtOffsets.has(offset))
      throw fail(field, `grain table at ${offset} is also used by entry ${gtOffsets.get(offset)} (a loop in the tables)`);
    gtOffsets.set(offset, i);
  }
  const zeroedGte = (header.flags & FLAG_ZEROED_GTE) !== 0;

  async function* map(from: number, to: number): AsyncGenerator<Piece, void, undefined> {
    let at = from;
    while (at < to) {
      const gdIndex = Math.floor(at / gtCoverage);
      const gtEnd = Math.min(to, (gdIndex + 1) * gtCoverage);
      const gtSector = gd.readUInt32LE(gdIndex * 4);
      if (gtSector === 0) {
        yield { kind: 'zero', offset: at, length: gtEnd - at };
        at = gtEnd;
        continue;
      }
      const gt = await file.readAt(gtSector * SECTOR, gtBytes, F, `grain table of grain directory entry ${gdIndex}`);
      while (at < gtEnd) {
        const grain = Math.floor(at / grainBytes);
        const grainStart = grain * grainBytes;
        const end = Math.min(gtEnd, grainStart + grainBytes);
        const gtIndex = grain % header.numGTEsPerGT;
        const entry = gt.readUInt32LE(gtIndex * 4);
        if (entry === 0 || (entry === 1 && zeroedGte)) {
          yield { kind: 'zero', offset: at, length: end - at };
        } else {
          const field = `grain table entry ${gtIndex} of grain directory entry ${gdIndex}`;
          const offset = entry * SECTOR;
          const grainLength = Math.min(grainBytes, header.capacityBytes - grainStart);
          if (offset + grainLength > file.size) throw fail(field, `grain at ${offset} is past the end of the file (${file.size} bytes)`);
          if (offset < metadataEnd) throw fail(field, `grain at ${offset} points into the metadata before overHead (${metadataEnd})`);
          yield { kind: 'data', offset: at, length: end - at, file, fileOffset: offset + (at - grainStart), field };
        }
        at = end;
      }
    }
  }
  return mappedImage({ path: file.path, format: 'vmdk', subformat, capacityBytes: header.capacityBytes, map, close: () => file.close() });
}

/**
 * streamOptimized: a header, then markers in file order (deflated grains at ascending LBAs, grain tables,
 * grain directory, footer, end of stream), read in one pass; the gaps between grains are holes.
 */
export async function* readVmdkStream(
  reader: ByteReader,
  file: string,
  header: SparseHeader,
  from: number,
  to: number,
  opts: ExtentOptions = {},
): AsyncGenerator<Extent, void, undefined> {
  const fail = (field: string, what: string) => imageError(file, F, field, what);
  const truncated = () => fail('stream', `ends at ${reader.position} before its end-of-stream marker (truncated)`);
  const grainBytes = header.grainSectors * SECTOR;
  const capacity = header.capacityBytes;
  const maxCompressed = 2 * grainBytes + 4096;
  if (header.overHeadSectors < 1 || header.overHeadSectors * SECTOR > MAX_TABLE_BYTES) {
    throw fail('overHead', `${header.overHeadSectors} sectors is out of range`);
  }
  // qemu writes its grain directory and tables inside the overhead and no end-of-stream marker; their
  // allocated-grain count then tells a complete stream from a truncated one.
  const overhead = await reader.readExact(header.overHeadSectors * SECTOR - reader.position);
  if (!overhead) throw truncated();
  const expectedGrains = header.gdOffset === GD_AT_END ? null : grainsInOverhead(overhead, header);
  let grains = 0;

  // Runs of adjacent grains are inflated as one batch on the worker pool and come back as one extent, so a
  // consumer cutting 1 MiB blocks takes them without copying; holes between grains stay zero extents.
  const workers = sharedImportWorkers();
  type Batch = { data: Buffer | null; stored?: StoredBlock[]; synced?: Promise<StoredBlock[]> };
  const queue: { offset: number; length: number; bytes: number; data: Promise<Batch>; release?: () => void }[] = [];
  let queuedBytes = 0;
  const hole = Promise.resolve<Batch>({ data: null });
  const push = (offset: number, length: number, data: Promise<Batch>, bytes: number, release?: () => void): void => {
    data.catch(() => undefined);
    queue.push({ offset, length, bytes, data, release });
    queuedBytes += bytes;
  };
  const inputCapacity = BATCH_BYTES + maxCompressed;
  // Compressed input is copied once, into buffers the workers read in place; each is reused once its batch is done.
  const freeInputs: Buffer[] = [];
  const newInput = (): Buffer => freeInputs.pop() ?? Buffer.from(new SharedArrayBuffer(inputCapacity));
  // Output buffers a consumer released; one that does not release lets us allocate new ones.
  const freeOutputs: Buffer[] = [];
  let batch: { offset: number; length: number; input: Buffer; used: number; sizes: number[]; lengths: number[]; fields: number[] } | null =
    null;
  const flushBatch = (): void => {
    if (!batch) return;
    const b = batch;
    batch = null;
    const into = freeOutputs.pop() ?? Buffer.from(new SharedArrayBuffer(BATCH_BYTES));
    // Whole blocks inside the batch are hashed and written by the worker that inflated them, if asked; only in
    // a pass over the whole disk, so no extent carrying written blocks is ever clipped.
    const store = opts.store && from === 0 && to === capacity ? { ...opts.store, offset: b.offset, capacityBytes: capacity } : undefined;
    const data = workers
      .inflateAndStore({ input: b.input.subarray(0, b.used), sizes: b.sizes, lengths: b.lengths, grainBytes, raw: false }, into, store)
      .then(
        (out) => {
          freeInputs.push(b.input);
          return out;
        },
        (err: unknown) => {
          if (err instanceof InflateError) throw fail(`grain marker at ${b.fields[err.failure.index]}`, err.failure.message);
          throw err;
        },
      );
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      freeOutputs.push(into);
    };
    push(b.offset, b.length, data, b.length, release);
  };
  const clip = async (e: (typeof queue)[number]): Promise<Extent | null> => {
    const { data, stored, synced } = await e.data;
    const start = Math.max(from, e.offset);
    const end = Math.min(to, e.offset + e.length);
    if (start >= end) {
      e.release?.();
      return null;
    }
    const release = e.release;
    if (start === e.offset && end === e.offset + e.length) return { offset: e.offset, length: e.length, data, release, stored, synced };
    // Clipped: stored blocks are only offered for whole extents, the consumer hashes the rest itself.
    return { offset: start, length: end - start, data: data && data.subarray(start - e.offset, end - e.offset), release };
  };
  let next = 0;
  for (;;) {
    if (next >= to) break;
    const markerAt = reader.position;
    const sector = await reader.readExact(SECTOR);
    if (!sector) {
      if (expectedGrains !== null && reader.position === markerAt && grains === expectedGrains) break;
      throw truncated();
    }
    const value = sector.readBigUInt64LE(0);
    const size = sector.readUInt32LE(8);
    if (size === 0) {
      const type = sector.readUInt32LE(12);
      if (type === MARKER_EOS) break;
      if (type !== MARKER_GT && type !== MARKER_GD && type !== MARKER_FOOTER)
        throw fail(`marker at ${markerAt}`, `has unknown type ${type}`);
      const sectors = u64(value, file, F, `marker at ${markerAt} numSectors`);
      if (sectors * SECTOR > MAX_TABLE_BYTES) throw fail(`marker at ${markerAt} numSectors`, `${sectors} is too large`);
      if (!(await reader.skip(sectors * SECTOR))) throw truncated();
      continue;
    }
    const field = `grain marker at ${markerAt}`;
    if (size > maxCompressed) throw fail(field, `compressed size ${size} is larger than a grain of ${grainBytes} bytes can need`);
    const total = Math.ceil((12 + size) / SECTOR) * SECTOR;
    const rest = total === SECTOR ? null : await reader.readExact(total - SECTOR);
    if (total !== SECTOR && !rest) throw truncated();
    if (value % BigInt(header.grainSectors) !== 0n) throw fail(field, `LBA ${value} is not grain-aligned`);
    if (value * 512n >= BigInt(capacity)) throw fail(field, `LBA ${value} is past the capacity (${capacity} bytes)`);
    const offset = Number(value) * SECTOR;
    if (offset < next) throw fail(field, `LBA ${value} goes backwards (a stream must hold grains in ascending order)`);
    const length = Math.min(grainBytes, capacity - offset);
    if (offset + length <= from) {
      push(next, offset + length - next, hole, 0);
    } else {
      if (batch && (offset !== batch.offset + batch.length || offset % BATCH_BYTES === 0 || batch.used + size > inputCapacity))
        flushBatch();
      if (offset > next) push(next, offset - next, hole, 0);
      batch ??= { offset, length: 0, input: newInput(), used: 0, sizes: [], lengths: [], fields: [] };
      // The grain's deflate stream starts 12 bytes into its marker sector and may run on into the next ones.
      const head = Math.min(size, SECTOR - 12);
      sector.copy(batch.input, batch.used, 12, 12 + head);
      if (rest) rest.copy(batch.input, batch.used + head, 0, size - head);
      batch.used += size;
      batch.sizes.push(size);
      batch.lengths.push(length);
      batch.fields.push(markerAt);
      batch.length += length;
    }
    next = offset + length;
    grains++;
    while (queue.length > 0 && queuedBytes > INFLATE_AHEAD_BYTES) {
      const first = queue.shift()!;
      queuedBytes -= first.bytes;
      const out = await clip(first);
      if (out) yield out;
    }
  }
  flushBatch();
  if (next < capacity) push(next, capacity - next, hole, 0);
  while (queue.length > 0) {
    const first = queue.shift()!;
    const out = await clip(first);
    if (out) yield out;
  }
}

/** Grains the tables in the overhead mark allocated, or null when the tables are not there. */
function grainsInOverhead(overhead: Buffer, header: SparseHeader): number | null {
  const gdAt = Number(header.gdOffset) * SECTOR - SECTOR;
  const gdEntries = Math.ceil(header.capacityBytes / (header.numGTEsPerGT * header.grainSectors * SECTOR));
  if (gdAt < 0 || gdAt + gdEntries * 4 > overhead.length) return null;
  let count = 0;
  for (let i = 0; i < gdEntries; i++) {
    const gtAt = overhead.readUInt32LE(gdAt + i * 4) * SECTOR - SECTOR;
    if (gtAt < 0) continue;
    if (gtAt + header.numGTEsPerGT * 4 > overhead.length) return null;
    for (let j = 0; j < header.numGTEsPerGT; j++) if (overhead.readUInt32LE(gtAt + j * 4) !== 0) count++;
  }
  return count;
}

/** A streamOptimized image in a file: every extents() call is one pass over the file. */
export function openVmdkStreamFile(file: ImageFile, header: SparseHeader): DiskImage {
  const image: DiskImage = {
    path: file.path,
    format: 'vmdk',
    subformat: 'streamOptimized',
    capacityBytes: header.capacityBytes,
    extents: (from?: number, to?: number, opts?: ExtentOptions) => {
      const [start, end] = checkRange(image, from, to);
      // Every piece is copied into a batch or finished with before the next is read (see readVmdkStream).
      const reader = ByteReader.ofFileReusingBuffers(file.path);
      return (async function* () {
        try {
          const head = await reader.readExact(SECTOR);
          if (!head) throw imageError(file.path, F, 'header', 'is truncated');
          yield* readVmdkStream(reader, file.path, header, start, end, opts);
        } finally {
          await reader.close();
        }
      })();
    },
    close: () => file.close(),
  };
  return image;
}

interface DescriptorExtent {
  sectors: number;
  type: 'FLAT' | 'VMFS' | 'ZERO' | 'SPARSE';
  file?: string;
  offsetSectors: number;
}

/** A text descriptor (monolithicFlat and friends) with FLAT, VMFS, ZERO or hosted SPARSE extents in its folder. */
export async function openVmdkDescriptor(file: ImageFile): Promise<MappedImage> {
  const fail = (field: string, what: string) => imageError(file.path, F, field, what);
  if (file.size > MAX_DESCRIPTOR_BYTES) throw fail('descriptor', `is ${file.size} bytes, larger than ${MAX_DESCRIPTOR_BYTES}`);
  const text = (await file.readAt(0, file.size, F, 'descriptor')).toString('utf8');
  const createType = /^\s*createType\s*=\s*"([^"]*)"/m.exec(text)?.[1] ?? 'unknown';
  const parentCid = /^\s*parentCID\s*=\s*(\S+)/m.exec(text)?.[1];
  if (parentCid !== undefined && parentCid.toLowerCase() !== 'ffffffff') {
    throw fail('parentCID', `${parentCid}: a delta disk needs its parent, which is not supported`);
  }
  const extents: DescriptorExtent[] = [];
  for (const [n, line] of text.split(/\r?\n/).entries()) {
    const m = /^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/.exec(line);
    if (!m) continue;
    const field = `extent on line ${n + 1}`;
    const type = m[3].toUpperCase();
    if (type !== 'FLAT' && type !== 'VMFS' && type !== 'ZERO' && type !== 'SPARSE') {
      throw fail(field, `type ${m[3]} is not supported (FLAT, VMFS, ZERO, SPARSE)`);
    }
    const sectors = Number(m[2]);
    if (!Number.isSafeInteger(sectors) || sectors <= 0) throw fail(field, `size ${m[2]} sectors is out of range`);
    if (type !== 'ZERO' && !m[4]) throw fail(field, 'names no file');
    extents.push({ sectors, type, file: m[4], offsetSectors: Number(m[5] ?? 0) });
  }
  if (extents.length === 0) throw fail('extents', `none found (createType "${createType}")`);
  const totalSectors = extents.reduce((sum, e) => sum + e.sectors, 0);
  const capacityBytes = checkCapacity(file.path, F, 'extents', totalSectors * SECTOR);

  const dir = path.dirname(file.path);
  const opened: { start: number; end: number; extent: DescriptorExtent; file?: ImageFile; sparse?: MappedImage }[] = [];
  const closeAll = async () => {
    for (const o of opened) await (o.sparse ? o.sparse.close() : o.file?.close());
    await file.close();
  };
  try {
    let start = 0;
    for (const [i, extent] of extents.entries()) {
      const field = `extent ${i}`;
      const end = start + extent.sectors * SECTOR;
      if (extent.type === 'ZERO') {
        opened.push({ start, end, extent });
      } else {
        const resolved = path.resolve(dir, extent.file!);
        if (path.dirname(resolved) !== dir) throw fail(field, `file '${extent.file}' is outside the descriptor's folder ${dir}`);
        const extentFile = await ImageFile.open(resolved).catch((err: Error) => {
          throw fail(field, `file '${extent.file}' cannot be opened: ${err.message}`);
        });
        if (extent.type === 'SPARSE') {
          const header = parseSparseHeader(await extentFile.readAt(0, Math.min(SECTOR, extentFile.size), F, 'header'), resolved);
          if (header.compressed) throw fail(field, 'is a compressed sparse extent, which is not supported inside a descriptor');
          const sparse = await openVmdkSparse(extentFile, header);
          opened.push({ start, end, extent, sparse });
          if (sparse.capacityBytes < end - start)
            throw fail(field, `sparse extent holds ${sparse.capacityBytes} bytes, less than ${end - start}`);
        } else {
          opened.push({ start, end, extent, file: extentFile });
          const need = (extent.offsetSectors + extent.sectors) * SECTOR;
          if (need > extentFile.size)
            throw fail(field, `file '${extent.file}' has ${extentFile.size} bytes, less than the ${need} it must hold`);
        }
      }
      start = end;
    }
  } catch (err) {
    await closeAll();
    throw err;
  }

  async function* map(from: number, to: number): AsyncGenerator<Piece, void, undefined> {
    for (const o of opened) {
      const start = Math.max(from, o.start);
      const end = Math.min(to, o.end);
      if (start >= end) continue;
      if (o.sparse) {
        for await (const piece of o.sparse.map(start - o.start, end - o.start)) yield { ...piece, offset: piece.offset + o.start };
      } else if (o.file) {
        const fileOffset = o.extent.offsetSectors * SECTOR + (start - o.start);
        yield { kind: 'data', offset: start, length: end - start, file: o.file, fileOffset, field: `extent file ${o.file.path}` };
      } else {
        yield { kind: 'zero', offset: start, length: end - start };
      }
    }
  }
  return mappedImage({ path: file.path, format: 'vmdk', subformat: createType, capacityBytes, map, close: closeAll });
}
